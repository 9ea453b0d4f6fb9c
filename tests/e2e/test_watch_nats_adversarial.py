"""Watch through NATS JetStream as a demanding user tries it (SPEC §11, docs/bus.md "Past one
database"): durable consumers and the client's watch() against a NATS-backed producer, pre-forked
workers, a client that stops reading, strangers publishing on the subject, a stream made by
someone else, a NATS that comes back without its store, bad cursors, a dead first URL.

Each test has a stream and subject prefix of its own (the ``backend`` fixture of
test_watch_nats.py), or a NATS server of its own. Skipped when NATS is unreachable, as there.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import time

import grpc
import pytest
from generated_grpc.grpc import catalog_Book_pb2 as pb
from generated_grpc.grpc import catalog_Book_pb2_grpc as pb_grpc
from support import (
    ON_POSTGRES,
    add_servlets,
    bus_env,
    free_port,
    pg_connect,
    running_server,
    servlet_entry,
    start_server,
    stop_server,
)

from django_grpc_bus.client.registry import registry
from django_grpc_bus.client.watch import Reconnect
from e2e.test_consumers import consumer_process, seen, storefront_db, until_idle, wait_for_file
from e2e.test_lifecycle import serving_pids
from e2e.test_watch import CREATED, UPDATED, Watching, book, orm, stub
from e2e.test_watch_nats import NATS_URL, _js_call, _run, backend, delete_stream

__all__ = ["backend", "storefront_db"]  # fixtures used by name

SERVERS = [pytest.param(False, id="threaded"), pytest.param(True, id="asyncio")]
NATS_SERVER = "/usr/sbin/nats-server"


@pytest.fixture(scope="module")
def url(fresh_database):
    orm(fresh_database, "Author.objects.create(id=1, name='Herbert')")
    return fresh_database


def env(backend, **settings):
    return bus_env(WATCH_BACKEND=backend, GRACE_PERIOD=1, **settings)


def subject(backend) -> str:
    return f"{backend['subject_prefix']}.catalog.Book"


def nats_cursor(sequence) -> str:
    """A NATS backend cursor as the server spells it (docs call it opaque: for bad ones)."""
    return base64.urlsafe_b64encode(f"n1.{sequence}".encode()).decode().rstrip("=")


def stream_info(stream: str):
    async def info(js):
        return await js.stream_info(stream)

    return _run(_js_call(info))


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def stream_bodies(backend) -> list:
    """The body of every message of the backend's Book subject, parsed where it is JSON."""

    async def read(js):
        from nats.js.errors import NotFoundError

        found, sequence = [], 0
        while True:
            try:
                message = await js.get_msg(
                    backend["stream"], seq=sequence + 1, subject=subject(backend), next=True
                )
            except NotFoundError:
                return found
            sequence = message.seq
            try:
                found.append(json.loads(message.data))
            except ValueError:
                found.append(message.data)

    return _run(_js_call(read))


def isbns_in_stream(backend, prefix: str) -> list[str]:
    isbns = []
    for body in stream_bodies(backend):
        data = body.get("data") if isinstance(body, dict) else None
        if isinstance(data, dict) and str(data.get("isbn", "")).startswith(prefix):
            isbns.append(data["isbn"])
    return isbns


def last_isbn(backend) -> str | None:
    """The isbn of the subject's last message: once it is the last one written, the relay
    (publishing in commit order) has caught up."""

    async def last(js):
        from nats.js.errors import NotFoundError

        try:
            message = await js.get_last_msg(backend["stream"], subject(backend))
        except NotFoundError:
            return None
        return json.loads(message.data)["data"]["isbn"]

    return _run(_js_call(last))


def publish_raw(subject_name: str, payloads: list[tuple[bytes, dict | None]]) -> None:
    """Someone else publishing on the subject with nats-py (no relay, no cursor header)."""

    async def publish(js):
        for data, headers in payloads:
            await js.publish(subject_name, data, headers=headers)

    _run(_js_call(publish))


# -- the client and durable consumers against a NATS-backed producer --------------------------


def producer(url: str, port: int, backend, **settings):
    return start_server(
        url, "--no-access-log", env=env(backend, **settings), address=f"127.0.0.1:{port}"
    )


