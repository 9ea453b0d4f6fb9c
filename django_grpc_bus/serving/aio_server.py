"""The asyncio server: the same handler on ``grpc.aio`` (``rungrpcserver --asyncio``).

``build_aio_server()`` gives an :class:`AioBuiltServer`, ``serve_aio()`` runs one until SIGTERM
or SIGINT and then drains, as ``build_server()`` and ``serve()`` do for the threaded server, with
the same services, health, reflection (v1 and v1alpha), TLS, message limits, interceptors
(``grpc.aio`` ones), ``MAX_CONCURRENT_RPCS`` and observer. Calls are run by
:mod:`~django_grpc_bus.serving.aio_calls`: sync service code in a pool of ``MAX_WORKERS``
threads, ``async def`` actions on the loop. :class:`ServerThread` runs one on a loop of its own
in a thread (``GrpcTestServer(asyncio=True)``).
"""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import grpc

from django_grpc_bus.conf import bus_settings
from django_grpc_bus.observability import access_log
from django_grpc_bus.observability.call_observer import CallObserver
from django_grpc_bus.serving.aio_calls import CallThreads
from django_grpc_bus.serving.health_reflection import AioHealthServicer, mark_serving
from django_grpc_bus.serving.interceptors import INFRASTRUCTURE_PREFIXES, refusal_for
from django_grpc_bus.serving.server import (
    QUIET_PERIOD,
    QUIET_WAIT,
    ServerConfig,
    ServerError,
    add_port,
    announce_serving,
    call_observer,
    configured_interceptors,
    parse_address,
    server_credentials,
    server_options,
)
from django_grpc_bus.serving.traffic import Traffic

STOP_POLL = 0.2  # seconds between looks at the stop event
SETTLE_TIMEOUT = 2.0  # seconds the server's own tasks get to end once it is stopped
THREADS_END_TIMEOUT = 5.0  # seconds ServerThread.stop() waits for the pool's threads


@dataclass
class AioBuiltServer:
    """A ``grpc.aio.Server`` with a handler bound, and what belongs to that server alone."""

    server: grpc.aio.Server
    port: int  # the bound port (the one chosen, when the address asked for port 0)
    names: list[str]  # the services' full names
    traffic: Traffic  # its calls in flight
    health: Any  # grpc.aio's HealthServicer
    threads: CallThreads  # its pool for sync service code
    observer: CallObserver | None = None  # its spans and metrics (and /metrics endpoint)

    @property
    def metrics_url(self) -> str | None:
        endpoint = self.observer.endpoint if self.observer is not None else None
        return endpoint.url if endpoint is not None else None

    async def start(self) -> None:
        await self.server.start()

    async def stop_gracefully(self, grace: float, *, exiting: bool = False) -> bool:
        """Drain, then stop. Returns True when every call in flight finished within `grace`.

        Health turns NOT_SERVING, new service calls are refused UNAVAILABLE, and those in
        flight get `grace` seconds; health and reflection streams do not hold the stop.
        `exiting`: the process ends at once if calls were cut short (no waiting for them).
        """
        deadline = time.monotonic() + grace
        await self.health.enter_graceful_shutdown()
        loop = asyncio.get_running_loop()
        finished = await loop.run_in_executor(None, self.traffic.drain, grace)
        # Then until calls stop arriving (see BuiltServer.stop_gracefully).
        remaining = max(deadline - time.monotonic(), 0.0)
        await loop.run_in_executor(
            None, self.traffic.wait_quiet, QUIET_PERIOD, min(QUIET_WAIT, remaining)
        )
        await self.server.stop(0)
        from django_grpc_bus.watch.nats.relay import stop_relay  # (models: after setup)

        await loop.run_in_executor(None, stop_relay, self.traffic)
        if finished or not exiting:
            # grpc cancels what is left (health Watch streams, calls cut short) from its own
            # tasks: let them end rather than be cancelled in turn when the loop closes.
            await _settle(SETTLE_TIMEOUT)
        self.threads.close(wait=False)
        if self.observer is not None:
            self.observer.close()
        return finished


