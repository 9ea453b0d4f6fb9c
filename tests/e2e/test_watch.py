"""Watch end to end (SPEC §11): real server processes, writes from service calls and from plain
ORM saves in other processes, on the threaded and the asyncio server, SQLite or PostgreSQL
(DATABASE_URL). The client is the generated stub, so these prove the producer alone."""

from __future__ import annotations

import os
import signal
import threading
import time

import grpc
import pytest
from generated_grpc.grpc import catalog_Book_pb2 as pb
from generated_grpc.grpc import catalog_Book_pb2_grpc as pb_grpc
from support import bus_env, running_server, start_server, stop_server

CREATED, UPDATED, DELETED, COMPLETE, BOOKMARK = 1, 2, 3, 4, 5
SERVERS = [pytest.param(False, id="threaded"), pytest.param(True, id="asyncio")]


class Watching:
    """A Watch call read in a thread: its events (and the error that ended it) as they come."""

    def __init__(self, target: str, **request) -> None:
        self.channel = grpc.insecure_channel(target)
        self.call = pb_grpc.BookStub(self.channel).Watch(pb.BookWatchRequest(**request))
        self.events: list = []  # every event but BOOKMARKs
        self.bookmarks: list = []
        self.error: grpc.RpcError | None = None
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for event in self.call:
                (self.bookmarks if event.type == BOOKMARK else self.events).append(event)
        except grpc.RpcError as exc:
            self.error = exc

    def wait_for(self, count: int, timeout: float = 20) -> list:
        deadline = time.monotonic() + timeout
        while len(self.events) < count and self.error is None:
            assert time.monotonic() < deadline, f"{len(self.events)} of {count} events"
            time.sleep(0.02)
        return self.events[:count]

    def wait_started(self) -> None:
        """Until the server has its position: a Watch from now sends it as a BOOKMARK."""
        deadline = time.monotonic() + 20
        while not self.bookmarks and self.error is None:
            assert time.monotonic() < deadline, "no BOOKMARK at the start"
            time.sleep(0.02)

    def close(self) -> None:
        self.call.cancel()
        self.thread.join(5)
        self.channel.close()

    def __enter__(self) -> Watching:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def orm(url: str, code: str) -> None:
    """Run `code` in `manage.py shell` of the test project on `url` (another process)."""
    from support import run_django

    run_django(url, "shell", "-c", "from catalog.models import Author, Book\n" + code)


def stub(server) -> pb_grpc.BookStub:
    return pb_grpc.BookStub(grpc.insecure_channel(server.target))


def book(isbn: str, title: str = "t", author: int = 1) -> pb.BookData:
    return pb.BookData(isbn=isbn, title=title, author=author)


@pytest.fixture(scope="module")
def url(fresh_database):
    orm(fresh_database, "Author.objects.create(id=1, name='Herbert')")
    return fresh_database


@pytest.mark.parametrize("asyncio", SERVERS)
def test_service_calls_and_orm_saves_in_another_process(url, asyncio):
    with running_server(url, env=bus_env(ASYNCIO=asyncio)) as server:
        books = stub(server)
        with Watching(server.target) as watch:
            watch.wait_started()
            books.Create(book(f"s-{asyncio}", "Dune"), timeout=5)
            orm(url, f"b = Book.objects.get(isbn='s-{asyncio}'); b.title = 'Dune II'; b.save()")
            books.Destroy(pb.BookLookupRequest(isbn=f"s-{asyncio}"), timeout=5)
            created, updated, deleted = watch.wait_for(3)
    assert [e.type for e in (created, updated, deleted)] == [CREATED, UPDATED, DELETED]
    assert created.data.title == "Dune" and updated.data.title == "Dune II"
    assert list(updated.changed.paths) == ["title"] and not created.HasField("changed")
    assert deleted.data.isbn == f"s-{asyncio}" and deleted.data.id == created.data.id
    assert len({e.id for e in (created, updated, deleted)}) == 3
    assert len({e.cursor for e in (created, updated, deleted)}) == 3
    assert created.time.ToDatetime().year >= 2024


