"""The asyncio server's calls (serving.aio_calls, .connections), with a fake grpc.aio context.

Each call is admitted on the loop; sync code runs in the pool (the threaded server's Call, error
table and housekeeping, in a pool thread); a stream makes each response in whichever thread is
free and holds none while a write waits; cancellations close the stream in its thread and
report CANCELLED; async def actions run on the loop.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import grpc
import pytest
from django.core.exceptions import ImproperlyConfigured, ObjectDoesNotExist
from django.db import connections

from django_grpc_bus.serving import aio_calls, calls
from django_grpc_bus.serving.aio_calls import CallThreads, ThreadContext, aio_behavior
from django_grpc_bus.serving.binding import method_handlers
from django_grpc_bus.serving.calls import Route
from django_grpc_bus.serving.requests import lenient_parser
from django_grpc_bus.serving.traffic import Traffic

from .fakes import OpenService

Code = grpc.StatusCode
UNARY, SERVER_STREAM, CLIENT_STREAM, BIDI = (
    (False, False),
    (False, True),
    (True, False),
    (True, True),
)


class AbortError(Exception):
    """What FakeAioContext.abort raises, as grpc.aio's abort raises AbortError."""


class FakeAioContext:
    """A grpc.aio ServicerContext: async abort and write, done callbacks run by finish()."""

    def __init__(self, write_gate: asyncio.Event | None = None) -> None:
        self.status: grpc.StatusCode | None = None
        self.status_details = ""
        self.trailing: tuple[Any, ...] = ()
        self.written: list[Any] = []
        self.callbacks: list[Any] = []
        self.write_gate = write_gate
        self.sent = False

    async def abort(self, code, details="", trailing_metadata=()):
        self.status, self.status_details, self.sent = code, details, True
        self.trailing = trailing_metadata
        raise AbortError(code, details)

    async def write(self, message):
        if self.write_gate is not None:
            await self.write_gate.wait()
        self.written.append(message)

    def set_code(self, code):
        self.status = code

    def code(self):
        return self.status

    def set_details(self, details):
        self.status_details = details

    def details(self):
        return self.status_details

    def set_trailing_metadata(self, metadata):
        self.trailing = metadata

    def invocation_metadata(self):
        return ()

    def peer(self):
        return "ipv4:127.0.0.1:5000"

    def add_done_callback(self, callback):
        self.callbacks.append(callback)

    def done(self):
        return self.sent

    def finish(self):
        for callback in self.callbacks:
            callback(self)
        self.callbacks.clear()


class Echo(OpenService):
    """``lookup`` unary, ``count`` a server stream, ``bulk`` a client stream, ``echo`` bidi."""

    raised: BaseException | None = None
    threads_seen: list[str] = []

    def lookup(self, request, context):
        Echo.threads_seen.append(threading.current_thread().name)
        if Echo.raised is not None:
            raise Echo.raised
        return self.response_class(count=len(request.name))

    def count(self, request, context):
        for seen in range(1, request.start + 1):
            Echo.threads_seen.append(threading.current_thread().name)
            yield self.response_class(seen=seen)

    def bulk(self, requests, context):
        return self.response_class(count=sum(1 for _ in requests))

    def echo(self, requests, context):
        for seen, message in enumerate(requests, 1):
            yield self.response_class(name=message.name, seen=seen)


@pytest.fixture
def pb(book_actions_pb2):
    return book_actions_pb2


@pytest.fixture(autouse=True)
def fresh_echo():
    Echo.raised = None
    Echo.threads_seen = []


@pytest.fixture
def housekeeping(monkeypatch):
    """The threads close_old_connections() ran in, recorded rather than done."""
    threads: list[str] = []
    monkeypatch.setattr(
        calls, "close_old_connections", lambda: threads.append(threading.current_thread().name)
    )
    return threads


def route(action: str, response_class: type, traffic: Traffic | None = None, **extra) -> Route:
    return Route(
        service_class=extra.pop("service_class", Echo),
        action=action,
        method=f"/library.BookActions/{action}",
        response_class=response_class,
        atomic=extra.pop("atomic", False),
        traffic=traffic or Traffic(),
        **extra,
    )


def serve_call(behavior, request, context: FakeAioContext, threads: CallThreads):
    """Run one call as grpc.aio would; the result (None when aborted)."""

    async def main():
        threads.attach(asyncio.get_running_loop())
        try:
            return await behavior(request, context)
        except AbortError:
            return None
        finally:
            context.finish()
            threads.close(wait=False)

    return asyncio.run(main())


