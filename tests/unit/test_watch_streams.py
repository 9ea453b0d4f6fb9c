"""A Watch stream in this process (no server): scoping by the service's get_queryset(),
BOOKMARK events, and the SQLite outbox read's plan."""

from __future__ import annotations

import datetime as dt
import itertools
import time

import pytest
from catalog.models import Author, Book
from catalog.services import BookService
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from generated_grpc.grpc import catalog_Book_pb2 as pb

from django_grpc_bus.watch import cursor as cursors
from django_grpc_bus.watch import prune_events
from django_grpc_bus.watch.reading import current_position, read_after
from django_grpc_bus.watch.streams import BOOKMARK, WatchStream, watch

CREATED, UPDATED, DELETED = 1, 2, 3
_versions = itertools.count(10**9)  # a wake-up count no other read used


class MineOnly(BookService):
    """A service that shows each caller only some rows."""

    def get_queryset(self):
        return Book.objects.filter(title__startswith="mine")


def stream(service_class, **request) -> WatchStream:
    message = pb.BookWatchRequest(**request)
    service = service_class(message, None, "watch", pb.BookEvent)
    return WatchStream(service, message)


def poll_all(watching: WatchStream) -> list:
    events, _ = watching.poll(next(_versions))
    return events


@pytest.mark.django_db(transaction=True)  # PostgreSQL: reads wait for our own transaction
def test_an_unfiltered_watch_is_scoped_by_get_queryset():
    author = Author.objects.create(name="A")
    scoped, everything = stream(MineOnly), stream(BookService)
    assert scoped.start() == [] and everything.start() == []
    mine = Book.objects.create(title="mine 1", author=author, isbn="m1")
    secret = Book.objects.create(title="someone else's secret", author=author, isbn="s1")
    secret.title = "still secret"
    secret.save()
    secret_pk = secret.pk
    secret.delete()
    got = poll_all(scoped)
    mine_pk = mine.pk
    mine.delete()
    got += poll_all(scoped)
    assert [(e.type, e.data.title, e.data.isbn) for e in got] == [
        (CREATED, "mine 1", "m1"),
        (DELETED, "", ""),  # a deleted row cannot be checked: its key alone
        (DELETED, "", ""),
    ]
    assert [e.data.id for e in got] == [mine_pk, secret_pk, mine_pk]
    assert "secret" not in str(got)
    # A service that shows every row: every event, with the deleted rows' data.
    titles = [(e.type, e.data.title) for e in poll_all(everything)]
    assert titles[1:] == [
        (CREATED, "someone else's secret"),
        (UPDATED, "still secret"),
        (DELETED, "still secret"),
        (DELETED, "mine 1"),
    ]


@pytest.mark.django_db(transaction=True)
def test_an_empty_read_keeps_the_position_and_dates_it_now():
    start = current_position("default")
    old = cursors.Position(start.lo, start.hi, start.last, 1000)
    read = read_after("default", "catalog.book", old)
    assert read.rows == () and read.position.made_ms > time.time() * 1000 - 60_000
    assert read.position.covers(0, start.last) and not read.position.covers(start.hi, 10**12)


@pytest.mark.django_db(transaction=True)
def test_watchers_at_one_position_share_one_pool_trip_and_one_leaving_does_not_end_it(
    monkeypatch,
):
    import asyncio

    from django_grpc_bus.watch import streams as streams_module

    author = Author.objects.create(name="A")
    watchers = [stream(BookService) for _ in range(3)]
    for watching in watchers:
        watching.start()
    position = current_position("default")
    for watching in watchers:
        watching.position = position
    Book.objects.create(title="shared", author=author, isbn="t1")
    trips = []
    submit = streams_module._pool.submit
    monkeypatch.setattr(
        streams_module._pool, "submit", lambda *args: trips.append(args) or submit(*args)
    )

    async def all_poll() -> list:
        version = next(_versions)
        calls = [asyncio.ensure_future(streams_module._apoll(w, version)) for w in watchers]
        await asyncio.sleep(0)  # all three waiting for the one trip
        calls[0].cancel()  # its client left
        return await asyncio.gather(*calls[1:])

    answers = asyncio.run(all_poll())
    assert len(trips) == 1
    assert [[e.data.title for e in events] for events, _ in answers] == [["shared"]] * 2
    assert watchers[1].position == watchers[2].position != position
    assert not streams_module._trips


class Active:
    def is_active(self) -> bool:
        return True

    def add_callback(self, callback) -> bool:
        return True


