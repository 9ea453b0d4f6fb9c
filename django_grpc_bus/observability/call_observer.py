"""What one server records of its calls: a span for each (with a tracer), metrics (with a meter).

``build_server`` makes a :class:`CallObserver` once, or none when there is nothing to record
(no ``otel`` extra, no tracer or meter provider, no ``--metrics-port``); each call's ``Call``
(``serving.calls``) reports to it on entry and on exit, where the status the call really ended
with is known: the error table's, an ``abort()``'s, a cancellation's, a refusal's.
"""

from __future__ import annotations

from typing import Any

import grpc

from django_grpc_bus.observability.metrics import (
    MetricsEndpoint,
    OpenTelemetryMetrics,
    ServerMetrics,
    configured_meter,
)
from django_grpc_bus.observability.tracing import (
    SERVER_ERRORS,
    ServerSpan,
    Spans,
    configured_tracer,
    rpc_attributes,
)


class CallObserver:
    """Spans and metrics of one server's calls (either may be absent)."""

    def __init__(
        self,
        spans: Spans | None,
        metrics: ServerMetrics | None,
        endpoint: MetricsEndpoint | None = None,
    ) -> None:
        self.spans = spans
        self.metrics = metrics
        self.endpoint = endpoint
        self._attributes: dict[str, dict[str, Any]] = {}

    @classmethod
    def for_server(cls, metrics_address: tuple[str, int] | None = None) -> CallObserver | None:
        """The observer a new server needs, or None when it has nothing to record.

        With `metrics_address` (``--metrics-port``), metrics go to a ``/metrics`` endpoint of the
        server's own there (:class:`MetricsEndpoint`, MetricsError when it cannot start);
        otherwise to the global OpenTelemetry meter provider when one is configured.
        """
        tracer = configured_tracer()
        metrics: ServerMetrics | None = None
        endpoint = None
        if metrics_address is not None:
            endpoint = MetricsEndpoint(*metrics_address)
            metrics = endpoint.metrics()
        else:
            meter = configured_meter()
            metrics = OpenTelemetryMetrics(meter) if meter is not None else None
        if tracer is None and metrics is None:
            return None
        return cls(Spans(tracer) if tracer is not None else None, metrics, endpoint)

    def attributes(self, method: str) -> dict[str, Any]:
        found = self._attributes.get(method)
        if found is None:
            found = self._attributes[method] = rpc_attributes(method)
        return found

    def start(self, method: str, context: grpc.ServicerContext) -> ServerSpan | None:
        """A call begins: counted in flight; its span started, when there are spans."""
        attributes = self._attributes.get(method) or self.attributes(method)
        if self.metrics is not None:
            self.metrics.started(method, attributes)
        if self.spans is None:
            return None
        return self.spans.start_server(method, attributes, context.invocation_metadata())

    def finish(
        self,
        method: str,
        started: ServerSpan | None,
        code: grpc.StatusCode,
        elapsed_ms: float,
        context: grpc.ServicerContext,
        exc: BaseException | None = None,
    ) -> None:
        """The call ended with `code`: its duration recorded, its span ended."""
        if self.metrics is not None:
            self.metrics.ended(method, code, elapsed_ms)
        if started is not None and self.spans is not None:
            # ServicerContext.details() (grpcio 1.38+) postdates grpc-stubs.
            details = (
                context.details()  # type: ignore[attr-defined]
                if code in SERVER_ERRORS
                else None
            )
            self.spans.end_server(started, code, details, exc)

    def close(self) -> None:
        """Stop the metrics endpoint, if this observer has one."""
        if self.endpoint is not None:
            self.endpoint.close()
            self.endpoint = None