def handler(route_: Route, kind: tuple[bool, bool], threads: CallThreads):
    return aio_behavior(route_, kind, getattr(route_.service_class, route_.action, None), threads)


# -- where code runs, what it returns ------------------------------------------------------------


def test_a_unary_call_runs_in_a_pool_thread_with_housekeeping_there(pb, housekeeping):
    threads = CallThreads(2)
    context = FakeAioContext()

    reply = serve_call(
        handler(route("lookup", pb.Authors), UNARY, threads),
        pb.AuthorName(name="abc"),
        context,
        threads,
    )

    assert reply == pb.Authors(count=3)
    assert context.status is None
    assert Echo.threads_seen[0].startswith("grpc-bus-sync-")
    assert housekeeping == [Echo.threads_seen[0]] * 2  # before and after, in that thread


@pytest.mark.parametrize(
    ("raised", "code"),
    [(ObjectDoesNotExist("gone"), Code.NOT_FOUND), (RuntimeError("secret"), Code.INTERNAL)],
)
def test_errors_go_through_the_error_table_and_the_loop_sends_the_status(
    pb, housekeeping, raised, code
):
    Echo.raised = raised
    context = FakeAioContext()
    threads = CallThreads(1)

    reply = serve_call(
        handler(route("lookup", pb.Authors), UNARY, threads), pb.AuthorName(), context, threads
    )

    assert reply is None
    assert context.status == code and context.sent
    assert "secret" not in context.status_details
    assert len(housekeeping) == 2


def test_an_undecodable_request_is_refused_on_the_loop(pb, housekeeping):
    traffic = Traffic()
    request = lenient_parser(pb.AuthorName)(b"\xff\xff\xff")
    context = FakeAioContext()
    threads = CallThreads(1)

    serve_call(
        handler(route("lookup", pb.Authors, traffic), UNARY, threads), request, context, threads
    )

    assert context.status == Code.INVALID_ARGUMENT
    assert Echo.threads_seen == [] and housekeeping == []  # no service code, no pool
    assert traffic.active == 0


def test_an_rpc_the_class_lacks_is_unimplemented(pb, housekeeping):
    context = FakeAioContext()
    threads = CallThreads(1)

    serve_call(
        handler(route("forget", pb.Authors), UNARY, threads), pb.AuthorName(), context, threads
    )

    assert context.status == Code.UNIMPLEMENTED


# -- admission on the loop: draining, the limit ---------------------------------------------------


def test_while_draining_calls_are_refused_unavailable_without_the_pool(pb, housekeeping):
    traffic = Traffic()
    assert traffic.drain(0)
    context = FakeAioContext()
    threads = CallThreads(1)

    serve_call(
        handler(route("lookup", pb.Authors, traffic), UNARY, threads),
        pb.AuthorName(),
        context,
        threads,
    )

    assert context.status == Code.UNAVAILABLE
    assert Echo.threads_seen == []


def test_at_the_limit_a_call_is_refused_at_once_though_the_pool_is_busy(pb, housekeeping):
    traffic = Traffic(limit=1)
    release = threading.Event()

    class Slow(OpenService):
        def lookup(self, request, context):
            release.wait(10)
            return self.response_class(count=1)

    threads = CallThreads(1)
    slow_route = route("lookup", pb.Authors, traffic, service_class=Slow)

    async def main():
        threads.attach(asyncio.get_running_loop())
        first = asyncio.ensure_future(
            handler(slow_route, UNARY, threads)(pb.AuthorName(), FakeAioContext())
        )
        await asyncio.sleep(0.05)
        refused = FakeAioContext()
        try:
            await asyncio.wait_for(handler(slow_route, UNARY, threads)(pb.AuthorName(), refused), 1)
        except AbortError:
            pass
        release.set()
        reply = await first
        threads.close(wait=False)
        return refused, reply

    refused, reply = asyncio.run(main())

    assert refused.status == Code.RESOURCE_EXHAUSTED
    assert reply.count == 1


def test_a_call_counts_in_flight_until_the_rpc_is_over(pb, housekeeping):
    traffic = Traffic()
    context = FakeAioContext()
    threads = CallThreads(1)

    async def main():
        threads.attach(asyncio.get_running_loop())
        await handler(route("lookup", pb.Authors, traffic), UNARY, threads)(
            pb.AuthorName(), context
        )
        counted = traffic.active
        context.finish()
        threads.close(wait=False)
        return counted

    assert asyncio.run(main()) == 1
    assert traffic.active == 0


