"""Calls on the asyncio server: the threaded server's calls, driven from the event loop.

What runs where:

- On the loop: receiving and sending messages, admitting a call (refusals while draining or at
  ``MAX_CONCURRENT_RPCS`` are immediate, whatever the pool is doing), and ``async def``
  actions.
- In the server's thread pool (:class:`CallThreads`, ``MAX_WORKERS`` threads): all sync service
  code, exactly as the threaded server runs it (:class:`~django_grpc_bus.serving.calls.Call`,
  the same work functions, the error table, ``close_old_connections()`` before and after). A
  unary or client-streaming call runs in one pool thread from start to end, with that thread's
  connections. A server or bidi stream runs one step per response (``next()`` of its
  generator) in whichever thread is free, with connections of its own
  (:mod:`~django_grpc_bus.serving.connections`), and holds no thread while it waits for a
  slow client to take the response. A client stream's code holds its thread while it waits for
  the client's next message.

Service code gets a :class:`ThreadContext`: grpc.aio's servicer context with the API of the
threaded server's (``abort()`` raises, ``is_active()``, ``add_callback()``); the loop ends the call
with the status an ``abort()`` gave. ``async def`` actions get grpc.aio's context itself.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import contextvars
import inspect
import logging
import os
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, NoReturn, cast

import grpc
from asgiref.sync import SyncToAsync, sync_to_async
from django.db import close_old_connections, connections

from django_grpc_bus.serving.calls import (
    Call,
    Route,
    stream_work,
    unary_work,
    unimplemented_behavior,
)
from django_grpc_bus.serving.connections import ConnectionSets, OwnConnections
from django_grpc_bus.serving.requests import CANCEL_NOTICE, incoming, refuse_undecodable

logger = logging.getLogger("django_grpc_bus.calls")

_DONE = object()  # a stream's generator is exhausted
_END = object()  # a client stream has no more messages
_READ_FAILED = object()  # reading the client stream failed (the call is over)
READ_POLL = 1.0  # seconds between checks that a call waiting for a client message is alive


class Aborted(Exception):
    """What :meth:`ThreadContext.abort` raises, as grpc's threaded ``abort()`` raises."""


class ClientGone(grpc.RpcError):
    """The client stream cannot be read any more: the call was cancelled or is over."""


class ThreadContext(grpc.ServicerContext):
    """grpc.aio's servicer context, with the API sync service code knows from grpc's.

    ``abort()`` records the status and raises :class:`Aborted` (the loop then sends it:
    :meth:`send_abort`); ``is_active()`` is False once the client went away or the call ended;
    ``add_callback()`` callbacks run when the RPC is over, or as soon as the client goes away
    (as grpc's threaded server runs them). Everything else is grpc.aio's own.
    """

    __slots__ = ("_callbacks", "_context", "_lock", "_loop", "_over", "aborted", "cancelled")

    def __init__(self, context: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._context = context  # grpc.aio.ServicerContext
        self._loop = loop
        self._callbacks: list[Callable[[], Any]] = []
        self._lock = threading.Lock()
        self._over = False
        self.cancelled = False
        self.aborted: tuple[grpc.StatusCode, str, tuple[Any, ...]] | None = None
        context.add_done_callback(self._finish)

    # -- ending the call ---------------------------------------------------------------------

    def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()
    ) -> NoReturn:
        trailing = tuple(trailing_metadata or ())
        context = self._context
        context.set_code(code)
        context.set_details(details)
        if trailing:
            context.set_trailing_metadata(trailing)
        if self.aborted is None:
            self.aborted = (code, details, trailing)
        raise Aborted(code, details)

    def abort_with_status(self, status: grpc.Status) -> NoReturn:
        self.abort(status.code, status.details, status.trailing_metadata)

    async def send_abort(self) -> None:
        """End the call with the status :meth:`abort` recorded (raises grpc.aio's AbortError)."""
        assert self.aborted is not None
        code, details, trailing = self.aborted
        await self._context.abort(code, details, trailing)

    def is_active(self) -> bool:
        return not (self.cancelled or self._over or self.aborted is not None)

    def cancel(self) -> None:
        """End the call CANCELLED once the code returns (the code sees is_active() False)."""
        self._context.set_code(grpc.StatusCode.CANCELLED)
        self.cancelled = True

    def add_callback(self, callback: Callable[[], Any]) -> bool:
        with self._lock:
            if self._over:
                return False
            self._callbacks.append(callback)
            return True

    def client_gone(self) -> None:
        """The call's task was cancelled: the client went away, or its deadline passed."""
        self.cancelled = True
        self._finish()

    def _finish(self, _context: Any = None) -> None:
        with self._lock:
            if self._over:
                return
            self._over = True
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback()
            except Exception:
                logger.exception("A callback of a call failed.")

    # -- the rest of grpc's ServicerContext --------------------------------------------------

    def send_initial_metadata(self, metadata: Any) -> None:
        coroutine = self._context.send_initial_metadata(tuple(metadata))
        asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def code(self) -> Any:
        return self._context.code()

    def details(self) -> Any:
        return self._context.details()

    def set_code(self, code: grpc.StatusCode) -> None:
        self._context.set_code(code)

    def set_details(self, details: str) -> None:
        self._context.set_details(details)

    def set_trailing_metadata(self, metadata: Any) -> None:
        self._context.set_trailing_metadata(tuple(metadata))

    def trailing_metadata(self) -> Any:
        return self._context.trailing_metadata()

    def invocation_metadata(self) -> Any:
        return self._context.invocation_metadata()

    def peer(self) -> str:
        return self._context.peer()

    def peer_identities(self) -> Any:
        return self._context.peer_identities()

    def peer_identity_key(self) -> Any:
        return self._context.peer_identity_key()

    def auth_context(self) -> Any:
        return self._context.auth_context()

    def time_remaining(self) -> Any:  # None without a deadline
        return self._context.time_remaining()

    def set_compression(self, compression: grpc.Compression) -> None:
        self._context.set_compression(compression)

    def disable_next_message_compression(self) -> None:
        self._context.disable_next_message_compression()


