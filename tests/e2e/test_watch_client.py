"""The client's Watch (``registry.s.Book.watch`` / ``aregistry``) against a fake Watch server.

The fake (tests/watchfake.py) serves the contract's messages in this process, so the
reconnect and resume logic is proven on its own: a server stopped mid-stream and started
again is called again from the cursor of the last event yielded (no event lost, none repeated),
a snapshot cut short is asked for again, OUT_OF_RANGE and INVALID_ARGUMENT raise the
registry's errors, spent attempts raise UNAVAILABLE, and closing the generator cancels the call.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
import threading
import time

import grpc
import pytest
from support import add_servlets, free_port, servlet_entry
from watchfake import FakeWatchServer, compile_proto

from django_grpc_bus.client.aio import aregistry
from django_grpc_bus.client.exceptions import CallError, ClientError, ServletUnavailable
from django_grpc_bus.client.registry import registry
from django_grpc_bus.client.watch import Reconnect, WatchState, reconnect_problem

FAST = Reconnect(initial=0.05, maximum=0.2)


@pytest.fixture(scope="module")
def watch_modules(tmp_path_factory):
    return compile_proto(tmp_path_factory.mktemp("watchfake"))


@pytest.fixture
def fake(watch_modules, settings):
    server = FakeWatchServer(*watch_modules, port=free_port()).start()
    add_servlets(settings, fake=servlet_entry(server.port, timeout=5))
    try:
        yield server
    finally:
        server.stop()
        registry.reset()


def take(events, count: int) -> list[dict]:
    return [next(events) for _ in range(count)]


def wait_for(condition, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_events_are_dicts_like_every_registry_result(fake):
    fake.change("CREATED", 1, "Dune")
    fake.change("UPDATED", 1, "Dune II")
    fake.change("DELETED", 1)
    events = registry.fake.Book.watch({"since": "0"}, reconnect=FAST)
    created, updated, deleted = take(events, 3)
    events.close()
    assert created["type"] == "CREATED" and created["data"] == {"id": 1, "title": "Dune"}
    assert updated["type"] == "UPDATED" and updated["changed"] == ["title"]
    assert deleted["type"] == "DELETED" and deleted["data"]["id"] == 1
    assert [e["cursor"] for e in (created, updated, deleted)] == ["1", "2", "3"]
    assert [e["id"] for e in (created, updated, deleted)] == ["e1", "e2", "e3"]
    assert isinstance(created["time"], dt.datetime) and created["time"].tzinfo is not None


def test_snapshot_then_changes_with_filter(fake):
    fake.change("CREATED", 1, "Dune")
    fake.change("CREATED", 2, "Emma")
    events = registry.fake.Book.watch(
        {"filter": {"title": "Dune"}, "snapshot": True}, reconnect=FAST
    )
    row, complete = take(events, 2)
    assert row["type"] == "CREATED" and row["data"]["title"] == "Dune"
    assert complete["type"] == "SNAPSHOT_COMPLETE" and complete["cursor"] == "2"
    fake.change("UPDATED", 2, "Emma 2")
    fake.change("UPDATED", 1, "Dune")
    (change,) = take(events, 1)
    events.close()
    assert change["cursor"] == "4" and change["data"]["id"] == 1


def test_restart_mid_stream_resumes_from_the_last_cursor_yielded(fake):
    for book in range(1, 4):
        fake.change("CREATED", book, f"b{book}")
    events = registry.fake.Book.watch({"since": "0"}, reconnect=FAST)
    first = take(events, 3)
    fake.stop()
    # Changes while the server is down are kept in its log, as an outbox keeps them.
    fake.change("UPDATED", 1, "b1 again")
    fake.change("DELETED", 2)

    def restart_later():
        time.sleep(0.5)
        fake.start()

    thread = threading.Thread(target=restart_later)
    thread.start()
    later = take(events, 2)  # blocks through the UNAVAILABLE calls until the server is back
    thread.join()
    fake.change("CREATED", 9, "after")
    (last,) = take(events, 1)
    events.close()
    cursors = [e["cursor"] for e in (*first, *later, last)]
    assert cursors == ["1", "2", "3", "4", "5", "6"], "an event lost or repeated"
    # The first call from "0"; every call after the restart from the last cursor yielded.
    assert fake.calls[0] == ("0", False)
    assert len(fake.calls) >= 2 and fake.calls[-1] == ("3", False)


def test_snapshot_cut_short_is_asked_for_again(fake, watch_modules):
    pb2, _ = watch_modules
    method = registry.fake.Book.watch
    state = WatchState(method, {"snapshot": True, "filter": {"title": "x"}}, FAST)
    state.event(pb2.BookEvent(type="CREATED", data={"id": 1}, cursor="7"))
    again = state.request()
    assert again.snapshot and again.since == "" and again.filter.title == "x"
    state.event(pb2.BookEvent(type="SNAPSHOT_COMPLETE", cursor="7"))
    state.event(pb2.BookEvent(type="UPDATED", data={"id": 1}, cursor="8"))
    resumed = state.request()
    assert not resumed.snapshot and resumed.since == "8" and resumed.filter.title == "x"


def test_a_reconnect_before_the_first_event_resumes_from_the_start_bookmark(fake):
    """A watch from now keeps the server's BOOKMARK (its start position) as its cursor without
    yielding it: a change made while the server is down, before any event, still arrives."""
    fake.change("CREATED", 1, "before")  # not wanted: it precedes the watch
    fake.bookmarks = True
    events = registry.fake.Book.watch({}, reconnect=FAST)
    got: list[dict] = []
    kept: list[str] = []
    events.on_bookmark = kept.append  # what a durable consumer stores
    reader = threading.Thread(target=lambda: got.extend(events), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 10
        while events.cursor != "1":
            assert time.monotonic() < deadline, "the start BOOKMARK was not kept"
            time.sleep(0.01)
        fake.stop()
        fake.change("CREATED", 2, "while down")
        fake.start()
        while not got:
            assert time.monotonic() < deadline, fake.calls
            time.sleep(0.01)
    finally:
        events.stop()
        reader.join(5)
    assert [(e["type"], e["data"]["title"]) for e in got] == [("CREATED", "while down")]
    assert fake.calls[0] == ("", False) and ("1", False) in fake.calls[1:]
    assert kept[0] == "1"


def test_a_bookmark_moves_the_cursor_but_not_during_a_snapshot(fake, watch_modules):
    pb2, _ = watch_modules
    state = WatchState(registry.fake.Book.watch, {}, FAST)
    assert state.event(pb2.BookEvent(type="BOOKMARK", cursor="4")) is None
    assert state.cursor == "4" and state.request().since == "4"
    snapshot = WatchState(registry.fake.Book.watch, {"snapshot": True}, FAST)
    assert snapshot.event(pb2.BookEvent(type="BOOKMARK", cursor="4")) is None
    assert snapshot.request().snapshot and snapshot.cursor == ""


def test_out_of_range_and_bad_cursor_raise_the_registry_errors(fake):
    fake.pruned = 5
    with pytest.raises(CallError) as info:
        next(registry.fake.Book.watch({"since": "2"}, reconnect=FAST))
    assert info.value.code() == grpc.StatusCode.OUT_OF_RANGE
    assert "since" in info.value.details()
    with pytest.raises(CallError) as info:
        next(registry.fake.Book.watch({"since": "nope"}, reconnect=FAST))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(fake.calls) == 2, "only UNAVAILABLE is retried"


def test_spent_attempts_raise_unavailable(fake):
    events = registry.fake.Book.watch(
        {"since": "0"}, reconnect=Reconnect(initial=0.01, maximum=0.02, attempts=2)
    )
    fake.change("CREATED", 1, "a")
    take(events, 1)
    fake.stop()
    started = time.monotonic()
    with pytest.raises(ServletUnavailable) as info:
        next(events)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert time.monotonic() - started < 5


# Reconnects for longer than the timeouts below: without one deadline over them all the watch
# would end UNAVAILABLE (attempts spent), not DEADLINE_EXCEEDED.
PATIENT = Reconnect(initial=0.05, maximum=0.2, attempts=100)


def test_a_timeout_covers_the_whole_watch_reconnects_included(fake):
    """docs/client.md: a deadline covers a whole stream; a Watch's reconnects are that stream."""
    fake.unavailable = True  # the producer answers, but each Watch ends UNAVAILABLE
    events = registry.fake.Book.watch({}, timeout=1, reconnect=PATIENT)
    with pytest.raises(CallError) as info:
        next(events)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, info.value
    assert "timeout (1 s)" in info.value.details()
    assert len(fake.calls) >= 2, "it did reconnect before the deadline"