@pytest.mark.parametrize("asyncio", SERVERS)
def test_client_watch_resumes_from_a_nats_cursor_across_a_producer_restart(
    url, backend, settings, asyncio
):
    port = free_port()
    server = producer(url, port, backend, ASYNCIO=asyncio)
    add_servlets(settings, producer=servlet_entry(port))
    books = registry.producer["catalog.Book"]
    tag = f"ncr{int(asyncio)}"
    try:
        books.create({"title": f"{tag}-t", "author": 1, "isbn": f"{tag}-1"})
        # Relayed before the snapshot (a late relay is the next test's case).
        wait_until(lambda: isbns_in_stream(backend, f"{tag}-"), 20, "not relayed")
        events = books.watch(
            {"snapshot": True, "filter": {"title": f"{tag}-t"}},
            reconnect=Reconnect(initial=0.1, maximum=0.5),
        )
        row, complete = next(events), next(events)
        assert (row["type"], row["data"]["isbn"]) == ("CREATED", f"{tag}-1")
        assert complete["type"] == "SNAPSHOT_COMPLETE"
        stop_server(server)
        # Saved while no server runs: the outbox keeps it; the next server relays it.
        orm(url, f"b = Book.objects.get(isbn='{tag}-1'); b.isbn = '{tag}-1u'; b.save()")
        server = producer(url, port, backend, ASYNCIO=asyncio)
        updated = next(events)
        books.create({"title": f"{tag}-t", "author": 1, "isbn": f"{tag}-2"})
        created = next(events)
        events.close()
    finally:
        stop_server(server)
        registry.reset()
    assert (updated["type"], updated["data"]["isbn"]) == ("UPDATED", f"{tag}-1u")
    assert "isbn" in updated["changed"]
    assert (created["type"], created["data"]["isbn"]) == ("CREATED", f"{tag}-2")
    assert len({complete["cursor"], updated["cursor"], created["cursor"]}) == 3


def test_runconsumers_killed_mid_handler_handles_that_event_once(
    url, backend, storefront_db, tmp_path, settings
):
    port = free_port()
    server = producer(url, port, backend)
    add_servlets(settings, producer=servlet_entry(port))
    consumer_env = {"STOREFRONT_MODEL": "catalog.Book"}
    try:
        until_idle(storefront_db, port, **consumer_env)  # a snapshot of what is there; a cursor
        start = len(seen(storefront_db))
        ids = [
            registry.producer["catalog.Book"].create(
                {"title": f"nrc {n}", "author": 1, "isbn": f"nrc-{n}"}
            )["id"]
            for n in range(3)
        ]
        hang = tmp_path / "hang"
        process = consumer_process(
            storefront_db,
            port,
            STOREFRONT_HANG_ON_BOOK=str(ids[1]),
            STOREFRONT_HANG_FILE=str(hang),
            **consumer_env,
        )
        try:
            wait_for_file(hang, process)
            process.send_signal(signal.SIGKILL)
            process.wait(10)
        finally:
            if process.poll() is None:
                process.kill()
            process.communicate()
        assert [row[1] for row in seen(storefront_db)[start:]] == ids[:1]
        # The producer restarted too, meanwhile: the stored stream cursor still resumes.
        stop_server(server)
        server = producer(url, port, backend, ASYNCIO=True)
        until_idle(storefront_db, port, **consumer_env)
        handled = seen(storefront_db)[start:]
    finally:
        stop_server(server)
        registry.reset()
    assert [(book_id, kind) for _, book_id, kind in handled] == [(i, "CREATED") for i in ids]
    assert len({event_id for event_id, _, _ in handled}) == 3


# -- strangers on the subject -----------------------------------------------------------------


@pytest.mark.parametrize("asyncio", SERVERS)
def test_garbage_on_the_subject_is_skipped_and_the_watch_goes_on(url, backend, asyncio):
    """Docs: a message the relay did not write is not an event. Watch leaves it out and the
    next real event still comes (the relay must still publish it after the stranger's message,
    which carries no outbox cursor)."""
    tag = f"ngb{int(asyncio)}"
    with running_server(url, env=env(backend, ASYNCIO=asyncio)) as server:
        with Watching(server.target) as watch:
            watch.wait_started()
            stub(server).Create(book(f"{tag}-1"), timeout=5)
            watch.wait_for(1)
            publish_raw(
                subject(backend),
                [
                    (b"not json at all", None),
                    (b'{"id": "x", "type": "CREATED"}', None),
                    (b"[1, 2, 3]", {"Nats-Msg-Id": "stranger-1"}),
                    (b'{"outbox": {"id": "NaN"}}', {"Grpc-Bus-Cursor": "garbage"}),
                ],
            )
            stub(server).Create(book(f"{tag}-2"), timeout=5)
            stub(server).Create(book(f"{tag}-3"), timeout=5)
            events = watch.wait_for(3, timeout=30)
            assert watch.error is None, watch.error
            time.sleep(0.5)
            assert [e.data.isbn for e in watch.events] == [f"{tag}-{n}" for n in (1, 2, 3)]
    # Each event stored once, after the strangers' messages as well.
    assert isbns_in_stream(backend, f"{tag}-") == [f"{tag}-{n}" for n in (1, 2, 3)]
    assert [e.type for e in events] == [CREATED] * 3