class _Job:
    """One piece of sync code queued for the pool, and where its outcome goes on the loop."""

    __slots__ = ("args", "context", "finished", "function", "future")

    def __init__(self, future: asyncio.Future[Any], function: Callable[..., Any], args: Any):
        self.future = future
        self.function = function
        self.args = args
        self.context = contextvars.copy_context()  # the call's: its span, its locals
        self.finished = False


class CallThreads(concurrent.futures.Executor):
    """The asyncio server's pool of threads for sync service code, and its streams' connections.

    ``await threads.run(context, function, *args)`` is the fast path: the job goes on a queue
    that `size` threads take from, and finished jobs go back to the loop in batches (one loop
    wake-up for all the results ready at once, not one each), so a busy server spends little
    on the hand-offs. ``submit()`` (a ``concurrent.futures.Executor``) serves grpc's own use
    and the health and reflection guard.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stream_connections = ConnectionSets(keep=size)
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._finished: collections.deque[tuple[_Job, BaseException | None, Any]] = (
            collections.deque()
        )
        self._lock = threading.Lock()
        self._wake_pending = False
        self._threads: list[threading.Thread] = []
        self._closed = False

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Serve calls of `loop` (the server's), starting the threads."""
        self.loop = loop
        for number in range(self.size):
            thread = threading.Thread(
                target=self._work, name=f"grpc-bus-sync-{number}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def _work(self) -> None:
        # As in asgiref's own threads: async_to_sync() in service code runs the coroutine on the
        # server's loop, and sync_to_async() inside it comes back to this thread (same
        # connection, same transaction).
        SyncToAsync.threadlocal.main_event_loop = self.loop
        SyncToAsync.threadlocal.main_event_loop_pid = os.getpid()
        take = self._queue.get
        while True:
            item = take()
            if item is None:  # closed: this thread's own connections go with it
                connections.close_all()
                return
            if isinstance(item, _Job):
                try:
                    result, error = item.context.run(item.function, *item.args), None
                except BaseException as exc:
                    result, error = None, exc
                self._hand_back(item, error, result)
            else:  # submit(): a concurrent.futures work item
                item.run()

    def _hand_back(self, job: _Job, error: BaseException | None, result: Any) -> None:
        self._finished.append((job, error, result))
        with self._lock:
            wake, self._wake_pending = not self._wake_pending, True
        if wake:
            try:
                cast(asyncio.AbstractEventLoop, self.loop).call_soon_threadsafe(self._deliver)
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass

    def _deliver(self) -> None:
        """On the loop: every finished job's outcome to its future."""
        with self._lock:
            self._wake_pending = False
        finished = self._finished
        while finished:
            job, error, result = finished.popleft()
            job.finished = True
            future = job.future
            if future.done():  # its task was cancelled meanwhile
                continue
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)

    async def run(self, context: ThreadContext, function: Callable[..., Any], *args: Any) -> Any:
        """``function(*args)`` in a pool thread, in a copy of this task's contextvars.

        When the call is cancelled meanwhile, `context` says so to the code (``is_active()``
        False, callbacks run), and the task still waits for the code to return before the
        cancellation goes on: no call's code outlives its task, and none is dropped unrun.
        """
        return await self.outcome(context, self.start(function, *args))

    def start(self, function: Callable[..., Any], *args: Any) -> _Job:
        """Queue ``function(*args)`` for a pool thread; :meth:`outcome` waits for it."""
        job = _Job(cast(asyncio.AbstractEventLoop, self.loop).create_future(), function, args)
        self._queue.put(job)
        return job

    async def outcome(self, context: ThreadContext, job: _Job) -> Any:
        """What `job` returned (or raised), once it has run; see :meth:`run`."""
        try:
            return await job.future
        except asyncio.CancelledError:
            context.client_gone()
            await self.finished(job)
            raise

    async def finished(self, job: _Job) -> None:
        """Wait until `job` has run, whatever it gave, through any cancellation."""
        loop = cast(asyncio.AbstractEventLoop, self.loop)
        while not job.finished:
            job.future = loop.create_future()
            try:
                await job.future
            except BaseException:  # the cancellation, or its outcome: not this wait's affair
                pass

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        if self._closed:
            raise RuntimeError("cannot schedule new futures after shutdown")
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._queue.put(_WorkItem(future, fn, args, kwargs))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self.close(wait)

    def join(self, timeout: float) -> None:
        """Wait up to `timeout` s for the threads to end (after :meth:`close`)."""
        for thread in self._threads:
            thread.join(timeout)

    def close(self, wait: bool) -> None:
        """Stop the threads once the work queued is done; close the idle stream connections
        and each thread's own."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_WorkItem(None, self.stream_connections.close_all, (), {}))
        for _thread in self._threads:
            self._queue.put(None)
        if wait:
            for thread in self._threads:
                thread.join()


class _WorkItem:
    """A ``submit()``'s function, run in a pool thread, its outcome on `future` (if any)."""

    __slots__ = ("args", "function", "future", "kwargs")

    def __init__(
        self,
        future: concurrent.futures.Future[Any] | None,
        function: Callable[..., Any],
        args: Any,
        kwargs: Any,
    ) -> None:
        self.future = future
        self.function = function
        self.args = args
        self.kwargs = kwargs

    def run(self) -> None:
        future = self.future
        if future is not None and not future.set_running_or_notify_cancel():
            return
        try:
            result = self.function(*self.args, **self.kwargs)
        except BaseException as exc:
            if future is not None:
                future.set_exception(exc)
            return
        if future is not None:
            future.set_result(result)