def test_a_rollback_sends_nothing(url):
    with running_server(url) as server, Watching(server.target) as watch:
        watch.wait_started()
        orm(
            url,
            "from django.db import transaction\n"
            "try:\n"
            "    with transaction.atomic():\n"
            "        Book.objects.create(title='gone', author_id=1, isbn='rb-gone')\n"
            "        raise RuntimeError\n"
            "except RuntimeError:\n"
            "    pass\n"
            "Book.objects.create(title='kept', author_id=1, isbn='rb-kept')\n",
        )
        (event,) = watch.wait_for(1)
        time.sleep(0.5)
        assert [e.data.title for e in watch.events] == ["kept"]
    assert event.type == CREATED


@pytest.mark.parametrize("asyncio", SERVERS)
def test_restart_and_resume_gives_every_event_in_order_even_after_kill_9(url, asyncio):
    env = bus_env(ASYNCIO=asyncio)
    server = start_server(url, env=env)
    try:
        with Watching(server.target) as watch:
            watch.wait_started()
            stub(server).Create(book(f"k-0-{asyncio}"), timeout=5)
            (first,) = watch.wait_for(1)
        # A write answered, then the server killed at once: its event was committed with it.
        stub(server).Create(book(f"k-1-{asyncio}"), timeout=5)
        os.kill(server.process.pid, signal.SIGKILL)
        server.wait(10)
    finally:
        if server.process.poll() is None:
            stop_server(server)
    creates = (f"Book.objects.create(author_id=1, isbn='k-{n}-{asyncio}')" for n in (2, 3))
    orm(url, "\n".join(creates))
    with running_server(url, env=env) as again, Watching(again.target, since=first.cursor) as watch:
        events = watch.wait_for(3)
        time.sleep(0.3)
        assert len(watch.events) == 3
    assert [e.data.isbn for e in events] == [f"k-{n}-{asyncio}" for n in (1, 2, 3)]


def test_two_server_processes_both_deliver(url):
    with (
        running_server(url) as one,
        running_server(url, env=bus_env(ASYNCIO=True)) as two,
        Watching(one.target) as first,
        Watching(two.target) as second,
    ):
        first.wait_started()
        second.wait_started()
        orm(url, "Book.objects.create(title='both', author_id=1, isbn='two-1')")
        stub(one).Create(book("two-2"), timeout=5)
        for watch in (first, second):
            assert [e.data.isbn for e in watch.wait_for(2)] == ["two-1", "two-2"]


@pytest.mark.parametrize("asyncio", SERVERS)
def test_snapshot_with_concurrent_writes_has_no_gap_and_no_duplicate(url, asyncio):
    with running_server(url, env=bus_env(ASYNCIO=asyncio)) as server:
        snapshot_under_writes(server, f"snap{int(asyncio)}-", other=f"other-{asyncio}")


def snapshot_under_writes(server, prefix: str, other: str, most: int = 300) -> None:
    """A filtered Watch with snapshot: true started while a writer creates rows: every matching
    row arrives once, the snapshot's before its SNAPSHOT_COMPLETE (also for NATS's tests)."""
    books = stub(server)
    for n in range(20):
        books.Create(book(f"{prefix}{n}", prefix), timeout=5)
    books.Create(book(other, "other"), timeout=5)  # filtered out
    stop = threading.Event()
    written: list[str] = []

    def write() -> None:
        n = 100
        while not stop.is_set() and n < 100 + most:
            books.Create(book(f"{prefix}{n}", prefix), timeout=5)
            written.append(f"{prefix}{n}")
            n += 1

    writer = threading.Thread(target=write)
    writer.start()
    time.sleep(0.1)
    watch = Watching(server.target, snapshot=True, filter=pb.BookFilter(title=prefix))
    try:
        deadline = time.monotonic() + 20
        while not any(e.type == COMPLETE for e in watch.events):
            assert time.monotonic() < deadline and watch.error is None, watch.error
            time.sleep(0.02)
        time.sleep(0.3)
        stop.set()
        writer.join()
        total = 20 + len(written)
        seen_rows = lambda: sum(1 for e in watch.events if e.type == CREATED)  # noqa: E731
        deadline = time.monotonic() + 20
        while seen_rows() < total:
            assert time.monotonic() < deadline, (seen_rows(), total)
            time.sleep(0.05)
        time.sleep(0.5)
    finally:
        watch.close()
    isbns = [e.data.isbn for e in watch.events if e.type == CREATED]
    assert sorted(isbns) == sorted({*(f"{prefix}{n}" for n in range(20)), *written})
    assert len(isbns) == len(set(isbns))  # no duplicate
    complete = next(i for i, e in enumerate(watch.events) if e.type == COMPLETE)
    assert all(e.type == CREATED for e in watch.events[:complete])