def aio_interceptors() -> list[Any]:
    """``MESSAGE_BUS['INTERCEPTORS']`` for a grpc.aio server: each must be a grpc.aio one."""
    interceptors = configured_interceptors()
    for interceptor in interceptors:
        if not isinstance(interceptor, grpc.aio.ServerInterceptor):
            raise ServerError(
                f"MESSAGE_BUS['INTERCEPTORS'] has {type(interceptor).__qualname__}, which is not "
                "a grpc.aio.ServerInterceptor: the asyncio server (--asyncio, "
                "MESSAGE_BUS['ASYNCIO']) takes only those. Give an asyncio version of it, or "
                "serve without --asyncio."
            )
    return interceptors


class AioInfrastructureGuard(grpc.aio.ServerInterceptor):
    """``PROTECT_HEALTH_AND_REFLECTION`` on the asyncio server: the check runs in the pool."""

    def __init__(self, executor: Executor) -> None:
        self.executor = executor

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:  # the handler, or None for a method no service has
        handler = await continuation(handler_call_details)
        if handler is None or not handler_call_details.method.startswith(INFRASTRUCTURE_PREFIXES):
            return handler
        return _guarded(handler, handler_call_details, self.executor)


def _guarded(
    handler: grpc.RpcMethodHandler, details: grpc.HandlerCallDetails, executor: Executor
) -> grpc.RpcMethodHandler:
    """`handler` (grpc.aio's health or reflection), authenticating first, off the loop."""
    kind = ("stream_" if handler.request_streaming else "unary_") + (
        "stream" if handler.response_streaming else "unary"
    )
    behavior = getattr(handler, kind)

    async def refuse_unless_allowed(context: grpc.aio.ServicerContext) -> None:
        loop = asyncio.get_running_loop()
        refusal = await loop.run_in_executor(executor, refusal_for, details)
        if refusal is not None:
            await context.abort(*refusal)

    guarded: Callable[..., Any]
    if inspect.isasyncgenfunction(behavior):

        async def guarded_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await refuse_unless_allowed(context)
            async for response in behavior(request, context):
                yield response

        guarded = guarded_stream
    else:

        async def guarded_call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await refuse_unless_allowed(context)
            return await behavior(request, context)

        guarded = guarded_call
    # grpc's method handlers are namedtuples; the stubs' RpcMethodHandler class is not one.
    return handler._replace(**{kind: guarded})  # type: ignore[attr-defined]


async def build_aio_server(handler: Any, config: ServerConfig) -> AioBuiltServer:
    """An asyncio server with `handler`'s services, health and reflection, bound; not started.

    Runs on the loop that will serve it. Its calls in flight are counted on a
    :class:`Traffic` of its own (limited to ``MAX_CONCURRENT_RPCS``), its sync service code
    runs in a pool of its own (``max_workers`` or ``MAX_WORKERS`` threads).
    """
    threads = CallThreads(config.max_workers or bus_settings.MAX_WORKERS)
    threads.attach(asyncio.get_running_loop())
    try:
        interceptors = aio_interceptors()
        if bus_settings.PROTECT_HEALTH_AND_REFLECTION:
            interceptors.insert(0, AioInfrastructureGuard(threads))
        server = grpc.aio.server(
            migration_thread_pool=threads,
            interceptors=interceptors,
            options=server_options(config),
        )
        traffic = Traffic(limit=bus_settings.MAX_CONCURRENT_RPCS)
        health_servicer = AioHealthServicer()
        parse_address(config.address)  # a clear error before grpc's own
        credentials = server_credentials()
        observer = call_observer(config)
    except BaseException:
        threads.close(wait=False)
        raise
    try:
        names = handler.bind_to_server(
            server,
            traffic=traffic,
            health_servicer=health_servicer,
            dev=config.dev,
            observer=observer,
            threads=threads,
        )
        await mark_serving(health_servicer, names)
        port = add_port(server, config.address, credentials)
    except BaseException:
        threads.close(wait=False)
        if observer is not None:
            observer.close()  # its metrics port, taken for a server that does not start
        raise
    return AioBuiltServer(server, port, names, traffic, health_servicer, threads, observer)


