"""The client's interceptors: the configured ones, then its own tracing (when there is a tracer).

``MESSAGE_BUS["CLIENT_INTERCEPTORS"]`` (every servlet) and a servlet's ``"interceptors"`` are
lists of interceptors, classes (instantiated without arguments) or dotted paths to either.
A synchronous channel (``registry``) takes the ``grpc.*ClientInterceptor`` among them, an
asyncio one (``aregistry``) the ``grpc.aio.*ClientInterceptor``: an object may be both. The
global ones come first (outermost), then the servlet's; the tracing interceptor is last, next
to the wire, so its span covers one attempt and its ``traceparent`` is in the metadata sent
whatever the others did to it.

Tracing: a client span per call (``rpc.*`` attributes, ``rpc.grpc.status_code``, an error for
every status but OK), ended when the call ends (a stream's when the stream does), and the W3C
trace context of that span in the call's metadata, so the server's span is its child.
"""

from __future__ import annotations

import asyncio
from collections import namedtuple
from collections.abc import Callable, Iterable
from typing import Any

import grpc
import grpc.aio
from django.utils.module_loading import import_string

from django_grpc_bus.conf import bus_settings
from django_grpc_bus.observability.tracing import Spans, configured_tracer, rpc_attributes

SYNC_KINDS = (
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
)
AIO_KINDS = (grpc.aio.ClientInterceptor,)
KINDS = (*SYNC_KINDS, *AIO_KINDS)


def interceptor_problem(item: Any) -> str | None:
    """Why `item` (a setting's list item) is not a client interceptor; None when it is one."""
    if isinstance(item, str):
        try:
            item = import_string(item)
        except ImportError as exc:
            return f"{item!r} cannot be imported: {exc}"
    if isinstance(item, type) and issubclass(item, KINDS):
        return None
    if isinstance(item, KINDS):
        return None
    return (
        f"{item!r} is not a client interceptor (a grpc.UnaryUnaryClientInterceptor, ... or "
        "grpc.aio.UnaryUnaryClientInterceptor, ..., a class of one, or a dotted path to either)"
    )


def load(items: Iterable[Any]) -> list[Any]:
    """The interceptors of a setting: dotted paths imported, classes instantiated."""
    loaded = []
    for item in items:
        if isinstance(item, str):
            item = import_string(item)
        loaded.append(item() if isinstance(item, type) else item)
    return loaded


def channel_interceptors(
    servlet_items: Iterable[Any] = (),
    *,
    aio: bool = False,
    attributes: dict[str, Any] | None = None,
) -> list[Any]:
    """The interceptors of a new channel: global, the servlet's, then tracing.

    `attributes` go on every client span (the server's address).
    """
    kinds = AIO_KINDS if aio else SYNC_KINDS
    configured = load([*bus_settings.CLIENT_INTERCEPTORS, *servlet_items])
    interceptors: list[Any] = [item for item in configured if isinstance(item, kinds)]
    tracer = configured_tracer()
    if tracer is not None:
        tracing = AsyncTracingInterceptor if aio else TracingInterceptor
        interceptors.append(tracing(Spans(tracer), attributes or {}))
    return interceptors


class _CallDetails(
    namedtuple(  # as grpc's own call details
        "_CallDetails",
        ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
    ),
    grpc.ClientCallDetails,
):
    pass


class _Tracing:
    def __init__(self, spans: Spans, attributes: dict[str, Any]) -> None:
        self.spans = spans
        self.extra = attributes
        self._attributes: dict[str, dict[str, Any]] = {}

    def start(self, details: Any) -> tuple[Any, Any]:
        """The call's span, and its details with the trace context added to the metadata."""
        method = details.method
        if isinstance(method, bytes):
            method = method.decode()
        attributes = self._attributes.get(method)
        if attributes is None:
            attributes = self._attributes[method] = {**rpc_attributes(method), **self.extra}
        span = self.spans.start_client(method, attributes)
        metadata = self.spans.metadata_with_context(span, details.metadata)
        return span, _CallDetails(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def failed(self, span: Any, exc: BaseException) -> None:
        """The call could not start (raised before grpc returned a call)."""
        code = exc.code() if isinstance(exc, grpc.RpcError) else grpc.StatusCode.UNKNOWN
        if isinstance(exc, asyncio.CancelledError):
            code = grpc.StatusCode.CANCELLED
        self.spans.end_client(span, code, str(exc), exc)


class TracingInterceptor(
    _Tracing,
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Client spans and trace context for a synchronous channel, the four kinds of RPC."""

    def _intercept(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        span, details = self.start(details)
        try:
            outcome = continuation(details, request)
        except BaseException as exc:
            self.failed(span, exc)
            raise
        # A unary call's outcome is complete (the callback runs at once); a stream's when the
        # last message came, it failed, or it was cancelled.
        outcome.add_done_callback(lambda call: self._done(span, call))
        return outcome

    def _done(self, span: Any, call: Any) -> None:
        code = call.code() or grpc.StatusCode.UNKNOWN
        details = call.details() if code is not grpc.StatusCode.OK else None
        self.spans.end_client(span, code, details)

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return self._intercept(continuation, details, request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return self._intercept(continuation, details, request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return self._intercept(continuation, details, requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return self._intercept(continuation, details, requests)


class AsyncTracingInterceptor(
    _Tracing,
    grpc.aio.UnaryUnaryClientInterceptor,
    grpc.aio.UnaryStreamClientInterceptor,
    grpc.aio.StreamUnaryClientInterceptor,
    grpc.aio.StreamStreamClientInterceptor,
):
    """Client spans and trace context for a ``grpc.aio`` channel, the four kinds of RPC."""

    def __init__(self, spans: Spans, attributes: dict[str, Any]) -> None:
        super().__init__(spans, attributes)
        self._ending: set[asyncio.Future[None]] = set()

    async def _intercept(self, continuation: Any, details: Any, request: Any) -> Any:
        span, details = self.start(details)
        try:
            call = await continuation(details, request)
        except BaseException as exc:
            self.failed(span, exc)
            raise

        def done(finished: Any) -> None:
            # The status is read with await; the call is over, so this does not wait.
            ending = asyncio.ensure_future(self._done(span, finished))
            self._ending.add(ending)
            ending.add_done_callback(self._ending.discard)

        call.add_done_callback(done)
        return call

    async def _done(self, span: Any, call: Any) -> None:
        code = await call.code()
        details = await call.details() if code is not grpc.StatusCode.OK else None
        self.spans.end_client(span, code, details)

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await self._intercept(continuation, details, request)

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await self._intercept(continuation, details, request)

    async def intercept_stream_unary(
        self, continuation: Any, details: Any, request_iterator: Any
    ) -> Any:
        return await self._intercept(continuation, details, request_iterator)

    async def intercept_stream_stream(
        self, continuation: Any, details: Any, request_iterator: Any
    ) -> Any:
        return await self._intercept(continuation, details, request_iterator)
