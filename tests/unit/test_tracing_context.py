"""A server span's parent: the trace context in the call's metadata, read by the propagator.

With the default propagator (W3C trace context and baggage), metadata without its headers skips
extraction (a cost per call of a client that does not trace); any other propagator is always
asked, since its ``fields`` need not list every header it reads.
"""

from __future__ import annotations

import grpc
import pytest
from opentelemetry import baggage, propagate, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from django_grpc_bus.observability.tracing import Spans, read_fields

PARENT_TRACE = 0x4BF92F3577B34DA6A3CE929D0E0E4736
PARENT = f"00-{PARENT_TRACE:032x}-00f067aa0ba902b7-01"
ATTRIBUTES = {"rpc.system": "grpc", "rpc.service": "catalog.Book", "rpc.method": "Retrieve"}


class CountingExtract:
    """A propagator's extract, counted."""

    def __init__(self, propagator: TextMapPropagator) -> None:
        self.propagator = propagator
        self.calls = 0
        self.original = propagator.extract

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.original(*args, **kwargs)


@pytest.fixture
def exporter():
    return InMemorySpanExporter()


@pytest.fixture
def spans(exporter):
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Spans(provider.get_tracer("test"))


def use_propagator(monkeypatch, propagator: TextMapPropagator) -> CountingExtract:
    counting = CountingExtract(propagator)
    monkeypatch.setattr(propagator, "extract", counting)
    monkeypatch.setattr(propagate, "get_global_textmap", lambda: propagator)
    return counting


def w3c() -> CompositePropagator:
    return CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()])


def one_call(spans, metadata):
    started = spans.start_server("/catalog.Book/Retrieve", ATTRIBUTES, metadata)
    seen = trace.get_current_span().get_span_context(), baggage.get_all()
    spans.end_server(started, grpc.StatusCode.OK)
    return seen


def test_without_trace_headers_the_default_propagator_is_not_asked(spans, exporter, monkeypatch):
    extract = use_propagator(monkeypatch, w3c())
    current, _ = one_call(spans, [("user-agent", "grpc-python")])
    assert extract.calls == 0
    (span,) = exporter.get_finished_spans()
    assert span.parent is None  # a new trace's root
    assert span.context.trace_id == current.trace_id != PARENT_TRACE
    assert span.attributes["rpc.grpc.status_code"] == 0


def test_a_traceparent_makes_the_span_its_child(spans, exporter, monkeypatch):
    extract = use_propagator(monkeypatch, w3c())
    one_call(spans, [("user-agent", "grpc-python"), ("traceparent", PARENT)])
    assert extract.calls == 1
    (span,) = exporter.get_finished_spans()
    assert span.context.trace_id == PARENT_TRACE
    assert span.parent is not None and span.parent.span_id == 0x00F067AA0BA902B7


def test_baggage_alone_is_extracted(spans, monkeypatch):
    extract = use_propagator(monkeypatch, w3c())
    _, carried = one_call(spans, [("baggage", "tenant=acme")])
    assert extract.calls == 1
    assert carried == {"tenant": "acme"}


class HeaderPropagator(TextMapPropagator):
    """Reads a header its `fields` does not list, as B3's multi-header format reads `b3`."""

    def extract(self, carrier, context=None, getter=None):
        value = (carrier or {}).get("x-tenant")
        return baggage.set_baggage("tenant", value, context) if value else (context or {})

    def inject(self, carrier, context=None, setter=None):
        pass

    @property
    def fields(self):
        return set()


def test_any_other_propagator_is_always_asked(spans, monkeypatch):
    extract = use_propagator(monkeypatch, HeaderPropagator())
    _, carried = one_call(spans, [("x-tenant", "acme")])
    assert extract.calls == 1
    assert carried == {"tenant": "acme"}


def test_a_propagator_set_after_the_first_call_is_used(spans, monkeypatch):
    use_propagator(monkeypatch, w3c())
    one_call(spans, [("x-tenant", "acme")])
    extract = use_propagator(monkeypatch, HeaderPropagator())
    _, carried = one_call(spans, [("x-tenant", "acme")])
    assert extract.calls == 1
    assert carried == {"tenant": "acme"}


def test_the_fields_read_are_known_only_for_w3c_propagators():
    assert read_fields(w3c()) == {"traceparent", "tracestate", "baggage"}
    assert read_fields(TraceContextTextMapPropagator()) == {"traceparent", "tracestate"}
    assert read_fields(HeaderPropagator()) is None
    assert read_fields(CompositePropagator([w3c(), HeaderPropagator()])) is None