@pytest.mark.django_db(transaction=True)
def test_bookmarks_at_the_start_and_while_idle_and_a_resume_from_one(settings):
    settings.MESSAGE_BUS = {**settings.MESSAGE_BUS, "WATCH_BOOKMARK_INTERVAL": 0.2}
    author = Author.objects.create(name="A")
    message = pb.BookWatchRequest()
    events = watch(BookService(message, None, "watch", pb.BookEvent), message, Active())
    try:
        first = next(events)
        assert first.type == BOOKMARK and not first.HasField("data") and first.cursor
        began = time.monotonic()
        second = next(events)  # nothing happens: a BOOKMARK after the interval
        assert second.type == BOOKMARK and time.monotonic() - began >= 0.15
        assert cursors.decode(second.cursor).made_ms >= cursors.decode(first.cursor).made_ms
    finally:
        events.close()
    # A change after the start bookmark, before any event: resuming from it gets the change.
    Book.objects.create(title="while away", author=author, isbn="w1")
    resumed = stream(BookService, since=first.cursor)
    assert resumed.start() == []
    assert [e.data.title for e in poll_all(resumed)] == ["while away"]


@pytest.mark.django_db(transaction=True)
def test_a_filtered_stream_bookmarks_past_rows_it_does_not_send(settings):
    settings.MESSAGE_BUS = {**settings.MESSAGE_BUS, "WATCH_BOOKMARK_INTERVAL": 0.2}
    author = Author.objects.create(name="A")
    message = pb.BookWatchRequest(filter=pb.BookFilter(title="wanted"))
    events = watch(BookService(message, None, "watch", pb.BookEvent), message, Active())
    try:
        start = next(events)
        Book.objects.create(title="other", author=author, isbn="o1")
        later = next(events)
    finally:
        events.close()
    assert later.type == BOOKMARK
    assert cursors.decode(later.cursor).key() != cursors.decode(start.cursor).key()


def test_the_sqlite_outbox_read_is_an_index_range(db):
    if connection.vendor != "sqlite":
        pytest.skip("SQLite's plan")
    with CaptureQueriesContext(connection) as queries:
        read_after("default", "catalog.book", current_position("default"))
    (sql,) = [q["sql"] for q in queries.captured_queries if "ORDER BY" in q["sql"]]
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN QUERY PLAN " + sql)
        plan = " ".join(str(row[-1]) for row in cursor.fetchall())
    assert "django_grpc_bus_watch_pos" in plan and "TEMP B-TREE" not in plan, plan


@pytest.mark.parametrize("value", [0, -1, 0.01, "30", True, None])
def test_watch_bookmark_interval_check(value):
    from django.test import override_settings

    from django_grpc_bus.checks import check_settings

    with override_settings(MESSAGE_BUS={"WATCH_BOOKMARK_INTERVAL": value}):
        errors = [e for e in check_settings() if "WATCH_BOOKMARK_INTERVAL" in e.msg]
    assert len(errors) == 1 and errors[0].id in ("django_grpc_bus.E003", "django_grpc_bus.E011")


def test_the_event_type_numbers_are_stable():
    assert [(v.name, v.number) for v in pb.BookEvent.Type.DESCRIPTOR.values] == [
        ("TYPE_UNSPECIFIED", 0),
        ("CREATED", 1),
        ("UPDATED", 2),
        ("DELETED", 3),
        ("SNAPSHOT_COMPLETE", 4),
        ("BOOKMARK", 5),
    ]


@pytest.mark.django_db(transaction=True)
def test_an_old_cursor_is_out_of_range_only_when_events_after_it_were_pruned():
    """OUT_OF_RANGE means "events after this cursor were pruned", not "this cursor is old"."""
    import grpc

    from django_grpc_bus.errors import GrpcError
    from django_grpc_bus.models import WatchEvent

    author = Author.objects.create(name="A")
    begin = current_position("default")
    Book.objects.create(title="seen", author=author, isbn="o1")
    (seen,) = read_after("default", "catalog.book", begin).rows
    old = cursors.Position(seen.cursor.lo, seen.cursor.hi, seen.cursor.last, 1000).encode()
    Book.objects.create(title="after", author=author, isbn="o2")

    def resume() -> list[str]:
        resumed = stream(BookService, since=old)
        resumed.start()
        return [e.data.title for e in poll_all(resumed)]

    assert resume() == ["after"]  # a year old, nothing pruned: in range
    age(WatchEvent.objects.filter(id=seen.id))
    assert prune_events() == 1  # the event before the cursor
    assert resume() == ["after"]  # nothing after it was pruned
    age(WatchEvent.objects.all())
    assert prune_events() == 1  # "after" pruned too
    with pytest.raises(GrpcError) as caught:
        resume()
    assert caught.value.code == grpc.StatusCode.OUT_OF_RANGE and "since" in str(caught.value)


