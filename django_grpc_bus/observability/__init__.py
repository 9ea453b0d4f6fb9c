"""What a server and a client tell about their calls: access log, traces and metrics (SPEC §12).

- ``access_log``: one line per call on the ``django_grpc_bus.access`` logger, at INFO;
- ``tracing``: spans through the OpenTelemetry API (the ``otel`` extra) and W3C trace context in
  call metadata; neutral (no DRF, no serving module), so the client uses it too;
- ``metrics``: calls, latency and calls in flight: prometheus-client's instruments on the
  ``/metrics`` endpoint of ``rungrpcserver --metrics-port``, or OpenTelemetry's on a configured
  meter provider;
- ``call_observer``: the per-server ``CallObserver`` that ``serving.calls`` reports each call to;
- ``channel_interceptors``: the client's interceptors, configured and its own tracing.

Everything optional is decided once, when a server is built or a channel opened: without the
extra, or with no tracer or meter provider configured, a call pays one check for it.
"""
