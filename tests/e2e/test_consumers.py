"""Durable consumers: ``manage.py runconsumers`` of a consumer project against a Watch server.

The consumer is the storefront project (tests/testproject/storefront_settings.py, app
tests/storefront) in processes of its own, on a database of its own (a SQLite file, or a
PostgreSQL database when DATABASE_URL points there); the producer is the fake Watch server of
tests/watchfake.py in this process. Proven: a snapshot then changes, each handled once and the
cursor kept; a consumer SIGKILLed mid-handler handles that event once more with no double
effect; a failing handler is retried (logged at ERROR) without losing or doubling the event;
SIGTERM lets the current event finish and commit; bad subscriptions are named. The last tests
use a real producer instead (rungrpcserver of the test project, catalog.Book watched): a
watch resumed across a producer restart with a plain ORM save made meanwhile in another
process, a consumer killed mid-handler, and grpclist/grpccall on its Watch.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from support import (
    DATABASE_URL,
    ON_POSTGRES,
    TESTS_DIR,
    add_servlets,
    bus_env,
    db_query,
    free_port,
    pg_connect,
    requires_postgres,
    run_django,
    running_server,
    servlet_entry,
    start_server,
    stop_server,
)
from watchfake import FakeWatchServer, compile_proto

from django_grpc_bus.client.registry import registry
from django_grpc_bus.client.watch import Reconnect


@pytest.fixture(scope="module")
def watch_modules(tmp_path_factory):
    return compile_proto(tmp_path_factory.mktemp("watchfake"))


@pytest.fixture
def fake(watch_modules):
    server = FakeWatchServer(*watch_modules, port=free_port()).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def storefront_db(tmp_path):
    """The consumer project's own database, migrated."""
    if ON_POSTGRES:
        name = f"grpcbus_storefront_{uuid.uuid4().hex[:10]}"
        with pg_connect(DATABASE_URL, connect_timeout=10) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        url = DATABASE_URL.rsplit("/", 1)[0] + f"/{name}"
    else:
        url = f"sqlite:///{tmp_path / 'storefront.sqlite3'}"
    result = storefront(url, 50051, "migrate", "--run-syncdb", "-v0")
    assert result.returncode == 0, result.stderr
    try:
        yield url
    finally:
        if ON_POSTGRES:
            with pg_connect(DATABASE_URL, connect_timeout=10) as connection:
                connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def storefront_env(url: str, port: int, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "testproject.storefront_settings",
        "DATABASE_URL": url,
        "PYTHONPATH": str(TESTS_DIR),
        "STOREFRONT_SERVLET_PORT": str(port),
        **extra,
    }