@pytest.mark.django_db(transaction=True)
def test_an_old_cursor_resumes_from_an_outbox_that_pruning_emptied():
    """Every event is pruned, all of them before the cursor: nothing is missing."""
    from django_grpc_bus.models import WatchEvent

    author = Author.objects.create(name="A")
    Book.objects.create(title="gone", author=author, isbn="g1")
    now = current_position("default")
    old = cursors.Position(now.lo, now.hi, now.last, 1000).encode()
    age(WatchEvent.objects.all())
    assert prune_events() == 1 and not WatchEvent.objects.exists()
    resumed = stream(BookService, since=old)
    assert resumed.start() == []  # not OUT_OF_RANGE
    Book.objects.create(title="new", author=author, isbn="g2")
    assert [e.data.title for e in poll_all(resumed)] == ["new"]


def age(events) -> None:
    """Date `events` past WATCH_RETENTION (7 days), for prune_events() to take."""
    events.update(time=timezone.now() - dt.timedelta(days=8))


# -- the notifier -------------------------------------------------------------------------------


class Draining:
    draining = False


def test_each_server_that_drains_ends_the_watch_streams():
    """Two servers in one process, drained one after the other: each wakes the watchers (so
    the second's streams end at once too, not after IDLE_RECHECK)."""
    from django_grpc_bus.watch.notifier import Notifier, Waiter

    notifier, waiter, first, second = Notifier(), Waiter(), Draining(), Draining()
    notifier._waiters["catalog.book"].add(waiter)
    notifier.track(first)
    notifier.track(second)
    notifier._tell_stopping()
    assert not waiter.event.is_set()
    first.draining = True
    notifier._tell_stopping()
    assert waiter.event.is_set()
    waiter.event.clear()
    notifier._tell_stopping()  # told once per server
    assert not waiter.event.is_set()
    first.draining = False  # the first server is gone; a second one drains
    second.draining = True
    notifier._tell_stopping()
    assert waiter.event.is_set()


def test_a_stopped_server_does_not_refuse_a_later_servers_watch():
    """Only a draining server with calls in flight makes Watch refuse (UNAVAILABLE): once it has
    stopped, a server started later in the same process (a test suite's in-process servers)
    serves Watch. Before, one stopped server broke every later Watch in the process."""
    from django_grpc_bus.serving.traffic import Traffic
    from django_grpc_bus.watch.notifier import Notifier

    notifier, stopped = Notifier(), Traffic()
    notifier.track(stopped)
    stopped.active = 1  # a Watch stream in flight while it drains
    stopped.draining = True
    assert notifier.stopping()
    stopped.active = 0  # the stream ended, the server stopped
    assert not notifier.stopping()
    notifier.track(Traffic())  # the next server
    assert not notifier.stopping()


def test_postgresql_without_psycopg3_polls_with_one_warning(monkeypatch, caplog):
    import sys
    from types import SimpleNamespace

    from django_grpc_bus.watch import notifier as module

    monkeypatch.setitem(sys.modules, "psycopg", None)  # import psycopg: ImportError
    monkeypatch.setattr(module, "connections", {"pg": SimpleNamespace(vendor="postgresql")})
    notifier = module.Notifier()
    with caplog.at_level("WARNING", logger="django_grpc_bus.watch"):
        assert notifier.listens("pg") is False
        assert notifier.listens("pg") is False
    warnings = [r for r in caplog.records if "psycopg" in r.getMessage()]
    assert len(warnings) == 1 and "polling" in warnings[0].getMessage()


@pytest.mark.django_db(transaction=True)
def test_the_postgresql_listener_lets_go_of_the_database_when_no_one_watches():
    """Its LISTEN connection (and the notifier thread's own) close once the last watcher
    leaves: a test database can be dropped after the tests (before, a leftover session made
    the teardown fail and left the database behind), and an idle server holds no session."""
    if connection.vendor != "postgresql":
        pytest.skip("set DATABASE_URL to a PostgreSQL database to run this test")
    from django_grpc_bus.watch.notifier import LISTENER_NAME, Notifier, Waiter

    def others() -> int:
        """The listeners' sessions (by their application_name: other threads of the test
        process may hold sessions of their own meanwhile)."""
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND application_name = %s",
                [LISTENER_NAME],
            )
            return cursor.fetchone()[0]

    before = others()  # sessions of earlier tests' threads, if any
    notifier, waiter = Notifier(), Waiter()
    notifier.add("catalog.book", "default", waiter)
    deadline = time.monotonic() + 10
    while others() == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert others() > before  # listening
    notifier.remove("catalog.book", waiter)
    deadline = time.monotonic() + 10
    while others() > before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert others() <= before