class AioCall(Call):
    """A :class:`Call` admitted on the loop; its database side runs later, in a pool thread."""

    __slots__ = ()

    def __init__(self, route: Route, context: Any, request: Any = None) -> None:
        self.admit(route, context, request)


class AsyncActionCall(AioCall):
    """The call of an ``async def`` action: its connection housekeeping is awaited around it."""

    __slots__ = ()

    def end(self, exc: BaseException | None = None) -> None:
        self.report(exc)


# -- sync service code, from the loop ------------------------------------------------------------


def _run_call(call: Call, work: Callable[..., Any], request: Any, context: Any) -> Any:
    """In a pool thread: a unary or client-streaming call, from start to end."""
    call.begin()
    with call:
        return work(request, context)


def _call_stream(call: Call, work: Callable[..., Iterator[Any]], request: Any, context: Any) -> Any:
    """A streaming call as a generator, each step run in some pool thread."""
    call.begin()
    with call:
        yield from work(request, context)


def _advance(own: OwnConnections, stream: Any) -> Any:
    """In a pool thread, with the stream's connections: its next response, or _DONE."""
    finished = True
    try:
        with own:
            item = next(stream, _DONE)
        finished = item is _DONE
        return item
    finally:
        if finished:
            own.release()


def _close(own: OwnConnections, stream: Any) -> None:
    """In a pool thread: end a stream the client left (its Call reports CANCELLED)."""
    try:
        with own:
            stream.close()
    finally:
        own.release()