def test_an_async_watch_timeout_covers_its_reconnects(fake):
    fake.unavailable = True

    async def run() -> None:
        events = aregistry.fake.Book.watch({}, timeout=1, reconnect=PATIENT).__aiter__()
        try:
            await events.__anext__()
        finally:
            await events.aclose()
            await aregistry.aclose()

    with pytest.raises(CallError) as info:
        asyncio.run(run())
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, info.value


class Unavailable(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "down"


def test_each_call_of_a_watch_gets_what_is_left_of_its_timeout(fake, monkeypatch):
    from django_grpc_bus.client import watch

    now = [100.0]
    monkeypatch.setattr(watch.time, "monotonic", lambda: now[0])
    state = WatchState(registry.fake.Book.watch, {}, Reconnect(initial=30, maximum=30, jitter=0))
    assert state.call_options({"timeout": 12, "metadata": None})["timeout"] == 12
    now[0] += 5
    assert state.call_options({"timeout": 12, "metadata": None})["timeout"] == 7
    assert state.retry_delay(Unavailable()) == 7, "the wait ends at the deadline, not after it"
    now[0] += 7
    with pytest.raises(CallError) as info:
        state.call_options({"timeout": 12, "metadata": None})
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    endless = WatchState(registry.fake.Book.watch, {}, FAST)
    assert endless.call_options({"timeout": None, "metadata": None})["timeout"] is None
    now[0] += 1e6
    assert endless.call_options({"timeout": None, "metadata": None})["timeout"] is None


def test_a_bad_request_fails_before_any_call(fake):
    with pytest.raises(ClientError, match=r"fakebus\.Book\.Watch"):
        registry.fake.Book.watch({"nope": 1})
    assert fake.calls == []


def test_closing_the_generator_cancels_the_call(fake):
    fake.change("CREATED", 1, "a")
    events = registry.fake.Book.watch({"since": "0"}, reconnect=FAST)
    take(events, 1)
    assert fake.open_calls == 1
    events.close()
    # The servicer's loop ends once its context is no longer active: the call was cancelled.
    wait_for(lambda: fake.open_calls == 0)
    assert len(fake.calls) == 1, "closed, not called again"


def test_closing_an_async_watch_cancels_the_call(fake):
    fake.change("CREATED", 1, "a")

    async def run() -> None:
        events = aregistry.fake.Book.watch({"since": "0"}, reconnect=FAST).__aiter__()
        try:
            await events.__anext__()
            assert fake.open_calls == 1
            await events.aclose()
            await asyncio.to_thread(wait_for, lambda: fake.open_calls == 0)
        finally:
            await aregistry.aclose()

    asyncio.run(run())
    assert len(fake.calls) == 1


@pytest.mark.parametrize(
    ("value", "named"),
    [
        ({"initial": -1}, "'initial'"),
        ({"multiplier": 0.5}, "'multiplier'"),
        ({"jitter": 2}, "'jitter'"),
        ({"attempts": "3"}, "'attempts'"),
        ({"tries": 3}, "'tries'"),
        ([], "dict"),
    ],
)
def test_bad_reconnect_settings_are_named(value, named, settings):
    assert named in reconnect_problem(value)
    settings.MESSAGE_BUS = {**settings.MESSAGE_BUS, "WATCH_RECONNECT": value}
    with pytest.raises(ClientError, match=r"WATCH_RECONNECT"):
        Reconnect.from_settings()


def test_backoff_grows_to_its_maximum_with_jitter():
    policy = Reconnect(initial=0.1, maximum=1.0, multiplier=2, jitter=0.5)
    for failures, ceiling in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (500, 1.0)]:
        delays = [policy.delay(failures) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling + 1e-9 for d in delays)
    assert not Reconnect().gives_up(10**6)
    assert Reconnect(attempts=0).gives_up(1)


