"""Create's write path: validated before the write lock, and no more statements than by hand."""

from __future__ import annotations

import importlib

import grpc
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from django_grpc_bus import transactions, validation_plan
from django_grpc_bus.serving.binding import method_handlers, service_descriptor
from django_grpc_bus.serving.traffic import Traffic

from .fakes import Aborted, FakeContext

TRANSACTION_CONTROL = ("BEGIN", "COMMIT", "SAVEPOINT", "RELEASE", "ROLLBACK")


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
    # The transaction's own: BEGIN IMMEDIATE and COMMIT on SQLite (the hand-written INSERT
    # commits by itself, inside SQLite), so a cancelled call can be rolled back.
    control = [q["sql"].split()[0].upper() for q in ours if q not in by_hand]
    assert control.count("BEGIN") <= 1 and control.count("COMMIT") <= 1