# -- streams ---------------------------------------------------------------------------------------


def test_a_server_stream_writes_each_response_made_in_the_pool(pb, housekeeping):
    context = FakeAioContext()
    threads = CallThreads(2)

    serve_call(
        handler(route("count", pb.Resolved), SERVER_STREAM, threads),
        pb.Countdown(start=3),
        context,
        threads,
    )

    assert [reply.seen for reply in context.written] == [1, 2, 3]
    assert all(name.startswith("grpc-bus-sync-") for name in Echo.threads_seen)
    assert len(housekeeping) == 2  # the stream's start and end


def test_a_stream_waiting_for_its_client_holds_no_thread(pb, housekeeping):
    """One pool thread: a stream whose write waits does not stop a unary call."""
    gate = asyncio.Event()
    threads = CallThreads(1)
    stream_context = FakeAioContext(write_gate=gate)

    async def main():
        threads.attach(asyncio.get_running_loop())
        stream = asyncio.ensure_future(
            handler(route("count", pb.Resolved), SERVER_STREAM, threads)(
                pb.Countdown(start=2), stream_context
            )
        )
        await asyncio.sleep(0.05)  # the stream made its first response and waits to write it
        reply = await asyncio.wait_for(
            handler(route("lookup", pb.Authors), UNARY, threads)(
                pb.AuthorName(name="ab"), FakeAioContext()
            ),
            2,
        )
        written_meanwhile = list(stream_context.written)
        gate.set()
        await stream
        threads.close(wait=False)
        return reply, written_meanwhile

    reply, written_meanwhile = asyncio.run(main())

    assert reply.count == 2
    assert written_meanwhile == []
    assert [r.seen for r in stream_context.written] == [1, 2]


def test_a_stream_has_connections_of_its_own_in_every_thread(pb, monkeypatch):
    seen: list[tuple[str, int, int]] = []

    class Looking(OpenService):
        def count(self, request, context):
            for step in range(3):
                seen.append((threading.current_thread().name, id(connections["default"]), step))
                yield self.response_class(seen=step)

    thread_own: dict[str, int] = {}

    def note_thread_connection():
        thread_own.setdefault(threading.current_thread().name, id(connections["default"]))

    monkeypatch.setattr(calls, "close_old_connections", lambda: None)
    context = FakeAioContext()
    threads = CallThreads(2)
    warmed = threads.submit(note_thread_connection)

    serve_call(
        handler(route("count", pb.Resolved, service_class=Looking), SERVER_STREAM, threads),
        pb.Countdown(),
        context,
        threads,
    )

    assert warmed.done()
    stream_connection = {connection for _thread, connection, _step in seen}
    assert len(stream_connection) == 1  # the same connection at every step
    assert stream_connection.isdisjoint(thread_own.values())  # not a thread's own


def test_a_cancelled_stream_is_closed_in_its_thread_and_reported_cancelled(pb, housekeeping):
    closed = threading.Event()
    reported: list[grpc.StatusCode] = []

    class Endless(OpenService):
        def count(self, request, context):
            try:
                while True:
                    yield self.response_class(seen=1)
            finally:
                closed.set()

    gate = asyncio.Event()  # never set: the client does not read
    context = FakeAioContext(write_gate=gate)
    traffic = Traffic()
    threads = CallThreads(1)
    stream_route = route("count", pb.Resolved, traffic, service_class=Endless)

    async def main():
        threads.attach(asyncio.get_running_loop())
        task = asyncio.ensure_future(
            handler(stream_route, SERVER_STREAM, threads)(pb.Countdown(), context)
        )
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        threads.close(wait=False)

    original_report = calls.Call.report

    def report(self, exc):
        reported.append(self.code)
        original_report(self, exc)

    calls.Call.report = report  # type: ignore[method-assign]
    try:
        asyncio.run(main())
    finally:
        calls.Call.report = original_report  # type: ignore[method-assign]

    assert closed.is_set()
    assert reported == [Code.CANCELLED]
    assert traffic.active == 0  # left when the client went away
    assert len(housekeeping) == 2