def test_a_strangers_message_does_not_make_the_relay_store_events_again(url, backend):
    """The stream made by ops with our subjects and age and a short duplicate window (docs: its
    other settings are kept). A stranger's message last on the subject sends the relay back to
    the outbox's start; once the window has passed, what it publishes again is stored again,
    and every watcher resuming or reading gets those events twice."""
    from nats.js.api import StreamConfig

    async def make(js):
        await js.add_stream(
            StreamConfig(
                name=backend["stream"],
                subjects=[f"{backend['subject_prefix']}.>"],
                max_age=7 * 24 * 3600,  # WATCH_RETENTION's default: left as it is
                duplicate_window=1.0,
            )
        )

    _run(_js_call(make))
    tag = "nsw"
    with running_server(url, env=env(backend)) as server:
        stub(server).Create(book(f"{tag}-1"), timeout=5)
        wait_until(lambda: isbns_in_stream(backend, f"{tag}-"), 20, "not relayed")
        assert stream_info(backend["stream"]).config.duplicate_window == 1.0
        publish_raw(subject(backend), [(b"hello from another program", None)])
        time.sleep(7)  # past the window, and an idle relay round (every 5 s)
        stub(server).Create(book(f"{tag}-2"), timeout=5)
        wait_until(
            lambda: f"{tag}-2" in isbns_in_stream(backend, f"{tag}-"), 20, "tag-2 not relayed"
        )
    assert isbns_in_stream(backend, f"{tag}-") == [f"{tag}-1", f"{tag}-2"]


def test_a_strangers_message_last_on_the_subject_does_not_stall_the_relay(url, backend):
    """More than one relay batch (500) of events in the outbox, then a message without the
    relay's cursor header lands last on the subject: the relay must still publish new events.
    (It takes the subject's last message as its position; a message with no cursor sends it to
    the outbox's start, and re-publishing the first 500 events, all duplicates, leaves the
    stranger's message last: the same 500 again, forever.)"""
    orm(
        url,
        "from django.db import transaction\n"
        "with transaction.atomic():\n"
        "    for n in range(520):\n"
        "        Book.objects.create(author_id=1, isbn=f'nst-{n}')\n",
    )
    with running_server(url, env=env(backend)) as server:
        wait_until(
            lambda: last_isbn(backend) == "nst-519", 60, "the relay did not publish the outbox"
        )
        with Watching(server.target) as watch:
            watch.wait_started()
            publish_raw(subject(backend), [(b"hello from another program", None)])
            time.sleep(0.5)
            stub(server).Create(book("nst-after"), timeout=5)
            (event,) = watch.wait_for(1, timeout=30)
    assert event.data.isbn == "nst-after"


def test_a_server_started_after_a_strangers_message_still_relays(url, backend):
    """A stranger's message last on the subject when the server (and its relay) starts: the
    relay has no memory of what it published, and must still publish new events."""
    with running_server(url, env=env(backend)) as first:
        stub(first).Create(book("nst-before"), timeout=5)
        wait_until(lambda: last_isbn(backend) == "nst-before", 60, "the relay did not catch up")
    publish_raw(subject(backend), [(b"hello from another program", None)])
    with running_server(url, env=env(backend)) as server, Watching(server.target) as watch:
        watch.wait_started()
        stub(server).Create(book("nst-restart"), timeout=5)
        (event,) = watch.wait_for(1, timeout=30)
    assert event.data.isbn == "nst-restart"