def test_aregistry_watch_resumes_after_a_restart(fake):
    fake.change("CREATED", 1, "a")
    fake.change("CREATED", 2, "b")

    async def run() -> list[str]:
        seen: list[str] = []
        events = aregistry.fake.Book.watch({"since": "0"}, reconnect=FAST).__aiter__()
        try:
            seen.append((await events.__anext__())["cursor"])
            seen.append((await events.__anext__())["cursor"])
            await asyncio.to_thread(fake.stop)
            fake.change("UPDATED", 1, "a2")
            loop = asyncio.get_running_loop()
            loop.call_later(0.4, fake.start)
            seen.append((await events.__anext__())["cursor"])
        finally:
            await events.aclose()
            await aregistry.aclose()
        return seen

    assert asyncio.run(run()) == ["1", "2", "3"]
    assert fake.calls[-1] == ("2", False)


def test_awaiting_an_async_watch_is_refused(fake):
    async def run() -> None:
        try:
            await aregistry.fake.Book.watch({"since": "0"})
        finally:
            await aregistry.aclose()

    with pytest.raises(ClientError, match="async for"):
        asyncio.run(run())


def test_stop_from_another_thread_ends_a_waiting_watch(fake):
    fake.change("CREATED", 1, "a")
    events = registry.fake.Book.watch({"since": "0"}, reconnect=FAST)
    take(events, 1)
    timer = threading.Timer(0.3, events.stop)
    timer.start()
    started = time.monotonic()
    with pytest.raises(StopIteration):
        next(events)  # nothing more comes: only stop() ends the wait
    assert 0.2 < time.monotonic() - started < 5
    assert events.cursor == "1"