def storefront(url: str, port: int, *args: str, timeout: float = 60, **env: str):
    """`python -m django ARGS` of the storefront project, run to its end."""
    return subprocess.run(
        [sys.executable, "-m", "django", *args],
        cwd=TESTS_DIR,
        env=storefront_env(url, port, **env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def consumer_process(url: str, port: int, *args: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "django", "runconsumers", *args],
        cwd=TESTS_DIR,
        env=storefront_env(url, port, **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def until_idle(url: str, port: int, **env: str) -> subprocess.CompletedProcess:
    result = storefront(url, port, "runconsumers", "--until-idle", "1.5", **env)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def seen(url: str) -> list[tuple]:
    return db_query(url, "SELECT event_id, book_id, kind FROM storefront_seen ORDER BY id")


def cursor(url: str) -> str:
    rows = db_query(url, "SELECT cursor FROM django_grpc_bus_subscriptioncursor")
    return rows[0][0] if rows else None


def wait_for_file(path: Path, process: subprocess.Popen, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            pytest.fail(f"the consumer exited: {process.communicate()}")
        assert time.monotonic() < deadline, "the handler never got there"
        time.sleep(0.05)
    return path.read_text()


def test_snapshot_then_changes_each_handled_once(fake, storefront_db):
    fake.change("CREATED", 1, "Dune")
    fake.change("CREATED", 2, "Emma")
    until_idle(storefront_db, fake.port)
    assert seen(storefront_db) == [("snapshot-1", 1, "CREATED"), ("snapshot-2", 2, "CREATED")]
    assert cursor(storefront_db) == "2"
    fake.change("UPDATED", 1, "Dune II")
    fake.change("DELETED", 2)
    until_idle(storefront_db, fake.port)
    assert seen(storefront_db)[2:] == [("e3", 1, "UPDATED"), ("e4", 2, "DELETED")]
    assert cursor(storefront_db) == "4"
    # The first run asked for a snapshot; the second resumed from the stored cursor.
    assert fake.calls == [("", True), ("2", False)]


def test_killed_mid_handler_handles_that_event_once_more_with_no_double_effect(
    fake, storefront_db, tmp_path
):
    until_idle(storefront_db, fake.port)  # the (empty) snapshot: the cursor is "0"
    for book in (1, 2, 3):
        fake.change("CREATED", book, f"b{book}")
    hang = tmp_path / "hang"
    process = consumer_process(
        storefront_db,
        fake.port,
        STOREFRONT_HANG_ON_BOOK="2",
        STOREFRONT_HANG_FILE=str(hang),
    )
    try:
        assert wait_for_file(hang, process) == "2"
        # Book 2's row is written, not committed; book 1's is committed with its cursor.
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()
    assert seen(storefront_db) == [("e1", 1, "CREATED")]
    assert cursor(storefront_db) == "1"
    until_idle(storefront_db, fake.port)
    assert seen(storefront_db) == [
        ("e1", 1, "CREATED"),
        ("e2", 2, "CREATED"),
        ("e3", 3, "CREATED"),
    ]
    assert cursor(storefront_db) == "3"
    assert fake.calls[-1] == ("1", False)


def test_a_failing_handler_is_retried_without_losing_or_doubling_the_event(
    fake, storefront_db, tmp_path
):
    until_idle(storefront_db, fake.port)
    fake.change("CREATED", 1, "a")
    fake.change("CREATED", 2, "b")
    counter = tmp_path / "failures"
    result = until_idle(
        storefront_db,
        fake.port,
        STOREFRONT_FAIL_ON_BOOK="1",
        STOREFRONT_FAIL_FILE=str(counter),
        STOREFRONT_FAILURES="2",
    )
    assert counter.read_text() == "2"
    assert result.stderr.count("simulated failure") >= 2, result.stderr
    assert "the handler failed on CREATED event 'e1'" in result.stderr
    assert seen(storefront_db) == [("e1", 1, "CREATED"), ("e2", 2, "CREATED")]
    assert cursor(storefront_db) == "2"


def test_sigterm_lets_the_current_event_finish_then_stops(fake, storefront_db, tmp_path):
    until_idle(storefront_db, fake.port)
    for book in (1, 2, 3):
        fake.change("CREATED", book, f"b{book}")
    hang = tmp_path / "hang"
    process = consumer_process(
        storefront_db,
        fake.port,
        STOREFRONT_HANG_ON_BOOK="2",
        STOREFRONT_HANG_FILE=str(hang),
        STOREFRONT_HANG_SECONDS="1.5",
    )
    try:
        wait_for_file(hang, process)
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert "Consumers stopped." in out
    # Book 2's handler finished and committed with its cursor; book 3 waits for the next run.
    assert seen(storefront_db) == [("e1", 1, "CREATED"), ("e2", 2, "CREATED")]
    assert cursor(storefront_db) == "2"


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("nope,fakebus.Book", "No servlet 'nope'"),
        ("library,fakebus.Nope", "servlet 'library' has no model 'fakebus.Nope'"),
        ("library,fakebus.Author", "fakebus.Author on servlet 'library' has no Watch"),
        ("library,Book", "the model must be '<app>.<Model>'"),
    ],
)
def test_bad_subscriptions_are_named(fake, storefront_db, bad, message):
    result = storefront(
        storefront_db, fake.port, "runconsumers", "bad", STOREFRONT_BAD_SUBSCRIPTION=bad
    )
    assert result.returncode == 1
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert fake.calls == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("nosuch",), "No subscription 'nosuch'. Subscriptions: storefront.consumers.book_changed"),
        (("--until-idle", "0"), "--until-idle must be a number of seconds above 0"),
        (("--reset",), "--reset needs the names"),
    ],
)
def test_bad_arguments_are_named(fake, storefront_db, args, message):
    result = storefront(storefront_db, fake.port, "runconsumers", *args)
    assert result.returncode == 1
    assert message in result.stderr, result.stderr