@pytest.mark.parametrize("asyncio", SERVERS)
def test_resuming_from_a_snapshots_cursor_sends_no_row_the_snapshot_showed(url, backend, asyncio):
    """Rows committed just before a snapshot, published by the relay just after it started:
    the snapshot shows them and its call leaves their events out. Resuming from the snapshot's
    cursor (the client's watch() does, after UNAVAILABLE; runconsumers does, after a restart)
    must not send them again as CREATED: they are not "later events" (SPEC §11)."""
    tag = f"nsd{int(asyncio)}"
    count = 300
    with (
        running_server(url, env=env(backend, ASYNCIO=asyncio)) as server,
        contextlib.ExitStack() as held,
    ):
        if ON_POSTGRES:
            # A transaction left open from before the rows' commit holds the relay back (it never
            # publishes past pg_snapshot_xmin) until the snapshot is done: the late publish made
            # certain. On SQLite the relay is merely racing the snapshot.
            holder = held.enter_context(pg_connect(url, connect_timeout=10))
            holder.execute("BEGIN")
            holder.execute("SELECT pg_current_xact_id()")
            held.callback(holder.execute, "ROLLBACK")
        orm(
            url,
            "from django.db import transaction\n"
            "with transaction.atomic():\n"
            f"    for n in range({count}):\n"
            f"        Book.objects.create(author_id=1, title='{tag}', isbn=f'{tag}-{{n}}')\n",
        )
        with Watching(server.target, snapshot=True, filter=pb.BookFilter(title=tag)) as first:
            wait_until(lambda: any(e.type == 4 for e in first.events), 30, "no SNAPSHOT_COMPLETE")
            time.sleep(0.5)
            complete = next(e for e in first.events if e.type == 4)
            shown = [e.data.isbn for e in first.events if e.type == CREATED]
        held.close()
        assert sorted(shown) == sorted(f"{tag}-{n}" for n in range(count))
        wait_until(lambda: len(isbns_in_stream(backend, f"{tag}-")) == count, 30, "not all relayed")
        with Watching(
            server.target, since=complete.cursor, filter=pb.BookFilter(title=tag)
        ) as resumed:
            stub(server).Create(book(f"{tag}-new", tag), timeout=5)
            wait_until(
                lambda: any(e.data.isbn == f"{tag}-new" for e in resumed.events) or resumed.error,
                30,
                "the new row never came",
            )
            assert resumed.error is None, resumed.error
    again = [e.data.isbn for e in resumed.events if e.data.isbn != f"{tag}-new"]
    assert again == [], f"{len(again)} rows the snapshot showed were sent again"


# -- the stream made by someone else ----------------------------------------------------------


def test_a_stream_of_that_name_made_otherwise_gets_our_age_and_keeps_the_rest(url, backend):
    """Made beforehand (by ops) for our subjects, with other settings: max_age becomes
    WATCH_RETENTION, the rest is kept. (One for other subjects is left alone:
    test_watch_nats.py.)"""
    from nats.js.api import StorageType, StreamConfig

    async def make(js):
        await js.add_stream(
            StreamConfig(
                name=backend["stream"],
                subjects=[f"{backend['subject_prefix']}.>"],
                max_age=3600,
                storage=StorageType.MEMORY,
                description="made by ops",
            )
        )

    _run(_js_call(make))
    with running_server(url, env=env(backend, WATCH_RETENTION=7200)) as server:
        with Watching(server.target) as watch:
            watch.wait_started()
            stub(server).Create(book("nso-1"), timeout=5)
            (event,) = watch.wait_for(1)
    assert event.data.isbn == "nso-1"
    config = stream_info(backend["stream"]).config
    assert config.subjects == [f"{backend['subject_prefix']}.>"]
    assert config.max_age == 7200
    assert config.storage == StorageType.MEMORY and config.description == "made by ops"


def test_another_stream_owning_the_subjects_is_named(url, backend):
    """Two settings, one subject prefix: the second stream cannot be made (JetStream refuses
    overlapping subjects). Watch must not pretend NATS is away: it must say why."""
    other = dict(backend, stream=backend["stream"] + "_OTHER")
    try:
        with running_server(url, env=env(backend)) as first:
            with Watching(first.target) as watch:
                watch.wait_started()
        with running_server(url, env=env(other)) as second, Watching(second.target) as bad:
            wait_until(lambda: bad.error is not None, 20, "the Watch neither failed nor ended")
        assert bad.error.code() != grpc.StatusCode.UNKNOWN, bad.error
        assert "overlap" in bad.error.details(), bad.error.details()
    finally:
        delete_stream(other["stream"])


# -- cursors and URLs -------------------------------------------------------------------------