async def _stream_out(
    threads: CallThreads, threaded: ThreadContext, context: Any, stream: Any
) -> None:
    """Write what `stream` yields, each response made in the pool and written on the loop.

    The next response is made while one is written (one ahead, no more: a slow client
    leaves the stream waiting with one response ready, and no thread held).
    """
    own = OwnConnections(threads.stream_connections)
    job: _Job | None = threads.start(_advance, own, stream)
    try:
        while True:
            assert job is not None
            item = await threads.outcome(threaded, job)
            job = None
            if item is _DONE:
                return
            job = threads.start(_advance, own, stream)
            await context.write(item)
    except Aborted:
        await threaded.send_abort()
    except BaseException:  # cancelled, or the write failed: the client is gone
        threaded.client_gone()
        if job is not None:
            await threads.finished(job)  # the response being made: let it be
        if stream.gi_frame is not None:  # suspended at a yield: close it in its thread
            await threads.run(threaded, _close, own, stream)
        raise


class ThreadRequests:
    """A client stream (grpc.aio's async iterator) as the iterator a pool thread reads.

    Each ``next()`` reads one message on the loop and waits for it, so the client's pace is
    kept (nothing is read ahead). A read that fails, or a call that is over, ends the iterator
    with :class:`ClientGone` (a ``grpc.RpcError``, which ``incoming`` takes as a cancellation).
    """

    def __init__(self, requests: Any, context: ThreadContext, loop: asyncio.AbstractEventLoop):
        self._requests = requests.__aiter__()
        self._context = context
        self._loop = loop

    def __iter__(self) -> ThreadRequests:
        return self

    def __next__(self) -> Any:
        if self._context.cancelled:
            raise ClientGone()
        future = asyncio.run_coroutine_threadsafe(self._read(), self._loop)
        while True:
            try:
                item = future.result(timeout=READ_POLL)
                break
            except concurrent.futures.TimeoutError:
                if self._context.cancelled or self._loop.is_closed():
                    future.cancel()
                    raise ClientGone() from None
        if item is _END:
            raise StopIteration
        if item is _READ_FAILED:
            raise ClientGone()
        return item

    async def _read(self) -> Any:
        try:
            return await self._requests.__anext__()
        except StopAsyncIteration:
            return _END
        except Exception:
            return _READ_FAILED


def unary(route: Route, threads: CallThreads) -> Callable[..., Any]:
    """A unary RPC of sync code: the whole call in one pool thread."""
    work = unary_work(route)

    async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
        threaded = ThreadContext(context, asyncio.get_running_loop())
        try:
            call = AioCall(route, threaded, request)
            return await threads.run(threaded, _run_call, call, work, request, threaded)
        except Aborted:
            await threaded.send_abort()

    return handle


def client_stream(route: Route, threads: CallThreads) -> Callable[..., Any]:
    """A client-streaming RPC of sync code: one pool thread reads the stream as it arrives."""
    work = unary_work(route)
    cancel_notice = CANCEL_NOTICE if route.atomic else 0.0

    async def handle(requests: Any, context: grpc.aio.ServicerContext) -> Any:
        loop = asyncio.get_running_loop()
        threaded = ThreadContext(context, loop)
        try:
            call = AioCall(route, threaded)
            arriving = incoming(ThreadRequests(requests, threaded, loop), threaded, cancel_notice)
            return await threads.run(threaded, _run_call, call, work, arriving, threaded)
        except Aborted:
            await threaded.send_abort()

    return handle


def server_stream(route: Route, threads: CallThreads) -> Callable[..., Any]:
    """A server-streaming RPC of sync code: each response made in the pool, then written."""
    work = stream_work(route)

    async def handle(request: Any, context: grpc.aio.ServicerContext) -> None:
        threaded = ThreadContext(context, asyncio.get_running_loop())
        try:
            call = AioCall(route, threaded, request)
        except Aborted:
            return await threaded.send_abort()
        await _stream_out(threads, threaded, context, _call_stream(call, work, request, threaded))

    return handle


