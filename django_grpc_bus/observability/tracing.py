"""Spans for calls through the OpenTelemetry API, and W3C trace context in call metadata.

Neutral: it imports neither DRF nor a serving module, so the client uses it too; OpenTelemetry
itself is imported only by :func:`configured_tracer` and :class:`Spans`, when a server is built
or a channel opened. Attributes and statuses follow OpenTelemetry's conventions for gRPC:
``rpc.system`` ``grpc``, ``rpc.service``, ``rpc.method`` and ``rpc.grpc.status_code`` (the
number of the status the call ended with); a span is named ``catalog.Book/Retrieve``. A client
span is an error for every status but OK; a server span only for the statuses that are the
server's fault (:data:`SERVER_ERRORS`), since NOT_FOUND or INVALID_ARGUMENT is the caller's.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import grpc

from django_grpc_bus import __version__

if TYPE_CHECKING:
    from contextvars import Token

    from opentelemetry.context import Context
    from opentelemetry.trace import Span, Tracer

INSTRUMENTATION = "django_grpc_bus"
Code = grpc.StatusCode
OK = Code.OK
# A server span is an error for these only (OpenTelemetry's semantic conventions for gRPC).
# A tuple: `in` compares identities in C, where a set would call StatusCode's __hash__ (Python).
SERVER_ERRORS = (
    Code.UNKNOWN,
    Code.DEADLINE_EXCEEDED,
    Code.UNIMPLEMENTED,
    Code.INTERNAL,
    Code.UNAVAILABLE,
    Code.DATA_LOSS,
)


def configured_tracer() -> Tracer | None:
    """The package's tracer, or None without the ``otel`` extra or a tracer provider.

    The provider is the global one (``opentelemetry.trace.set_tracer_provider``, or what
    ``opentelemetry-instrument`` configures); until one is set OpenTelemetry hands out a proxy,
    which counts as none: configure it before the server is built or the channel opened.
    """
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    provider = trace.get_tracer_provider()
    if isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
        return None
    tracer = provider.get_tracer(INSTRUMENTATION, __version__)
    if isinstance(tracer, trace.NoOpTracer):  # e.g. OTEL_SDK_DISABLED=true
        return None
    return tracer


def rpc_names(full_method: str) -> tuple[str, str]:
    """``"/catalog.Book/Retrieve"`` -> ``("catalog.Book", "Retrieve")``."""
    service, _, method = full_method.lstrip("/").rpartition("/")
    return service, method


def rpc_attributes(full_method: str) -> dict[str, str]:
    service, method = rpc_names(full_method)
    return {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}


def text(details: Any) -> str:
    """A status' details as text (a server context keeps them as bytes)."""
    if isinstance(details, bytes):
        return details.decode("utf-8", "replace")
    return details or ""


def read_fields(textmap: Any) -> frozenset[str] | None:
    """The metadata keys `textmap` reads, when it is W3C's trace context and baggage (the default).

    None for any other propagator: its ``fields`` need not list every header its ``extract``
    reads (B3's multi-header format reads ``b3`` too), so it is always asked.
    """
    from opentelemetry.baggage.propagation import W3CBaggagePropagator
    from opentelemetry.propagators.composite import CompositePropagator
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    if type(textmap) is CompositePropagator:
        parts = getattr(textmap, "_propagators", None)  # not public: if it goes, always extract
    else:
        parts = [textmap]
    if parts is None:
        return None
    for part in parts:
        if type(part) not in (TraceContextTextMapPropagator, W3CBaggagePropagator):
            return None
    return frozenset(textmap.fields)