@pytest.mark.parametrize("asyncio", SERVERS)
def test_bad_since_cursors_are_refused_with_a_clear_code(url, backend, asyncio):
    # Cursors are opaque; these are made up (the sequence one in the format the server used
    # when this was written): refused either as not a cursor or as out of range, never UNKNOWN.
    refused = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE}
    cases = [
        (nats_cursor(10**30), refused),
        (nats_cursor("-1"), {grpc.StatusCode.INVALID_ARGUMENT}),
        (nats_cursor(""), {grpc.StatusCode.INVALID_ARGUMENT}),
        (nats_cursor("\u00b2"), {grpc.StatusCode.INVALID_ARGUMENT}),  # isdigit(), not int()
        (nats_cursor("1e3"), {grpc.StatusCode.INVALID_ARGUMENT}),
        ("\u00e9\u00e9\u00e9", {grpc.StatusCode.INVALID_ARGUMENT}),
        ("=" * 5000, {grpc.StatusCode.INVALID_ARGUMENT}),
    ]
    with running_server(url, env=env(backend, ASYNCIO=asyncio)) as server:
        stub(server).Create(book(f"nbc{int(asyncio)}-1"), timeout=5)
        for since, code in cases:
            with Watching(server.target, since=since) as bad:
                wait_until(lambda b=bad: b.error is not None, 15, f"{since[:20]!r} was accepted")
            assert bad.error.code() in code, (since[:40], bad.error)
            assert "since" in bad.error.details()
        # The server still serves a good watch afterwards.
        with Watching(server.target) as watch:
            watch.wait_started()
            stub(server).Create(book(f"nbc{int(asyncio)}-2"), timeout=5)
            (event,) = watch.wait_for(1)
    assert event.data.isbn == f"nbc{int(asyncio)}-2"


def test_a_dead_url_in_the_list_is_passed_over(url, backend):
    dead = f"nats://127.0.0.1:{free_port()}"
    for urls in ([dead, NATS_URL], [NATS_URL, dead]):
        with running_server(url, env=env(dict(backend, url=urls))) as server:
            with Watching(server.target) as watch:
                watch.wait_started()
                isbn = f"ndu-{urls.index(dead)}"
                stub(server).Create(book(isbn), timeout=5)
                (event,) = watch.wait_for(1)
        assert event.data.isbn == isbn


# -- a client that does not read --------------------------------------------------------------


@pytest.mark.parametrize("asyncio", SERVERS)
def test_a_slow_reader_gets_every_event_once_in_order(url, backend, asyncio):
    """The client reads nothing while 2,600 events are written (more than the 2,000 messages a
    call buffers before it stops its consumer), then reads: each event once, in commit order."""
    tag = f"nsl{int(asyncio)}"
    count = 2600
    with running_server(url, env=env(backend, ASYNCIO=asyncio)) as server:
        channel = grpc.insecure_channel(server.target)
        try:
            call = pb_grpc.BookStub(channel).Watch(pb.BookWatchRequest(), timeout=120)
            first = next(call)  # the start BOOKMARK: the call has its position
            assert first.type == 5
            orm(
                url,
                "from django.db import transaction\n"
                "with transaction.atomic():\n"
                f"    for n in range({count}):\n"
                f"        Book.objects.create(author_id=1, isbn=f'{tag}-{{n}}')\n",
            )
            wait_until(
                lambda: len(isbns_in_stream(backend, f"{tag}-")) >= count,
                60,
                "the relay did not publish them",
            )
            time.sleep(1)  # the server's consumer pushes what it can meanwhile
            got = []
            for event in call:
                if event.type == 5:
                    continue
                got.append(event.data.isbn)
                if len(got) >= count:
                    break
            call.cancel()
        finally:
            channel.close()
    assert got == [f"{tag}-{n}" for n in range(count)]


# -- several processes ------------------------------------------------------------------------


@pytest.mark.parametrize("asyncio", SERVERS)
def test_pre_forked_workers_each_watcher_gets_every_event_once(url, backend, asyncio):
    tag = f"nwk{int(asyncio)}"
    server = start_server(
        url, "--workers", "2", env=env(backend, ASYNCIO=asyncio), address=f"127.0.0.1:{free_port()}"
    )
    try:
        wait_until(lambda: len(serving_pids(server)) >= 2, 20, server.output)
        watches = [Watching(server.target) for _ in range(6)]
        try:
            for watch in watches:
                watch.wait_started()
            orm(
                url,
                "\n".join(f"Book.objects.create(author_id=1, isbn='{tag}-{n}')" for n in range(15)),
            )
            books = stub(server)
            for n in range(15, 25):
                books.Create(book(f"{tag}-{n}"), timeout=5)
            wanted = [f"{tag}-{n}" for n in range(25)]
            for watch in watches:
                assert [e.data.isbn for e in watch.wait_for(25)] == wanted
            time.sleep(1)
            assert [len(w.events) for w in watches] == [25] * 6
        finally:
            for watch in watches:
                watch.close()
    finally:
        stop_server(server)
    assert isbns_in_stream(backend, f"{tag}-") == wanted