def test_a_cursor_past_retention_stops_with_the_remedy_and_reset_starts_again(fake, storefront_db):
    fake.change("CREATED", 1, "a")
    until_idle(storefront_db, fake.port)
    assert cursor(storefront_db) == "1"
    fake.change("UPDATED", 1, "a2")
    fake.pruned = 2  # the producer dropped event 2's predecessors: cursor "1" is too old
    result = storefront(storefront_db, fake.port, "runconsumers", "--until-idle", "1.5")
    assert result.returncode == 1
    assert "past the producer's WATCH_RETENTION" in result.stderr
    assert "runconsumers --reset storefront.consumers.book_changed" in result.stderr
    reset = storefront(
        storefront_db, fake.port, "runconsumers", "--reset", "storefront.consumers.book_changed"
    )
    assert reset.returncode == 0 and "cursor forgotten" in reset.stdout
    until_idle(storefront_db, fake.port)  # from a snapshot again
    assert seen(storefront_db)[-1] == ("snapshot-1", 1, "CREATED")
    assert cursor(storefront_db) == "2"
    listing = storefront(storefront_db, fake.port, "runconsumers", "--list")
    assert "storefront.consumers.book_changed: fakebus.Book on servlet 'library', cursor '2'" in (
        listing.stdout
    )


def test_a_cursor_the_producer_refuses_stops_once_with_the_reset_remedy(fake, storefront_db):
    """The producer's WATCH_BACKEND changed: the stored cursor is INVALID_ARGUMENT for `since`.
    runconsumers says how to go on, in one sentence printed once (not a log line and the
    CommandError both)."""
    fake.change("CREATED", 1, "a")
    until_idle(storefront_db, fake.port)
    db_query(storefront_db, "UPDATE django_grpc_bus_subscriptioncursor SET cursor = 'n1.7.1'")
    result = storefront(storefront_db, fake.port, "runconsumers", "--until-idle", "1.5")
    assert result.returncode == 1
    assert "runconsumers --reset storefront.consumers.book_changed" in result.stderr
    assert result.stderr.count("INVALID_ARGUMENT") == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert fake.calls[-1][0] == "n1.7.1"


def test_an_unreachable_servlet_is_waited_for(fake, storefront_db):
    fake.change("CREATED", 1, "a")
    fake.stop()
    process = consumer_process(storefront_db, fake.port, "--until-idle", "5")
    try:
        first = process.stderr.readline()  # the check before the runners start
        fake.start()
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert "its servlet cannot be reached yet; it keeps trying" in first
    assert seen(storefront_db) == [("snapshot-1", 1, "CREATED")]


# -- against a real producer: rungrpcserver of the test project, catalog.Book watched -----------

PRODUCER = {"GRACE_PERIOD": 1}


def producer_server(url: str, port: int):
    return start_server(
        url, "--no-access-log", env=bus_env(**PRODUCER), address=f"127.0.0.1:{port}"
    )


def orm_in_another_process(url: str, code: str) -> None:
    run_django(url, "shell", "-c", code)