def test_client_and_bidi_streams_read_the_requests_as_they_arrive(pb, housekeeping):
    async def requests():
        for name in "abc":
            await asyncio.sleep(0)
            yield pb.AuthorName(name=name)

    threads = CallThreads(2)
    reply = serve_call(
        handler(route("bulk", pb.Authors), CLIENT_STREAM, threads),
        requests(),
        FakeAioContext(),
        threads,
    )
    assert reply.count == 3

    context = FakeAioContext()
    threads = CallThreads(2)
    serve_call(handler(route("echo", pb.Resolved), BIDI, threads), requests(), context, threads)
    assert [(r.name, r.seen) for r in context.written] == [("a", 1), ("b", 2), ("c", 3)]


def test_a_client_stream_whose_read_fails_is_cancelled(pb, housekeeping):
    async def requests():
        yield pb.AuthorName(name="a")
        raise RuntimeError("the call is over")

    context = FakeAioContext()
    threads = CallThreads(1)

    serve_call(
        handler(route("bulk", pb.Authors), CLIENT_STREAM, threads), requests(), context, threads
    )

    assert context.status == Code.CANCELLED


# -- the context sync code gets --------------------------------------------------------------------


def test_thread_context_abort_records_and_raises():
    aio = FakeAioContext()
    context = ThreadContext(aio, asyncio.new_event_loop())

    with pytest.raises(aio_calls.Aborted):
        context.abort(Code.NOT_FOUND, "nope", (("k", "v"),))

    assert context.code() == Code.NOT_FOUND and context.details() == "nope"
    assert context.aborted == (Code.NOT_FOUND, "nope", (("k", "v"),))
    assert not context.is_active()
    assert isinstance(context, grpc.ServicerContext)


def test_thread_context_callbacks_run_once_when_over_or_when_the_client_goes():
    aio = FakeAioContext()
    context = ThreadContext(aio, asyncio.new_event_loop())
    ran: list[str] = []

    assert context.add_callback(lambda: ran.append("first"))
    context.client_gone()
    aio.finish()

    assert ran == ["first"]
    assert not context.is_active()
    assert context.add_callback(lambda: ran.append("late")) is False


# -- async def actions -----------------------------------------------------------------------------


class Async(OpenService):
    """``lookup`` a coroutine, ``count`` an async generator: both on the loop."""

    loop_threads: list[str] = []

    async def lookup(self, request, context):
        Async.loop_threads.append(threading.current_thread().name)
        if request.name == "missing":
            raise ObjectDoesNotExist("no")
        return self.response_class(count=len(request.name))

    async def count(self, request, context):
        for seen in range(1, 3):
            yield self.response_class(seen=seen)


@pytest.fixture
def orm_thread_housekeeping(monkeypatch):
    ran: list[str] = []

    async def note():
        ran.append("housekeeping")

    monkeypatch.setattr(aio_calls, "_close_in_orm_thread", note)
    monkeypatch.setattr(aio_calls, "_begin_in_orm_thread", lambda call: note())
    return ran


def test_async_actions_run_on_the_loop_through_the_error_table(pb, orm_thread_housekeeping):
    Async.loop_threads = []
    threads = CallThreads(1)
    context = FakeAioContext()

    reply = serve_call(
        handler(route("lookup", pb.Authors, service_class=Async), UNARY, threads),
        pb.AuthorName(name="abcd"),
        context,
        threads,
    )

    assert reply.count == 4
    assert Async.loop_threads == [threading.current_thread().name]  # asyncio.run's: this one
    assert orm_thread_housekeeping == ["housekeeping"] * 2

    missing = FakeAioContext()
    threads = CallThreads(1)
    serve_call(
        handler(route("lookup", pb.Authors, service_class=Async), UNARY, threads),
        pb.AuthorName(name="missing"),
        missing,
        threads,
    )
    assert missing.status == Code.NOT_FOUND

    streamed = FakeAioContext()
    threads = CallThreads(1)
    serve_call(
        handler(route("count", pb.Resolved, service_class=Async), SERVER_STREAM, threads),
        pb.Countdown(),
        streamed,
        threads,
    )
    assert [r.seen for r in streamed.written] == [1, 2]


def test_async_actions_need_the_asyncio_server_and_no_transaction(book_actions_pb2):
    descriptor = book_actions_pb2.DESCRIPTOR.services_by_name["BookActions"]

    with pytest.raises(ImproperlyConfigured, match="asyncio server"):
        method_handlers(Async, descriptor, Traffic())

    class AtomicAsync(Async):
        atomic_actions = frozenset({"lookup"})

    with pytest.raises(ImproperlyConfigured, match="atomic_actions"):
        method_handlers(AtomicAsync, descriptor, Traffic(), threads=CallThreads(1))