def test_stop_ends_the_wait_between_calls(fake):
    events = registry.fake.Book.watch(
        {"since": "0"}, reconnect=Reconnect(initial=30, maximum=30, jitter=0)
    )
    fake.change("CREATED", 1, "a")
    take(events, 1)
    fake.stop()
    threading.Timer(0.5, events.stop).start()
    started = time.monotonic()
    with pytest.raises(StopIteration):
        next(events)
    assert time.monotonic() - started < 5, "stop() must not wait out a 30 s backoff"


def test_manage_py_check_names_a_bad_watch_reconnect(settings):
    from django_grpc_bus.checks import check_settings

    settings.MESSAGE_BUS = {**settings.MESSAGE_BUS, "WATCH_RECONNECT": {"maximum": -1}}
    (error,) = [e for e in check_settings() if e.id == "django_grpc_bus.E035"]
    assert "MESSAGE_BUS['WATCH_RECONNECT'] 'maximum' must be a number of at least 0" in error.msg
    settings.MESSAGE_BUS = {**settings.MESSAGE_BUS, "WATCH_RECONNECT": {"attempts": 3}}
    assert not [e for e in check_settings() if e.id == "django_grpc_bus.E035"]


def test_grpclist_shows_watch_and_grpccall_prints_events_up_to_max(fake):
    from django.core.management import call_command
    from django.core.management.base import CommandError

    fake.change("CREATED", 1, "Dune")
    fake.change("UPDATED", 1, "Dune II")
    fake.change("DELETED", 1)
    out = io.StringIO()
    call_command("grpclist", "fake", "fakebus.Book", stdout=out)
    assert "watch" in out.getvalue().lower() and "since" in out.getvalue()
    out = io.StringIO()
    call_command(
        "grpccall", "fake", "fakebus.Book.watch", '{"since": "1"}', "--max", "2", stdout=out
    )
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(e["type"], e["cursor"]) for e in lines] == [("UPDATED", "2"), ("DELETED", "3")]
    assert lines[0]["changed"] == ["title"] and lines[0]["time"].endswith("+00:00")
    with pytest.raises(CommandError, match="--max must be at least 1"):
        call_command("grpccall", "fake", "fakebus.Book.watch", "--max", "0")


def test_grpccall_timeout_ends_a_watch_that_keeps_reconnecting(fake, settings):
    """docs/commands.md: `--timeout` ends a Watch with DEADLINE_EXCEEDED, reconnects included."""
    from django.core.management import call_command

    settings.MESSAGE_BUS = {**settings.MESSAGE_BUS, "WATCH_RECONNECT": {"maximum": 0.2}}
    fake.unavailable = True
    err = io.StringIO()
    with pytest.raises(SystemExit) as exited:
        call_command("grpccall", "fake", "fakebus.Book.watch", "--timeout", "1", stderr=err)
    assert exited.value.code == 1
    assert err.getvalue().startswith("DEADLINE_EXCEEDED: "), err.getvalue()
    assert len(fake.calls) >= 2