def bidi_stream(route: Route, threads: CallThreads) -> Callable[..., Any]:
    """A bidi stream of sync code: as a server stream, reading the requests as they arrive."""
    work = stream_work(route)

    async def handle(requests: Any, context: grpc.aio.ServicerContext) -> None:
        loop = asyncio.get_running_loop()
        threaded = ThreadContext(context, loop)
        try:
            call = AioCall(route, threaded)
        except Aborted:
            return await threaded.send_abort()
        arriving = incoming(ThreadRequests(requests, threaded, loop), threaded)
        await _stream_out(threads, threaded, context, _call_stream(call, work, arriving, threaded))

    return handle


def unimplemented(route: Route, threads: CallThreads) -> Callable[..., Any]:
    """An RPC the service class has no method for: UNIMPLEMENTED (reported as any call)."""
    refuse = unimplemented_behavior(route)

    async def handle(request: Any, context: grpc.aio.ServicerContext) -> None:
        threaded = ThreadContext(context, asyncio.get_running_loop())
        try:
            await threads.run(threaded, refuse, request, threaded)
        except Aborted:
            await threaded.send_abort()

    return handle


# -- async def actions, on the loop ---------------------------------------------------------------

# Connection housekeeping for async actions, in the thread where Django's async ORM (aget,
# acreate, ...) and sync_to_async() run their queries, as Django's ASGI handler does it.
_begin_in_orm_thread = sync_to_async(Call.begin, thread_sensitive=True)
_close_in_orm_thread = sync_to_async(close_old_connections, thread_sensitive=True)


async def _aincoming(requests: Any, threaded: ThreadContext) -> AsyncIterator[Any]:
    """A client stream for an async action: each message checked to have decoded."""
    async for request in requests:
        refuse_undecodable(request, threaded)
        yield request


def async_action(route: Route, kind: tuple[bool, bool]) -> Callable[..., Any]:
    """An ``async def`` action (a coroutine, or an async generator for a server stream).

    It runs on the loop, with grpc.aio's servicer context; authentication and permissions
    (``initial()``) and the call's connection housekeeping run where the async ORM runs.
    """
    client_streaming, server_streaming = kind

    async def handle(request_or_requests: Any, context: grpc.aio.ServicerContext) -> Any:
        threaded = ThreadContext(context, asyncio.get_running_loop())
        if client_streaming:
            request, admitted = _aincoming(request_or_requests, threaded), None
        else:
            request = admitted = request_or_requests
        try:
            call = AsyncActionCall(route, threaded, admitted)
        except Aborted:
            return await threaded.send_abort()
        await _begin_in_orm_thread(call)
        try:
            with call:
                service = route.new_service(request, cast(Any, context))  # grpc.aio's
                await sync_to_async(service.initial, thread_sensitive=True)()
                action = getattr(service, route.action)
                if not server_streaming:
                    return await action(request, context)
                async with contextlib.aclosing(action(request, context)) as responses:
                    async for response in responses:
                        await context.write(response)
                return None
        except asyncio.CancelledError:
            threaded.client_gone()
            raise
        except Aborted:
            await threaded.send_abort()
        finally:
            await _close_in_orm_thread()

    return handle


def is_async(method: Any) -> bool:
    """Whether a service method is ``async def`` (a coroutine or async generator function)."""
    return inspect.iscoroutinefunction(method) or inspect.isasyncgenfunction(method)


# (client streaming, server streaming) -> how a call of sync code of that kind is run.
AIO_BEHAVIORS = {
    (False, False): unary,
    (False, True): server_stream,
    (True, False): client_stream,
    (True, True): bidi_stream,
}


def aio_behavior(
    route: Route, kind: tuple[bool, bool], method: Any, threads: CallThreads
) -> Callable[..., Any]:
    """What the asyncio server calls for one RPC of `route`'s service (`method`: its method)."""
    if not callable(method):
        return unimplemented(route, threads)
    if is_async(method):
        return async_action(route, kind)
    return AIO_BEHAVIORS[kind](route, threads)
