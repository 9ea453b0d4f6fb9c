"""Create's write path: validated before the write lock, and no more statements than by hand."""

from __future__ import annotations

import contextlib
import importlib
import tempfile

import grpc
import pytest
from django.db import IntegrityError, connection, connections
from django.test.utils import CaptureQueriesContext

from django_grpc_bus import transactions, validation_plan
from django_grpc_bus.serving.binding import method_handlers, service_descriptor
from django_grpc_bus.serving.traffic import Traffic

from .fakes import Aborted, FakeContext

TRANSACTION_CONTROL = ("BEGIN", "COMMIT", "SAVEPOINT", "RELEASE", "ROLLBACK", "SET CONSTRAINTS")


class ShortDeadline(FakeContext):
    """A call whose deadline leaves 0.2 s: queueing for the write lock gives up quickly."""

    def time_remaining(self) -> float:
        return 0.2


@pytest.fixture
def open_author_service(compiled):
    from catalog.services import AuthorService

    class OpenAuthors(AuthorService):
        authentication_classes: list[type] = []
        permission_classes: list[type] = []

    return OpenAuthors


def create_handler(service_class):
    handlers = method_handlers(service_class, service_descriptor(service_class), Traffic())
    return handlers["Create"].unary_unary


@pytest.mark.django_db(transaction=True)
def test_an_invalid_create_fails_without_queueing_for_the_write_lock(open_author_service):
    if connection.vendor != "sqlite":
        pytest.skip("the process's write lock is SQLite's")
    author_pb2 = importlib.import_module("generated_grpc.grpc.Author_pb2")
    create = create_handler(open_author_service)
    assert not validation_plan.reads_database(open_author_service.serializer_class)
    lock = transactions._process_lock(connection.alias)
    assert lock.acquire(timeout=5)  # another writer holds the lock
    try:
        context = ShortDeadline()
        with pytest.raises(Aborted):
            create(author_pb2.AuthorData(name="x" * 101), context)  # max_length 100
        assert context.status == grpc.StatusCode.INVALID_ARGUMENT, context.details
        assert "name" in (context.details or "")
        # A valid one queues behind the holder, and gives up when its deadline says so.
        context = ShortDeadline()
        with pytest.raises(Aborted):
            create(author_pb2.AuthorData(name="ok"), context)
        assert context.status != grpc.StatusCode.INVALID_ARGUMENT
    finally:
        lock.release()
    from catalog.models import Author

    assert not Author.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_validation_that_reads_the_database_stays_in_the_transaction(compiled):
    from catalog import serializers

    assert validation_plan.reads_database(serializers.BookSerializer)  # FK, unique isbn
    assert validation_plan.reads_database(serializers.EverythingSerializer)  # validate_f_char


@pytest.mark.django_db(transaction=True)
def test_a_create_makes_the_statements_a_hand_written_create_makes(open_author_service):
    from catalog.models import Author

    author_pb2 = importlib.import_module("generated_grpc.grpc.Author_pb2")
    create = create_handler(open_author_service)
    create(author_pb2.AuthorData(name="warm-up"), FakeContext())  # plans, connection
    with CaptureQueriesContext(connection) as ours:
        reply = create(author_pb2.AuthorData(name="Ursula"), FakeContext())
    assert reply.name == "Ursula" and reply.id
    with CaptureQueriesContext(connection) as by_hand:  # what a servicer written by hand does
        Author.objects.create(name="Ursula")

    def data_statements(queries):
        return [q["sql"] for q in queries if not q["sql"].upper().startswith(TRANSACTION_CONTROL)]

    assert len(data_statements(ours)) == len(data_statements(by_hand)) == 1
    # The transaction's own, so that a cancelled call can be rolled back (the hand-written
    # INSERT commits by itself): on SQLite BEGIN IMMEDIATE and COMMIT; on PostgreSQL BEGIN and
    # COMMIT, and no SET CONSTRAINTS: an author has no foreign key, and none refers to a new one.
    control = sorted(q["sql"] for q in ours if q["sql"] not in data_statements(ours))
    assert control in (["BEGIN IMMEDIATE", "COMMIT"], ["BEGIN", "COMMIT"]), control


@contextlib.contextmanager
def postgresql_round_trips():
    """A list that, after the block, holds the statements of each round trip to PostgreSQL made
    in it, one string per trip (libpq's trace: a trip ends with the server's ReadyForQuery)."""
    connection.ensure_connection()
    pgconn = connection.connection.pgconn
    from psycopg import pq

    trips: list[str] = []
    with tempfile.TemporaryFile("w+") as trace:
        pgconn.trace(trace.fileno())
        pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS)
        try:
            yield trips
        finally:
            pgconn.untrace()
        trace.seek(0)
        sent: list[str] = []
        for line in trace.read().splitlines():
            direction, _length, kind, *rest = line.split("\t")
            if direction == "F" and kind in ("Query", "Parse"):
                text = " ".join(rest).strip()
                if kind == "Parse":
                    text = text.split(" ", 1)[1]  # after the statement's name, ""
                sent.append(text.strip('"')[:40])
            elif direction == "B" and kind == "ReadyForQuery":
                trips.append("; ".join(sent))
                sent = []


