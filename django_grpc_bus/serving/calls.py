"""Run one RPC the way Django runs a request, as far as the database is concerned.

Every call: ``close_old_connections()`` (and, with ``DEBUG``, the query log reset), a fresh
service instance, the action (inside a transaction for writes), errors through the status
table, then ``close_old_connections()`` again (closing connections past ``CONN_MAX_AGE`` or
broken). For a stream, "then" is after the last message, an error or a cancellation. These are
the database receivers of Django's ``request_started``/``request_finished``, called directly:
the signals themselves are not sent (they cost as much again, per call).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
from django.conf import settings
from django.db import close_old_connections, reset_queries, transaction
from google.protobuf.message import DecodeError

from django_grpc_bus.errors import Failure, abort_with, describe_failure
from django_grpc_bus.transactions import write_transaction

logger = logging.getLogger("django_grpc_bus.calls")

OK = grpc.StatusCode.OK


@dataclass(frozen=True)
class Route:
    """One RPC of one service: what to instantiate, which method to call, what it returns."""

    service_class: type
    action: str
    method: str  # the full method name, "/catalog.Book/Retrieve"
    response_class: type
    atomic: bool
    dev: bool = False
    log_calls: bool = False

    def new_service(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self.service_class(
            request=request, context=context, action=self.action, response_class=self.response_class
        )


class Traffic:
    """Calls in flight in this process, and whether new ones are still accepted."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self.active = 0
        self.draining = False
        self.limit: int | None = None  # MAX_CONCURRENT_RPCS, set when a server is built

    def enter(self, context: grpc.ServicerContext) -> None:
        with self._lock:
            if self.draining:
                context.abort(
                    grpc.StatusCode.UNAVAILABLE,
                    "The server is shutting down; retry on another instance.",
                )
            if self.limit is not None and self.active >= self.limit:
                # Refused at once rather than queued; health and reflection are not counted,
                # so a busy server still answers its probes.
                context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"The server is at its limit of {self.limit} concurrent calls; retry later.",
                )
            self.active += 1

    def leave(self) -> None:
        with self._lock:
            self.active -= 1
            if not self.active:
                self._lock.notify_all()

    def drain(self, timeout: float) -> bool:
        """Refuse new calls; wait up to `timeout` s for those in flight. True if all ended."""
        with self._lock:
            self.draining = True
            return self._lock.wait_for(lambda: not self.active, timeout)

    def reopen(self) -> None:
        with self._lock:
            self.draining = False


traffic = Traffic()


class Call:
    """One call as a Django request, used as ``with Call(route, context):`` around its work.

    Entering counts the call in flight (or refuses it while draining) and closes stale
    connections; leaving turns an exception into the call's status through the error table
    (unless the service ended the call itself), closes stale connections again and logs.
    """

    __slots__ = ("code", "context", "route", "started")

    def __init__(self, route: Route, context: grpc.ServicerContext) -> None:
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


class Undecodable:
    """A request whose bytes are not a valid message (kept so the call can say so)."""

    __slots__ = ("problem",)

    def __init__(self, problem: str) -> None:
        self.problem = problem


def lenient_parser(message_class: type) -> Callable[[bytes], Any]:
    """Parse request bytes; on failure return :class:`Undecodable` instead of raising."""
    parse = message_class.FromString
    name = message_class.DESCRIPTOR.full_name

    def parse_request(data: bytes) -> Any:
        try:
            return parse(data)
        except DecodeError as exc:
            return Undecodable(f"The request is not a valid {name} message: {exc}")

    return parse_request


def _refuse_undecodable(request: Any, context: grpc.ServicerContext) -> None:
    if isinstance(request, Undecodable):
        abort_with(context, Failure(grpc.StatusCode.INVALID_ARGUMENT, request.problem))


# How long an atomic client stream's end waits for word that the client cancelled (seconds).
CANCEL_NOTICE = 0.05


def incoming(
    requests: Iterator[Any], context: grpc.ServicerContext, cancel_notice: float = 0.0
) -> Iterator[Any]:
    """A client stream's requests as they arrive, for the action to iterate.

    A message that does not decode ends the call INVALID_ARGUMENT, and a client that went
    away ends it CANCELLED: either way the action's loop raises (rolling its transaction
    back), and the call's status is the one set here. grpc may end a cancelled client's
    stream as if the client had finished, and report the cancellation a moment later from
    its own thread; with `cancel_notice`, the end waits up to that long for such a report.
    """
    ended = threading.Event()
    if cancel_notice and not context.add_callback(ended.set):
        ended.set()  # the call is over already
    while True:
        try:
            request = next(requests)
        except StopIteration:
            if cancel_notice and ended.wait(cancel_notice) and not context.is_active():
                break  # cancelled after all
            return
        except grpc.RpcError:  # grpc's request iterator: the client cancelled
            break
        _refuse_undecodable(request, context)
        yield request
    context.abort(grpc.StatusCode.CANCELLED, "The client cancelled the call.")


def unimplemented_behavior(route: Route) -> Callable[[Any, grpc.ServicerContext], Any]:
    def handle(request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(
            grpc.StatusCode.UNIMPLEMENTED,
            f"{route.method} is not offered by {route.service_class.__name__}.",
        )

    return handle


def unary_behavior(route: Route) -> Callable[[Any, grpc.ServicerContext], Any]:
    def handle(request: Any, context: grpc.ServicerContext) -> Any:
        _refuse_undecodable(request, context)
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
    def handle(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        _refuse_undecodable(request, context)
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