class Spans:
    """Starting and ending the spans of calls on one tracer (OpenTelemetry imported once)."""

    def __init__(self, tracer: Tracer) -> None:
        from opentelemetry import context, propagate, trace
        from opentelemetry.trace import SpanKind, Status, StatusCode

        self.tracer = tracer
        self._context = context
        self._propagate = propagate
        self._set_span_in_context = trace.set_span_in_context
        self._server_kind = SpanKind.SERVER
        self._client_kind = SpanKind.CLIENT
        self._status = Status
        self._error = StatusCode.ERROR
        # What extracting from metadata without trace headers gives: a new trace's context.
        self._no_parent = context.Context()
        # The global propagator and the keys it reads (read_fields), swapped as one.
        self._propagator: tuple[Any, frozenset[str] | None] = (None, None)

    # -- server ------------------------------------------------------------------------------

    def start_server(
        self, full_method: str, attributes: dict[str, Any], metadata: Iterable[Any] | None
    ) -> ServerSpan:
        """A server span, child of the trace context in the call's metadata, made current."""
        parent = self.parent_context(metadata)
        span = self.tracer.start_span(
            full_method.lstrip("/"), context=parent, kind=self._server_kind, attributes=attributes
        )
        token = self._context.attach(self._set_span_in_context(span, parent))
        return ServerSpan(span, token)

    def parent_context(self, metadata: Iterable[Any] | None) -> Context:
        """The trace context the call's metadata carries (W3C ``traceparent``, ``baggage``, ...).

        With the default propagator, metadata without its headers (a client that does not
        trace) skips extraction: the result would be an empty context all the same.
        """
        textmap = self._propagate.get_global_textmap()
        known, fields = self._propagator
        if textmap is not known:  # the first call, or a propagator set since
            fields = read_fields(textmap)
            self._propagator = (textmap, fields)
        if fields is not None:
            # A loop rather than a carrier dict first: most calls carry no trace headers.
            for item in metadata or ():
                if item[0] in fields:
                    break
            else:
                return self._no_parent
        return textmap.extract({item[0]: item[1] for item in metadata or ()})

    def end_server(
        self,
        started: ServerSpan,
        code: grpc.StatusCode,
        details: Any = None,
        exc: BaseException | None = None,
    ) -> None:
        if started.thread == threading.get_ident():
            self._context.detach(started.token)
        # else: a stream closed from another thread; the context was its own thread's
        self.end(started.span, code, details, exc, error=code in SERVER_ERRORS)

    # -- client ------------------------------------------------------------------------------

    def start_client(self, full_method: str, attributes: dict[str, Any]) -> Span:
        """A client span, child of the current span (a server call's, a Django view's, ...)."""
        return self.tracer.start_span(
            full_method.lstrip("/"), kind=self._client_kind, attributes=attributes
        )

    def metadata_with_context(self, span: Span, metadata: Any) -> list[tuple[str, Any]]:
        """`metadata` plus the W3C headers (``traceparent``, ...) naming `span` as the parent."""
        carrier: dict[str, str] = {}
        self._propagate.inject(carrier, context=self._set_span_in_context(span))
        kept = [(key, value) for key, value in metadata or () if key not in carrier]
        return [*kept, *carrier.items()]

    def end_client(
        self,
        span: Span,
        code: grpc.StatusCode,
        details: Any = None,
        exc: BaseException | None = None,
    ) -> None:
        self.end(span, code, details, exc, error=code is not OK)

    # -- either ------------------------------------------------------------------------------

    def end(
        self,
        span: Span,
        code: grpc.StatusCode,
        details: Any,
        exc: BaseException | None,
        *,
        error: bool,
    ) -> None:
        if span.is_recording():
            # _value_ is the member's value (int, name): `value` is a Python-level property.
            span.set_attribute("rpc.grpc.status_code", code._value_[0])
            if error:
                if exc is not None:
                    span.record_exception(exc)
                described = text(details)
                span.set_status(
                    self._status(
                        self._error, f"{code.name}: {described}" if described else code.name
                    )
                )
        span.end()


class ServerSpan:
    """A started server span, and how to restore the context it replaced."""

    __slots__ = ("span", "thread", "token")

    def __init__(self, span: Span, token: Token[Context]) -> None:
        self.span = span
        self.token = token
        self.thread = threading.get_ident()

    @property
    def trace_id(self) -> str | None:
        context = self.span.get_span_context()
        return format(context.trace_id, "032x") if context.is_valid else None