needs_postgresql = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="PostgreSQL's deferred constraints"
)


@needs_postgresql
@pytest.mark.django_db(transaction=True)
def test_a_write_that_leaves_no_deferred_check_makes_no_round_trip_for_one(compiled):
    from catalog.models import Author

    Author.objects.create(name="warm-up")  # the connection, the table of deferrables
    with postgresql_round_trips() as trips:
        with transactions.write_transaction() as write:
            Author.objects.create(name="Ursula")  # no foreign key, none refers to a new row
            write.check_deferred_constraints()
    assert len(trips) == 3, trips  # BEGIN; INSERT; COMMIT
    assert "SET CONSTRAINTS" not in " ".join(trips)


@needs_postgresql
@pytest.mark.django_db(transaction=True)
def test_a_foreign_key_written_is_checked_before_commit(compiled):
    from catalog.models import Author, Book

    author = Author.objects.create(name="Ursula")
    with postgresql_round_trips() as trips:
        with transactions.write_transaction() as write:
            Book.objects.create(title="t", author=author, isbn="1")
            write.check_deferred_constraints()
    # BEGIN; the INSERT (and its watch event); the check; COMMIT
    assert trips[0] == "BEGIN" and trips[-2:] == ["SET CONSTRAINTS ALL IMMEDIATE", "COMMIT"]
    checked = []
    with pytest.raises(IntegrityError), transactions.write_transaction() as write:
        Book.objects.create(title="t", author_id=author.pk + 1000, isbn="2")
        with pytest.raises(IntegrityError):
            write.check_deferred_constraints()  # not left for COMMIT
        checked.append(True)
        raise IntegrityError("the check failed")
    assert checked and not Book.objects.filter(isbn="2").exists()


@pytest.mark.django_db
def test_what_can_leave_a_deferred_check(compiled):
    may = transactions.may_defer_checks
    assert not may('SELECT "catalog_book"."id" FROM "catalog_book" FOR UPDATE')
    assert not may('INSERT INTO "catalog_author" ("name") VALUES (%s) RETURNING "id"')
    assert may('INSERT INTO "catalog_book" ("title", "author_id") VALUES (%s, %s)')  # its FK
    assert may('UPDATE "catalog_author" SET "id" = %s')  # books refer to authors
    assert may('DELETE FROM "catalog_author" WHERE "id" = %s')
    assert not may('INSERT INTO "catalog_tag" ("name") VALUES (%s)')
    assert may('UPDATE "not_a_model" SET "x" = 1')  # not known
    assert may('WITH moved AS (DELETE FROM "catalog_author") SELECT 1')  # books refer to it
    assert not may('WITH added AS (INSERT INTO "catalog_tag" ("name") VALUES (%s)) SELECT 1')
    assert may('WITH added AS (INSERT INTO "catalog_tag" ("name") VALUES (%s)), '
               'b AS (DELETE FROM catalog_author) SELECT 1')  # fmt: skip
    assert may('INSERT INTO "catalog_tag" ("name") VALUES (%s) ON CONFLICT DO UPDATE SET x=1')
    assert may("CALL my_procedure()")  # not read
    assert not may("SET CONSTRAINTS ALL IMMEDIATE")


@pytest.fixture
def persistent(monkeypatch):
    """CONN_MAX_AGE=60 on every database, for one test."""
    for settings_dict in connections.settings.values():
        monkeypatch.setitem(settings_dict, "CONN_MAX_AGE", 60)


@pytest.mark.django_db
def test_persistent_connections_are_looked_after_once_per_call(
    open_author_service, persistent, monkeypatch
):
    """The threaded server's calls close stale connections as they end, not again as the
    next one begins (CONN_MAX_AGE allows it); with CONN_MAX_AGE=0 both, as before."""
    from django_grpc_bus.serving import calls

    author_pb2 = importlib.import_module("generated_grpc.grpc.Author_pb2")
    events: list[str] = []
    monkeypatch.setattr(calls, "close_old_connections", lambda: events.append("close"))
    handlers = method_handlers(
        open_author_service, service_descriptor(open_author_service), Traffic()
    )
    destroy = handlers["Destroy"].unary_unary
    context = FakeContext()
    with pytest.raises(Aborted):  # NOT_FOUND, without touching a row
        destroy(author_pb2.AuthorLookupRequest(id=10**6), context)
    assert context.status == grpc.StatusCode.NOT_FOUND, context.details
    assert events == ["close"]
    for settings_dict in connections.settings.values():
        monkeypatch.setitem(settings_dict, "CONN_MAX_AGE", 0)
    events.clear()
    with pytest.raises(Aborted):
        destroy(author_pb2.AuthorLookupRequest(id=10**6), FakeContext())
    assert events == ["close", "close"]
