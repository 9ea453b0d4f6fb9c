"""Server metrics through OpenTelemetry, and the Prometheus ``/metrics`` endpoint.

Two instruments, after OpenTelemetry's conventions for RPC:

- ``rpc.server.duration``, a histogram in milliseconds by ``rpc.system``, ``rpc.service``,
  ``rpc.method`` and ``rpc.grpc.status_code``: its count is the calls by status. Prometheus
  shows it as ``rpc_server_duration_milliseconds_{bucket,count,sum}``;
- ``rpc.server.active_requests``, the calls in flight by service and method, read when the
  metrics are collected (nothing is recorded per call for it but a counter under a lock).

They go to the meter provider of ``rungrpcserver --metrics-port`` (:class:`MetricsEndpoint`: a
provider of the server's own, read by OpenTelemetry's Prometheus reader and served over HTTP),
or else to the global one when the project configured it (an OTLP exporter, say).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import grpc

from django_grpc_bus import __version__

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, Meter, Observation

INSTRUMENTATION = "django_grpc_bus"
DURATION = "rpc.server.duration"
ACTIVE = "rpc.server.active_requests"
# Milliseconds; the SDK's default buckets start at 5 ms, where a Retrieve is under 1.
BUCKETS_MS = (0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
EXTRA = "pip install 'django-grpc-bus[otel]'"


class MetricsError(Exception):
    """The metrics endpoint cannot start: the extra is missing, or the port is taken."""


def configured_meter() -> Meter | None:
    """A meter of the global provider when the project configured one (else None)."""
    try:
        from opentelemetry import metrics
    except ImportError:
        return None
    provider = metrics.get_meter_provider()
    if type(provider).__module__.startswith("opentelemetry.metrics"):
        return None  # the API's own proxy (nothing set yet) or no-op provider
    return provider.get_meter(INSTRUMENTATION, __version__)


class ServerMetrics:
    """One server's instruments; attributes are built once per method and status."""

    def __init__(self, meter: Meter) -> None:
        self.duration = meter.create_histogram(
            DURATION,
            unit="ms",
            description="Duration of the server's calls, by method and status.",
            explicit_bucket_boundaries_advisory=list(BUCKETS_MS),
        )
        meter.create_observable_up_down_counter(
            ACTIVE,
            callbacks=[self._observe_active],
            unit="{call}",
            description="Calls in flight, by method.",
        )
        self._lock = threading.Lock()
        self._active: dict[str, int] = {}
        self._method_attributes: dict[str, dict[str, Any]] = {}
        self._attributes: dict[tuple[str, grpc.StatusCode], dict[str, Any]] = {}

    def started(self, method: str, attributes: dict[str, Any]) -> None:
        with self._lock:
            self._active[method] = self._active.get(method, 0) + 1
            self._method_attributes.setdefault(method, attributes)

    def ended(self, method: str, code: grpc.StatusCode, elapsed_ms: float) -> None:
        with self._lock:
            self._active[method] -= 1
        attributes = self._attributes.get((method, code))
        if attributes is None:
            attributes = self._attributes[(method, code)] = {
                **self._method_attributes[method],
                "rpc.grpc.status_code": code.value[0],
            }
        self.duration.record(elapsed_ms, attributes)

    def _observe_active(self, options: CallbackOptions) -> Iterable[Observation]:
        from opentelemetry.metrics import Observation

        with self._lock:
            active = list(self._active.items())
        return [Observation(count, self._method_attributes[method]) for method, count in active]


class MetricsEndpoint:
    """``http://host:port/metrics``: a meter provider of its own, read by Prometheus.

    The registry is the endpoint's own (the process collector adds CPU, memory and open files),
    so two servers in one process never mix their series. ``port`` 0 picks a free port;
    ``.port`` is the one bound.
    """

    def __init__(self, host: str, port: int) -> None:
        try:
            from opentelemetry.exporter.prometheus import PrometheusMetricReader
            from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
            from opentelemetry.sdk.resources import Resource
            from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
        except ImportError as exc:
            raise MetricsError(f"Metrics need the otel extra ({EXTRA}): {exc}.") from None
        self.host = host.strip("[]") or "::"
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        reader = PrometheusMetricReader(registry=self.registry)
        # No exemplars: the text format does not carry them, and sampling one per call (the
        # default, while a span is current) costs as much again as recording.
        self.provider = MeterProvider(
            metric_readers=[reader],
            resource=Resource.create(),
            exemplar_filter=AlwaysOffExemplarFilter(),
        )
        try:
            self._httpd, self._thread = start_http_server(
                port, addr=self.host, registry=self.registry
            )
        except OSError as exc:
            self.provider.shutdown()
            raise MetricsError(
                f"Cannot serve metrics on {host}:{port} ({exc}): choose another port with "
                "--metrics-port."
            ) from None
        self.port: int = self._httpd.server_port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def meter(self) -> Meter:
        return self.provider.get_meter(INSTRUMENTATION, __version__)

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self.provider.shutdown()