def test_out_of_range_past_retention_and_bad_inputs(url):
    """OUT_OF_RANGE: events after the cursor were pruned. An old cursor after which nothing
    was pruned resumes (a quiet model is not an error)."""
    with running_server(url, env=bus_env(WATCH_RETENTION=1)) as server:
        with Watching(server.target) as watch:
            watch.wait_started()
            stub(server).Create(book("oor-1"), timeout=5)
            stub(server).Create(book("oor-2"), timeout=5)
            event, _ = watch.wait_for(2)
            orm(
                url,
                "import datetime as dt\nfrom django_grpc_bus.watch import prune_events\n"
                "prune_events(dt.timedelta(0))",
            )  # oor-2, after event's cursor, pruned
            stub(server).Create(book("oor-3"), timeout=5)
            quiet = watch.wait_for(3)[2]
        time.sleep(1.1)  # both cursors older than WATCH_RETENTION
        with Watching(server.target, since=quiet.cursor) as resumed:
            stub(server).Create(book("oor-4"), timeout=5)
            assert [e.data.isbn for e in resumed.wait_for(1)] == ["oor-4"]
        cases = [
            ({"since": event.cursor}, grpc.StatusCode.OUT_OF_RANGE, "since"),
            ({"since": "not-a-cursor"}, grpc.StatusCode.INVALID_ARGUMENT, "since"),
            (
                {"since": event.cursor, "snapshot": True},
                grpc.StatusCode.INVALID_ARGUMENT,
                "snapshot",
            ),
            ({"filter": pb.BookFilter(author=999999)}, grpc.StatusCode.INVALID_ARGUMENT, "author"),
        ]
        for request, code, word in cases:
            with Watching(server.target, **request) as bad:
                deadline = time.monotonic() + 10
                while bad.error is None:
                    assert time.monotonic() < deadline
                    time.sleep(0.02)
            assert bad.error.code() == code, (request, bad.error)
            assert word in bad.error.details()


def test_registry_watch_follows_a_real_server_across_a_restart(url, settings):
    """The client helper's registry.<servlet>.Book.watch() against this producer: a server
    restarted mid-watch is called again from the last cursor, and no event is lost."""
    from support import add_servlets, free_port, servlet_entry

    from django_grpc_bus.client.registry import registry
    from django_grpc_bus.client.watch import Reconnect

    port = free_port()
    add_servlets(settings, s=servlet_entry(port, timeout=5))
    address = f"127.0.0.1:{port}"
    server = start_server(url, address=address)
    got: list[dict] = []
    events = registry.s.Book.watch({}, reconnect=Reconnect(initial=0.1, maximum=0.5))
    reader = threading.Thread(target=lambda: got.extend(events), daemon=True)
    try:
        reader.start()
        time.sleep(1.0)
        stub(server).Create(book("reg-1"), timeout=5)
        deadline = time.monotonic() + 20
        while len(got) < 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        stop_server(server)
        orm(url, "Book.objects.create(author_id=1, isbn='reg-2')")  # while it is down
        server = start_server(url, address=address)
        stub(server).Create(book("reg-3"), timeout=5)
        while len(got) < 3:
            assert time.monotonic() < deadline + 20, got
            time.sleep(0.05)
    finally:
        events.stop()  # from this thread: the reader's next() ends
        reader.join(10)
        stop_server(server)
        registry.reset()
    assert [(e["type"], e["data"]["isbn"]) for e in got] == [
        ("CREATED", "reg-1"),
        ("CREATED", "reg-2"),
        ("CREATED", "reg-3"),
    ]