def serving_mode(built: AioBuiltServer) -> str:
    """The start-up line's last clause for an asyncio server."""
    return f"; asyncio, sync code in {built.threads.size} threads"


def serve_aio(
    handler: Any,
    config: ServerConfig,
    *,
    announce: Callable[[str], None] = print,
    install_signals: bool = True,
    stop_event: threading.Event | None = None,
    exit_when_cut_short: bool = False,
    grace: float | None = None,
) -> int:
    """``serve()`` on the asyncio server: until SIGTERM/SIGINT (or `stop_event`), then drain.

    Runs its own event loop (``asyncio.run``) in the calling thread; signal handlers only on
    the main thread. Calls in flight get `grace` seconds (default ``GRACE_PERIOD``); with
    `exit_when_cut_short`, a process whose calls outlived it exits at once.
    """
    stop_event = stop_event or threading.Event()
    if install_signals and threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop_event.set())
    grace = float(bus_settings.GRACE_PERIOD if grace is None else grace)
    return asyncio.run(_serve(handler, config, announce, stop_event, grace, exit_when_cut_short))


async def _serve(
    handler: Any,
    config: ServerConfig,
    announce: Callable[[str], None],
    stop_event: threading.Event,
    grace: float,
    exit_when_cut_short: bool,
) -> int:
    built = await build_aio_server(handler, config)
    await built.start()
    announce_serving(
        announce, config, built.names, built.port, built.metrics_url, serving_mode(built)
    )
    while not stop_event.is_set():
        await asyncio.sleep(STOP_POLL)
    announce(f"Stopping (pid {os.getpid()}): draining calls in flight for up to {grace:g}s.")
    finished = await built.stop_gracefully(grace, exiting=exit_when_cut_short)
    access_log.flush()  # the last calls' lines, before any os._exit
    announce("Stopped." if finished else "Stopped; some calls were cancelled at the deadline.")
    if not finished and exit_when_cut_short:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)  # the cut-short calls' threads would otherwise keep the process alive
    return 0


class ServerThread:
    """An asyncio server on an event loop of its own, in a daemon thread.

    For a process whose main thread does something else (``GrpcTestServer(asyncio=True)``):
    ``start()`` builds and starts it and returns the :class:`AioBuiltServer`; ``stop(grace)``
    drains it, then ends the loop.
    """

    def __init__(self, handler: Any, config: ServerConfig) -> None:
        self.handler = handler
        self.config = config
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="grpc-bus-aio-loop", daemon=True
        )
        self.built: AioBuiltServer | None = None

    def run(self, coroutine: Coroutine[Any, Any, Any], timeout: float | None = None) -> Any:
        """Run `coroutine` on the server's loop; its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def start(self) -> AioBuiltServer:
        self.thread.start()
        try:
            self.built = self.run(self._start())
        except BaseException:
            self._end_loop()
            raise
        return self.built

    async def _start(self) -> AioBuiltServer:
        built = await build_aio_server(self.handler, self.config)
        await built.start()
        return built

    def stop(self, grace: float = 0) -> bool:
        """Drain and stop the server, end its loop; wait a little for its threads to close
        their connections (so a test database can be dropped right after)."""
        finished = True
        built, self.built = self.built, None
        if built is not None:
            finished = self.run(built.stop_gracefully(grace))
        self._end_loop()
        if built is not None:
            built.threads.join(THREADS_END_TIMEOUT)
        return finished

    def _end_loop(self) -> None:
        if self.loop.is_closed():
            return
        if self.thread.is_alive():
            self.run(_cancel_other_tasks())
            self.run(self.loop.shutdown_default_executor())
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=30)
        if not self.thread.is_alive():
            self.loop.close()


async def _settle(timeout: float) -> None:
    """Wait up to `timeout` s for the loop's other tasks (grpc's, the calls') to end."""
    current = asyncio.current_task()
    tasks = [task for task in asyncio.all_tasks() if task is not current]
    if tasks:
        await asyncio.wait(tasks, timeout=timeout)


async def _cancel_other_tasks() -> None:
    """Cancel what is left on the loop (calls cut short), and let each end."""
    current = asyncio.current_task()
    tasks = [task for task in asyncio.all_tasks() if task is not current]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