def test_real_watch_resumes_across_a_producer_restart(fresh_database, settings):
    port = free_port()
    server = producer_server(fresh_database, port)
    add_servlets(settings, producer=servlet_entry(port))
    books = registry.producer["catalog.Book"]
    try:
        author = registry.producer["catalog.Author"].create({"name": "Le Guin"})
        books.create({"title": "Earthsea", "author": author["id"], "isbn": "9780000000001"})
        events = books.watch(
            {"snapshot": True, "filter": {"author": author["id"]}},  # not other tests' books
            reconnect=Reconnect(initial=0.1, maximum=0.5),
        )
        row, complete = next(events), next(events)
        assert (row["type"], row["data"]["title"]) == ("CREATED", "Earthsea")
        assert complete["type"] == "SNAPSHOT_COMPLETE"
        stop_server(server)
        # A plain ORM save in another process while no server runs: the outbox keeps it.
        orm_in_another_process(
            fresh_database,
            "from catalog.models import Book; b = Book.objects.get(isbn='9780000000001'); "
            "b.title = 'Earthsea II'; b.save()",
        )
        server = producer_server(fresh_database, port)
        updated = next(events)  # through UNAVAILABLE until the new server answers
        books.create({"title": "Tehanu", "author": author["id"], "isbn": "9780000000002"})
        created = next(events)
        events.close()
    finally:
        server.stop()
        registry.reset()
    assert (updated["type"], updated["data"]["title"]) == ("UPDATED", "Earthsea II")
    assert "title" in updated["changed"]
    assert (created["type"], created["data"]["title"]) == ("CREATED", "Tehanu")
    assert len({updated["id"], created["id"]}) == 2
    # Cursors are opaque: each event has its own.
    assert len({complete["cursor"], updated["cursor"], created["cursor"]}) == 3