def test_workers_each_deliver_every_event(url):
    """`rungrpcserver --workers 2`: watchers land on either process; each gets every event."""
    from support import free_port

    with running_server(url, "--workers", "2", address=f"127.0.0.1:{free_port()}") as server:
        watches = [Watching(server.target) for _ in range(4)]
        try:
            watches[0].wait_started()
            orm(url, "Book.objects.create(author_id=1, isbn='wk-1')")
            stub(server).Create(book("wk-2"), timeout=5)
            for watch in watches:
                assert [e.data.isbn for e in watch.wait_for(2)] == ["wk-1", "wk-2"]
        finally:
            for watch in watches:
                watch.close()


def test_a_filtered_watch_gets_only_matching_changes(url):
    with (
        running_server(url) as server,
        Watching(server.target, filter=pb.BookFilter(title="match")) as watch,
    ):
        watch.wait_started()
        books = stub(server)
        books.Create(book("f-1", "other"), timeout=5)
        books.Create(book("f-2", "match"), timeout=5)
        books.PartialUpdate(
            pb.BookPartialUpdateRequest(
                data=book("f-1", "match"), update_mask={"paths": ["title"]}
            ),
            timeout=5,
        )
        events = watch.wait_for(2)
        time.sleep(0.5)
        assert len(watch.events) == 2
    assert [(e.type, e.data.isbn) for e in events] == [(CREATED, "f-2"), (UPDATED, "f-1")]


@pytest.mark.parametrize("asyncio", SERVERS)
def test_concurrent_writers_in_several_processes_lose_nothing(url, asyncio):
    """ORM writes in another process (outside the server's own write lock on SQLite) race with
    service calls: every event arrives once, and resuming mid-way from any cursor is exact."""
    tag = f"cw{int(asyncio)}"
    with (
        running_server(url, env=bus_env(ASYNCIO=asyncio)) as server,
        Watching(server.target) as watch,
    ):
        watch.wait_started()
        shell = threading.Thread(
            target=orm,
            args=(
                url,
                "from django.db import transaction\n"
                f"for n in range(40):\n"
                f"    with transaction.atomic():\n"
                f"        Book.objects.create(author_id=1, isbn=f'{tag}o{{n}}')\n",
            ),
        )
        shell.start()
        books = stub(server)
        for n in range(40):
            books.Create(book(f"{tag}s{n}"), timeout=10)
        shell.join()
        events = watch.wait_for(80, timeout=30)
        time.sleep(0.5)
        assert len(watch.events) == 80
        isbns = [e.data.isbn for e in events]
        assert sorted(isbns) == sorted(
            {*(f"{tag}o{n}" for n in range(40)), *(f"{tag}s{n}" for n in range(40))}
        )
        # each writer's own events in its order
        assert [i for i in isbns if "o" in i[3:]] == [f"{tag}o{n}" for n in range(40)]
        assert [i for i in isbns if "s" in i[3:]] == [f"{tag}s{n}" for n in range(40)]
        with Watching(server.target, since=events[29].cursor) as resumed:
            rest = resumed.wait_for(50)
            time.sleep(0.3)
            assert len(resumed.events) == 50
    # The same events; on PostgreSQL transactions may be grouped differently across reads, so
    # only each writer's order is fixed.
    assert sorted(e.id for e in rest) == sorted(e.id for e in events[30:])
    for writer in "os":
        mine = [e.data.isbn for e in rest if e.data.isbn[3] == writer]
        assert mine == [e.data.isbn for e in events[30:] if e.data.isbn[3] == writer]


def test_watch_of_a_model_not_marked_watch_is_failed_precondition(url):
    """A server whose service_meta.yaml does not watch Book (its compiled proto still has
    Watch): the call says what to set, and records nothing."""
    with running_server(url, env=bus_env(SERVICE_META=None)) as server:
        with Watching(server.target) as watch:
            deadline = time.monotonic() + 10
            while watch.error is None:
                assert time.monotonic() < deadline
                time.sleep(0.02)
    assert watch.error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "watch: true" in watch.error.details()
