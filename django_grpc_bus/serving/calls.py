"""Run one RPC the way Django runs a request, as far as the database is concerned.

Every call: ``close_old_connections()`` (and, with ``DEBUG``, the query log reset), a fresh
service instance, the action (inside a transaction for writes), errors through the status
table, then ``close_old_connections()`` again (closing connections past ``CONN_MAX_AGE`` or
broken). For a stream, "then" is after the last message, an error or a cancellation. These are
the database receivers of Django's ``request_started``/``request_finished``, called directly:
the signals themselves are not sent (they cost as much again, per call). On the threaded
server with persistent connections the first is left out: the previous call's end did it
(``Call.begin``).

A *behavior* is what grpc calls for one RPC: ``unary_behavior(route)`` and its siblings, one
per kind of RPC, each running the route's service through :class:`Call`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import grpc
from django.conf import settings
from django.db import close_old_connections, connections, reset_queries, transaction

from django_grpc_bus.errors import abort_with, describe_failure
from django_grpc_bus.observability import access_log
from django_grpc_bus.observability.call_observer import CallObserver
from django_grpc_bus.serving.requests import CANCEL_NOTICE, incoming, refuse_undecodable
from django_grpc_bus.serving.traffic import Traffic
from django_grpc_bus.transactions import write_transaction

logger = logging.getLogger("django_grpc_bus.calls")

OK = grpc.StatusCode.OK
CANCELLED = grpc.StatusCode.CANCELLED
# How a call learns that its client went away: a stream's generator is closed (threaded
# server), or the call's task is cancelled (asyncio server).
CLIENT_GONE = (GeneratorExit, asyncio.CancelledError)


@dataclass(frozen=True)
class Route:
    """One RPC of one service on one server: what to instantiate, which method, what it returns.

    `traffic` is the server's: the call is counted in flight there, and refused while that
    server drains or is at its limit. `observer` is the server's too: its spans and metrics
    (None when it records neither).
    """

    service_class: type
    action: str
    method: str  # the full method name, "/catalog.Book/Retrieve"
    response_class: type
    atomic: bool
    traffic: Traffic
    dev: bool = False
    observer: CallObserver | None = None

    def new_service(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self.service_class(
            request=request, context=context, action=self.action, response_class=self.response_class
        )


class Call:
    """One call as a Django request, used as ``with Call(route, context):`` around its work.

    Entering refuses a request that did not decode, counts the call in flight (or refuses it
    while draining) and closes stale connections; leaving turns an exception into the call's
    status through the error table (unless the service ended the call itself), closes stale
    connections again and reports the call (:meth:`report`: the access log, the server's spans
    and metrics).
    """

    __slots__ = ("code", "context", "observed", "route", "started")

    def __init__(self, route: Route, context: grpc.ServicerContext, request: Any = None) -> None:
        self.admit(route, context, request)
        self.begin(closed_at_last_end=persistent_connections())

    def admit(self, route: Route, context: grpc.ServicerContext, request: Any = None) -> None:
        """Refuse an undecodable request, count the call in flight (or refuse it), observe it.

        No database work: the asyncio server admits calls on its event loop.
        """
        self.route = route
        self.context = context
        self.started = time.perf_counter()
        self.code = OK
        observer = route.observer
        self.observed = None if observer is None else observer.start(route.method, context)
        traffic = route.traffic
        try:
            refuse_undecodable(request, context)  # never counted in flight
            traffic.enter(context)
        except Exception as exc:  # refused: undecodable, the server drains, or is at its limit
            # ServicerContext.code() (grpcio 1.38+) postdates grpc-stubs.
            self.code = context.code() or grpc.StatusCode.UNKNOWN  # type: ignore[attr-defined]
            self.report(exc)
            raise
        # Counted in flight until grpc has finished the RPC (the response sent, or the call
        # cancelled), not merely until our code returns: a drain must not cut off a reply.
        if not context.add_callback(traffic.leave):
            traffic.leave()

    def begin(self, closed_at_last_end: bool = False) -> None:
        """The database side of a request's start, in the thread that runs the call's code.

        `closed_at_last_end`: the threaded server, where a call begins and ends in one thread,
        with persistent connections (every database's ``CONN_MAX_AGE`` other than 0). The
        closing of stale connections is then left to the end of each call: the previous call
        on this thread did it as it ended, and marked each connection for a health check at
        its next use (``CONN_HEALTH_CHECKS``); at most, a connection past its age serves one
        more call.
        """
        if settings.DEBUG:
            reset_queries()  # DEBUG keeps every query; a long-lived server must not
        if not closed_at_last_end:
            close_old_connections()

    def __enter__(self) -> Call:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, traceback: Any) -> Literal[False]:
        try:
            if exc_type is not None and issubclass(exc_type, CLIENT_GONE):
                self.code = grpc.StatusCode.CANCELLED
            elif isinstance(exc, Exception):
                self.abort(exc)  # raises the abort, which replaces `exc`
        finally:
            self.end(exc)
        return False

    def abort(self, exc: Exception) -> None:
        """End the call for `exc`, unless the service already ended it with its own status."""
        # ServicerContext.code() (grpcio 1.38+) postdates grpc-stubs.
        own = self.context.code()  # type: ignore[attr-defined]
        if own is not None and own is not OK:
            self.code = own
            return
        failure = describe_failure(exc, self.route.method, self.route.dev)
        self.code = failure.code
        abort_with(self.context, failure)

    def end(self, exc: BaseException | None = None) -> None:
        close_old_connections()
        self.report(exc)

    def report(self, exc: BaseException | None) -> None:
        """The access log line, the span's end and the metrics, with the call's real status.

        Costs one check each for the observer and the access log when there is neither.
        """
        observer = self.route.observer
        log = access_log.enabled()
        if observer is None and not log:
            return
        context = self.context
        code = self.code
        if code is OK:
            # ServicerContext.code() (grpcio 1.38+) postdates grpc-stubs.
            own = context.code()  # type: ignore[attr-defined]
            if own is not None and own is not OK:
                code = own  # set with context.set_code(), the action then returned
            elif not context.is_active():
                code = CANCELLED  # the client went away (cancelled, or past its deadline)
        method = self.route.method
        elapsed_ms = (time.perf_counter() - self.started) * 1e3
        observed = self.observed
        try:
            if observer is not None:
                observer.finish(method, observed, code, elapsed_ms, context, exc)
            if log:
                trace_id = observed.trace_id if observed is not None else None
                access_log.log_call(method, code.name, elapsed_ms, context.peer(), trace_id)
        except Exception:  # never let reporting change how the call ends
            logger.exception("Could not report the call %s.", method)


def persistent_connections() -> bool:
    """Whether every configured database keeps its connections between calls."""
    return all(db.get("CONN_MAX_AGE", 0) != 0 for db in connections.settings.values())


def unimplemented_behavior(route: Route) -> Callable[[Any, grpc.ServicerContext], Any]:
    """An RPC of the proto that the service class has no method for: UNIMPLEMENTED."""

    def handle(request: Any, context: grpc.ServicerContext) -> Any:
        with Call(route, context, request):
            context.abort(
                grpc.StatusCode.UNIMPLEMENTED,
                f"{route.method} is not offered by {route.service_class.__name__}.",
            )

    return handle


def unary_work(route: Route) -> Callable[[Any, grpc.ServicerContext], Any]:
    """What a unary call does inside its :class:`Call`: the service, authenticated, runs the
    action; an atomic action runs in one transaction, rolled back if the call failed."""

    def work(request: Any, context: grpc.ServicerContext) -> Any:
        service = route.new_service(request, context)
        service.initial()
        action = getattr(service, route.action)
        if not route.atomic:
            return action(request, context)
        prepare = getattr(service, "before_transaction", None)
        if prepare is not None:
            prepare()  # work that needs no transaction (Create's validation), done before it
        # A queued write waits as long as its client does (SQLite: behind the other writers).
        with write_transaction(wait=_deadline_wait(context)) as write:
            result = action(request, context)
            # Deferred constraints (foreign keys) are checked now rather than at COMMIT, where
            # waiting on a lock could outlast the deadline unnoticed (when any can be pending).
            write.check_deferred_constraints()
            if not context.is_active():
                # Cancelled, past its deadline, or cut off by shutdown: the client saw a
                # failure, so nothing of this call may stay in the database.
                transaction.set_rollback(True)
            return result

    return work


def stream_work(route: Route) -> Callable[[Any, grpc.ServicerContext], Iterator[Any]]:
    """What a streaming call does inside its :class:`Call`: the responses the action yields."""

    def work(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        service = route.new_service(request, context)
        service.initial()
        # Closing this generator (cancellation) closes the database iterator too.
        yield from getattr(service, route.action)(request, context)

    return work


def unary_behavior(route: Route) -> Callable[[Any, grpc.ServicerContext], Any]:
    """A unary RPC (:func:`unary_work`) as one call."""
    work = unary_work(route)

    def handle(request: Any, context: grpc.ServicerContext) -> Any:
        with Call(route, context, request):
            return work(request, context)

    return handle


def stream_behavior(route: Route) -> Callable[[Any, grpc.ServicerContext], Iterator[Any]]:
    """A server-streaming RPC: the action yields the responses (:func:`stream_work`)."""
    work = stream_work(route)

    def handle(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        with Call(route, context, request):
            yield from work(request, context)

    return handle


def client_stream_behavior(route: Route) -> Callable[[Any, grpc.ServicerContext], Any]:
    """A client-streaming RPC: the action gets the requests as an iterator, returns one reply.

    Otherwise exactly a unary call (atomic actions run in a transaction, rolled back on an
    error or a cancelled call; the end of their stream waits ``CANCEL_NOTICE`` for a
    cancellation, so that one cannot pass for the client's last message).
    """
    handle_unary = unary_behavior(route)
    cancel_notice = CANCEL_NOTICE if route.atomic else 0.0

    def handle(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
        return handle_unary(incoming(requests, context, cancel_notice), context)

    return handle


def bidi_stream_behavior(route: Route) -> Callable[[Any, grpc.ServicerContext], Iterator[Any]]:
    """A bidirectional stream: the action gets the requests as an iterator, yields replies."""
    handle_stream = stream_behavior(route)

    def handle(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
        return handle_stream(incoming(requests, context), context)

    return handle


# (client streaming, server streaming) -> how a call of that kind is run.
BEHAVIORS = {
    (False, False): unary_behavior,
    (False, True): stream_behavior,
    (True, False): client_stream_behavior,
    (True, True): bidi_stream_behavior,
}


# How long a write with no deadline queues behind the process's other writers (SQLite).
NO_DEADLINE_WRITE_WAIT = 300.0


def _deadline_wait(context: Any) -> float:
    """What the call's deadline leaves (capped), for queueing behind other writers."""
    time_remaining = getattr(context, "time_remaining", None)  # a test double may lack it
    remaining = time_remaining() if time_remaining is not None else None
    return NO_DEADLINE_WRITE_WAIT if remaining is None else min(remaining, NO_DEADLINE_WRITE_WAIT)