def test_real_consumer_killed_mid_handler_handles_that_event_once(
    fresh_database, storefront_db, tmp_path, settings
):
    port = free_port()
    server = producer_server(fresh_database, port)
    add_servlets(settings, producer=servlet_entry(port))
    env = {"STOREFRONT_MODEL": "catalog.Book"}
    try:
        author = registry.producer["catalog.Author"].create({"name": "Jemisin"})
        until_idle(storefront_db, port, **env)  # a snapshot of whatever is there; a cursor
        start = len(seen(storefront_db))
        ids = [
            registry.producer["catalog.Book"].create(
                {"title": f"Broken Earth {n}", "author": author["id"], "isbn": f"97811{n:08d}"}
            )["id"]
            for n in range(3)
        ]
        hang = tmp_path / "hang"
        process = consumer_process(
            storefront_db,
            port,
            STOREFRONT_HANG_ON_BOOK=str(ids[1]),
            STOREFRONT_HANG_FILE=str(hang),
            **env,
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
        until_idle(storefront_db, port, **env)
        handled = seen(storefront_db)[start:]
    finally:
        stop_server(server)
        registry.reset()
    assert [(book_id, kind) for _, book_id, kind in handled] == [(i, "CREATED") for i in ids]
    assert len({event_id for event_id, _, _ in handled}) == 3


def test_real_grpclist_and_grpccall_show_watch(fresh_database):
    with running_server(fresh_database, "--no-access-log", env=bus_env(**PRODUCER)) as server:
        listing = run_django(fresh_database, "grpclist", server.target, "catalog.Book")
        assert "watch" in listing.stdout.lower() and "since" in listing.stdout
        result = run_django(
            fresh_database,
            "grpccall",
            server.target,
            "catalog.Book.watch",
            '{"snapshot": true}',
            "--max",
            "1",
        )
    (line,) = result.stdout.splitlines()
    assert json.loads(line)["type"] in ("CREATED", "SNAPSHOT_COMPLETE")


def test_an_unmigrated_database_is_named_with_the_fix(fake, tmp_path):
    url = f"sqlite:///{tmp_path / 'empty.sqlite3'}"
    result = storefront(url, fake.port, "runconsumers", "--until-idle", "1")
    assert result.returncode == 1
    assert "its cursor cannot be read from database 'default'" in result.stderr
    assert "Run `manage.py migrate`" in result.stderr
    assert fake.calls == []
    # --list and --reset read the same table: the same remedy, no traceback.
    for args in (("--list",), ("--reset", "storefront.consumers.book_changed")):
        result = storefront(url, fake.port, "runconsumers", *args)
        assert result.returncode == 1, result.stderr
        assert "Run `manage.py migrate`" in result.stderr
        assert "Traceback" not in result.stderr


@requires_postgres
def test_a_consumer_survives_its_database_connections_being_killed(fake, storefront_db):
    until_idle(storefront_db, fake.port)
    # Connections kept (CONN_MAX_AGE): the killed one is found dead only when used.
    process = consumer_process(
        storefront_db, fake.port, "--until-idle", "4", STOREFRONT_CONN_MAX_AGE="600"
    )
    try:
        fake.change("CREATED", 1, "a")
        deadline = time.monotonic() + 30
        while len(seen(storefront_db)) < 1:
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.05)
        name = storefront_db.rsplit("/", 1)[1]
        db_query(
            DATABASE_URL,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
        fake.change("CREATED", 2, "b")  # its handler meets the dead connection, then retries
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert "the handler failed on CREATED event 'e2'" in err  # the dead connection, once
    assert seen(storefront_db) == [("e1", 1, "CREATED"), ("e2", 2, "CREATED")]
    assert cursor(storefront_db) == "2"


def test_real_watch_filter_in_djangos_spelling(fresh_database, settings):
    with running_server(fresh_database, "--no-access-log", env=bus_env(**PRODUCER)) as server:
        add_servlets(settings, producer=servlet_entry(server.port))
        books = registry.producer["catalog.Book"]
        try:
            author = registry.producer["catalog.Author"].create({"name": "Tolkien"})
            for n, title in enumerate(["The Hobbit", "Silmarillion", "Hobbit Notes"]):
                books.create({"title": title, "author": author["id"], "isbn": f"97822{n:08d}"})
            events = books.watch({"filter": {"title__icontains": "hobbit"}, "snapshot": True})
            titles = []
            for event in events:
                if event["type"] == "SNAPSHOT_COMPLETE":
                    break
                titles.append(event["data"]["title"])
            events.close()
        finally:
            registry.reset()
    assert sorted(titles) == ["Hobbit Notes", "The Hobbit"]


def test_real_async_watch_gives_the_snapshot_then_a_change(fresh_database, settings):
    from django_grpc_bus.client.aio import aregistry

    with running_server(fresh_database, "--no-access-log", env=bus_env(**PRODUCER)) as server:
        add_servlets(settings, producer=servlet_entry(server.port))

        async def run() -> list[tuple[str, str]]:
            books = aregistry.producer["catalog.Book"]
            author = await aregistry.producer["catalog.Author"].create({"name": "Herbert"})
            await books.create({"title": "Dune", "author": author["id"], "isbn": "9780441013593"})
            seen_events = []
            # The module's database has other tests' books: only this one.
            events = books.watch({"snapshot": True, "filter": {"isbn": "9780441013593"}})
            events = events.__aiter__()
            try:
                while len(seen_events) < 3:
                    event = await events.__anext__()
                    title = (event["data"] or {}).get("title", "")
                    seen_events.append((event["type"], title))
                    if event["type"] == "SNAPSHOT_COMPLETE":
                        await books.partial_update(
                            {
                                "data": {"isbn": "9780441013593", "title": "Dune Messiah"},
                                "update_mask": ["title"],
                            }
                        )
            finally:
                await events.aclose()
                await aregistry.aclose()
            return seen_events

        try:
            got = asyncio.run(run())
        finally:
            registry.reset()
    assert got == [("CREATED", "Dune"), ("SNAPSHOT_COMPLETE", ""), ("UPDATED", "Dune Messiah")]
