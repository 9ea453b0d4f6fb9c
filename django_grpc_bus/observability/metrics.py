"""Server metrics, and the Prometheus ``/metrics`` endpoint of ``rungrpcserver --metrics-port``.

Two instruments, after OpenTelemetry's conventions for RPC, by ``rpc.system``, ``rpc.service``
and ``rpc.method``:

- ``rpc.server.duration``, a histogram in milliseconds, also by ``rpc.grpc.status_code``: its
  count is the calls by status. In Prometheus, ``rpc_server_duration_milliseconds_{bucket,
  count,sum}`` with the labels ``rpc_system``, ``rpc_service``, ``rpc_method``,
  ``rpc_grpc_status_code``;
- ``rpc.server.active_requests``, the calls in flight: ``rpc_server_active_requests``.

Two ways to record them, one per server:

- ``--metrics-port`` (:class:`MetricsEndpoint`, :class:`PrometheusMetrics`): prometheus-client's
  own histogram and gauge in a registry of the server's own, served over HTTP. Not through
  OpenTelemetry's SDK and its Prometheus reader, which cost several times as much per call
  (bench/README.md, "Observability") for the same series;
- otherwise, when the project configured a global OpenTelemetry meter provider (an OTLP
  exporter, say): OpenTelemetry instruments on it (:class:`OpenTelemetryMetrics`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol

import grpc

from django_grpc_bus import __version__

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, Meter, Observation
    from prometheus_client import CollectorRegistry

INSTRUMENTATION = "django_grpc_bus"
DURATION = "rpc.server.duration"
ACTIVE = "rpc.server.active_requests"
DURATION_HELP = "Duration of the server's calls, by method and status."
ACTIVE_HELP = "Calls in flight, by method."
# Milliseconds; OpenTelemetry's default buckets start at 5 ms, where a Retrieve is under 1.
BUCKETS_MS = (0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
EXTRA = "pip install 'django-grpc-bus[otel]'"


class MetricsError(Exception):
    """The metrics endpoint cannot start: the extra is missing, or the port is taken."""


class ServerMetrics(Protocol):
    """What a server's observer records per call."""

    def started(self, method: str, attributes: dict[str, Any]) -> None: ...

    def ended(self, method: str, code: grpc.StatusCode, elapsed_ms: float) -> None: ...


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


class PrometheusMetrics:
    """The instruments in a prometheus-client registry; label children kept per method/status."""

    def __init__(self, registry: CollectorRegistry) -> None:
        from prometheus_client import Gauge, Histogram

        labels = ("rpc_system", "rpc_service", "rpc_method")
        self.duration = Histogram(
            "rpc_server_duration_milliseconds",
            DURATION_HELP,
            (*labels, "rpc_grpc_status_code"),
            buckets=BUCKETS_MS,
            registry=registry,
        )
        self.active = Gauge("rpc_server_active_requests", ACTIVE_HELP, labels, registry=registry)
        self._labels: dict[str, tuple[str, str, str]] = {}
        self._active: dict[str, Any] = {}
        # Keyed by the code's number: a StatusCode's own __hash__ is Enum's, in Python.
        self._durations: dict[tuple[str, int], Any] = {}

    def started(self, method: str, attributes: dict[str, Any]) -> None:
        child = self._active.get(method)
        if child is None:
            labels = (attributes["rpc.system"], attributes["rpc.service"], attributes["rpc.method"])
            self._labels[method] = labels
            child = self._active[method] = self.active.labels(*labels)
        child.inc()

    def ended(self, method: str, code: grpc.StatusCode, elapsed_ms: float) -> None:
        self._active[method].dec()
        key = (method, code._value_[0])  # _value_: `value` is a Python-level property
        child = self._durations.get(key)
        if child is None:
            child = self._durations[key] = self.duration.labels(*self._labels[method], str(key[1]))
        child.observe(elapsed_ms)


class OpenTelemetryMetrics:
    """The instruments on an OpenTelemetry meter; attributes built once per method and status."""

    def __init__(self, meter: Meter) -> None:
        self.duration = meter.create_histogram(
            DURATION,
            unit="ms",
            description=DURATION_HELP,
            explicit_bucket_boundaries_advisory=list(BUCKETS_MS),
        )
        meter.create_observable_up_down_counter(
            ACTIVE, callbacks=[self._observe_active], unit="{call}", description=ACTIVE_HELP
        )
        self._lock = threading.Lock()
        self._active: dict[str, int] = {}
        self._method_attributes: dict[str, dict[str, Any]] = {}
        self._attributes: dict[tuple[str, int], dict[str, Any]] = {}  # by the code's number

    def started(self, method: str, attributes: dict[str, Any]) -> None:
        with self._lock:
            self._active[method] = self._active.get(method, 0) + 1
            self._method_attributes.setdefault(method, attributes)

    def ended(self, method: str, code: grpc.StatusCode, elapsed_ms: float) -> None:
        with self._lock:
            self._active[method] -= 1
        key = (method, code._value_[0])
        attributes = self._attributes.get(key)
        if attributes is None:
            attributes = self._attributes[key] = {
                **self._method_attributes[method],
                "rpc.grpc.status_code": key[1],
            }
        self.duration.record(elapsed_ms, attributes)

    def _observe_active(self, options: CallbackOptions) -> Iterable[Observation]:
        from opentelemetry.metrics import Observation

        with self._lock:
            active = list(self._active.items())
        return [Observation(count, self._method_attributes[method]) for method, count in active]


class MetricsEndpoint:
    """``http://host:port/metrics``: a prometheus-client registry of its own, served over HTTP.

    Its own registry (with the process collector: CPU, memory, open files), so two servers in
    one process never mix their series. ``port`` 0 picks a free port; ``.port`` is the one bound.
    """

    def __init__(self, host: str, port: int) -> None:
        try:
            from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
        except ImportError as exc:
            raise MetricsError(f"Metrics need the otel extra ({EXTRA}): {exc}.") from None
        self.host = host.strip("[]") or "::"
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        try:
            self._httpd, self._thread = start_http_server(
                port, addr=self.host, registry=self.registry
            )
        except OSError as exc:
            raise MetricsError(
                f"Cannot serve metrics on {host}:{port} ({exc}): choose another port with "
                "--metrics-port."
            ) from None
        self.port: int = self._httpd.server_port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def metrics(self) -> PrometheusMetrics:
        return PrometheusMetrics(self.registry)

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