# -- filters ----------------------------------------------------------------------------------


@pytest.mark.parametrize("asyncio", SERVERS)
def test_a_filtered_watch_with_snapshot_sends_only_matching_rows(url, backend, asyncio):
    tag = f"nfl{int(asyncio)}"
    with running_server(url, env=env(backend, ASYNCIO=asyncio)) as server:
        books = stub(server)
        books.Create(book(f"{tag}-1", f"{tag}-in"), timeout=5)
        books.Create(book(f"{tag}-2", "out"), timeout=5)
        with Watching(server.target, snapshot=True, filter=pb.BookFilter(title=f"{tag}-in")) as w:
            wait_until(lambda: any(e.type == 4 for e in w.events), 20, "no SNAPSHOT_COMPLETE")
            books.Create(book(f"{tag}-3", "out"), timeout=5)
            books.Create(book(f"{tag}-4", f"{tag}-in"), timeout=5)
            orm(url, f"b = Book.objects.get(isbn='{tag}-1'); b.isbn = '{tag}-1u'; b.save()")
            events = w.wait_for(4)  # row 1, complete, row 4, the update of row 1
            time.sleep(1)
            assert len(w.events) == 4, [(e.type, e.data.isbn) for e in w.events]
    assert [(e.type, e.data.isbn) for e in events] == [
        (CREATED, f"{tag}-1"),
        (4, ""),
        (CREATED, f"{tag}-4"),
        (UPDATED, f"{tag}-1u"),
    ]


# -- NATS losing its store --------------------------------------------------------------------


class OwnNats:
    """A nats-server of the test's own, on a port and store directory of its own."""

    def __init__(self, port: int, store) -> None:
        if not os.path.exists(NATS_SERVER):
            pytest.skip("no /usr/sbin/nats-server to start a NATS of the test's own")
        self.port = port
        self.process: subprocess.Popen | None = None
        self.start(store)

    def start(self, store) -> None:
        command = [NATS_SERVER, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(store)]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                assert time.monotonic() < deadline, "the test's NATS did not start"
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


@pytest.mark.parametrize("asyncio", SERVERS)
def test_nats_back_without_its_store_gets_the_stream_again(url, tmp_path, asyncio):
    """NATS restarted on an empty store (a new container, a lost volume): the stream is gone.
    The docs: the first server creates the stream, and a new stream is given every event the
    outbox still keeps. A running producer must make it again, not fail every Watch forever."""
    tag = f"nes{int(asyncio)}"
    nats_server = OwnNats(free_port(), tmp_path / "store-1")
    own = {
        "url": f"nats://127.0.0.1:{nats_server.port}",
        "stream": "EMPTIED",
        "subject_prefix": tag,
    }
    try:
        with running_server(url, env=env(own, ASYNCIO=asyncio)) as server:
            with Watching(server.target) as watch:
                watch.wait_started()
                stub(server).Create(book(f"{tag}-1"), timeout=5)
                watch.wait_for(1)
            nats_server.stop()
            nats_server.start(tmp_path / "store-2")
            stub(server).Create(book(f"{tag}-2"), timeout=5)  # NATS empty: the outbox keeps it
            # A new Watch from now, called again while it ends UNAVAILABLE (as watch() does),
            # then a write: it must come.
            deadline = time.monotonic() + 40
            errors = []
            while True:
                watch = Watching(server.target)
                wait_until(lambda w=watch: w.bookmarks or w.error, 20, "no start, no error")
                if watch.error is None:
                    break
                errors.append(watch.error.details())
                watch.close()
                assert time.monotonic() < deadline, f"every Watch failed: {errors[-3:]}"
                time.sleep(0.5)
            try:
                stub(server).Create(book(f"{tag}-3"), timeout=5)
                (event,) = watch.wait_for(1)
            finally:
                watch.close()
    finally:
        nats_server.stop()
    assert event.data.isbn == f"{tag}-3"
