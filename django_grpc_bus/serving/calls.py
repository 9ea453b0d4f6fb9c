"""Run one RPC the way Django runs a request, as far as the database is concerned.

Every call: ``close_old_connections()`` (and, with ``DEBUG``, the query log reset), a fresh
service instance, the action (inside a transaction for writes), errors through the status
table, then ``close_old_connections()`` again (closing connections past ``CONN_MAX_AGE`` or
broken). For a stream, "then" is after the last message, an error or a cancellation. These are
the database receivers of Django's ``request_started``/``request_finished``, called directly:
the signals themselves are not sent (they cost as much again, per call).

A *behavior* is what grpc calls for one RPC: ``unary_behavior(route)`` and its siblings, one
per kind of RPC, each running the route's service through :class:`Call`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
from django.conf import settings
from django.db import close_old_connections, reset_queries, transaction

from django_grpc_bus.errors import abort_with, describe_failure
from django_grpc_bus.serving.requests import CANCEL_NOTICE, incoming, refuse_undecodable
from django_grpc_bus.serving.traffic import Traffic
from django_grpc_bus.transactions import write_transaction

logger = logging.getLogger("django_grpc_bus.calls")

OK = grpc.StatusCode.OK


@dataclass(frozen=True)
class Route:
    """One RPC of one service on one server: what to instantiate, which method, what it returns.

    `traffic` is the server's: the call is counted in flight there, and refused while that
    server drains or is at its limit.
    """

    service_class: type
    action: str
    method: str  # the full method name, "/catalog.Book/Retrieve"
    response_class: type
    atomic: bool
    traffic: Traffic
    dev: bool = False
    log_calls: bool = False

    def new_service(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self.service_class(
            request=request, context=context, action=self.action, response_class=self.response_class
        )


class Call:
    """One call as a Django request, used as ``with Call(route, context):`` around its work.

    Entering counts the call in flight (or refuses it while draining) and closes stale
    connections; leaving turns an exception into the call's status through the error table
    (unless the service ended the call itself), closes stale connections again and logs.
    """

    __slots__ = ("code", "context", "route", "started")

    def __init__(self, route: Route, context: grpc.ServicerContext) -> None:
        traffic = route.traffic
        traffic.enter(context)
        # Counted in flight until grpc has finished the RPC (the response sent, or the call
        # cancelled), not merely until our code returns: a drain must not cut off a reply.
        if not context.add_callback(traffic.leave):
            traffic.leave()
        if settings.DEBUG:
            reset_queries()  # DEBUG keeps every query; a long-lived server must not
        close_old_connections()
        self.route = route
        self.context = context
        self.started = time.perf_counter()
        self.code = OK

    def __enter__(self) -> Call:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, traceback: Any) -> bool:
        try:
            if exc_type is GeneratorExit:  # a stream's client went away
                self.code = grpc.StatusCode.CANCELLED
            elif isinstance(exc, Exception):
                self.abort(exc)  # raises the abort, which replaces `exc`
        finally:
            self.end()
        return False

    def abort(self, exc: Exception) -> None:
        """End the call for `exc`, unless the service already ended it with its own status."""
        own = self.context.code()
        if own is not None and own is not OK:
            self.code = own
            return
        failure = describe_failure(exc, self.route.method, self.route.dev)
        self.code = failure.code
        abort_with(self.context, failure)

    def end(self) -> None:
        close_old_connections()
        if self.route.log_calls:
            elapsed = (time.perf_counter() - self.started) * 1e3
            logger.info("%s %s %.1fms", self.route.method, self.code.name, elapsed)


def unimplemented_behavior(route: Route) -> Callable[[Any, grpc.ServicerContext], Any]:
    """An RPC of the proto that the service class has no method for: UNIMPLEMENTED."""

    def handle(request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(
            grpc.StatusCode.UNIMPLEMENTED,
            f"{route.method} is not offered by {route.service_class.__name__}.",
        )

    return handle


def unary_behavior(route: Route) -> Callable[[Any, grpc.ServicerContext], Any]:
    """A unary RPC; an atomic action runs in one transaction, rolled back if the call failed."""

    def handle(request: Any, context: grpc.ServicerContext) -> Any:
        refuse_undecodable(request, context)
        with Call(route, context):
            service = route.new_service(request, context)
            service.initial()
            action = getattr(service, route.action)
            if not route.atomic:
                return action(request, context)
            with write_transaction():
                result = action(request, context)
                connection = transaction.get_connection()
                if connection.vendor == "postgresql":
                    # Deferred constraints (foreign keys) are checked now rather than at COMMIT,
                    # where waiting on a lock could outlast the deadline unnoticed.
                    connection.check_constraints()
                if not context.is_active():
                    # Cancelled, past its deadline, or cut off by shutdown: the client saw a
                    # failure, so nothing of this call may stay in the database.
                    transaction.set_rollback(True)
                return result

    return handle


def stream_behavior(route: Route) -> Callable[[Any, grpc.ServicerContext], Iterator[Any]]:
    """A server-streaming RPC: the action yields the responses."""

    def handle(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        refuse_undecodable(request, context)
        with Call(route, context):
            service = route.new_service(request, context)
            service.initial()
            # Closing this generator (cancellation) closes the database iterator too.
            yield from getattr(service, route.action)(request, context)

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
