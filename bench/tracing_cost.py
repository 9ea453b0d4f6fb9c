"""The cost of a server call's span and metrics: alone, and in a whole retrieve, in one process.

What `make bench`'s tracing rows add to a retrieve, without grpc's network, so that it can be
counted in instructions (valgrind) rather than timed on a shared machine. The tracer is the
bench's (bench/project/benchsite/settings.py): the SDK's TracerProvider with a
BatchSpanProcessor whose exporter drops the spans; metrics are ``--metrics-port``'s
(prometheus-client's instruments, in a registry of their own).

    .venv/bin/python bench/tracing_cost.py --calls 20000     # CPU time per call, a quick look
    .venv/bin/python bench/tracing_cost.py --profile         # cProfile: ours against the SDK's
    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        .venv/bin/python bench/tracing_cost.py --calls 2000  # instructions; run --calls 0 too
                                                             # and subtract, per call

The span alone: CallObserver.start and .finish in a loop, no Django. Options: --sampled 0.1
(ParentBased(TraceIdRatioBased(0.1)), the bench's other row); --traceparent (the call's
metadata carries a W3C parent, as from a traced consumer; the bench's load sends none);
--floor (the SDK alone: the same span started with the same attributes, its status code set
and ended, with no context made current or read, so the rest is ours).

A whole retrieve: --retrieve off|tracing|metrics|both runs the Retrieve handler the server
registers (bench/inprocess.py's, on a scratch copy of the 10,000-row database) with the
server's observer for that configuration; subtract two runs' counts (--calls 1200 and 200, with
PYTHONHASHSEED=0) so that the setup and the warm-up cancel out.

Served, grpc's own work included (docs/performance.md, "Observability's cost"): run
``manage.py rungrpcserver --no-access-log`` in bench/project under valgrind --tool=callgrind
(BENCH_TRACING=1 and --metrics-port 0 as `make bench` does), call Retrieve 1,000 times from a
client outside valgrind, ``callgrind_control --zero <pid>``, 1,000 calls more, then
``callgrind_control --dump <pid>``: the dump's total over 1,000 is the server's per call.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
from collections.abc import Callable
from functools import partial

import grpc
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

METHOD = "/catalog.Book/Retrieve"
PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
RETRIEVE_MODES = ("off", "tracing", "metrics", "both")


class DroppingExporter(SpanExporter):
    def export(self, spans):
        return SpanExportResult.SUCCESS


class Context:
    """What CallObserver reads of a grpc.ServicerContext."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.metadata = metadata

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata

    def details(self) -> str:
        return ""


def calls(observer, context: Context, count: int) -> None:
    start, finish, ok = observer.start, observer.finish, grpc.StatusCode.OK
    for _ in range(count):
        started = start(METHOD, context)
        finish(METHOD, started, ok, 1.0, context)


def sdk_only(tracer: trace.Tracer, count: int) -> None:
    """The floor: what any instrumentation pays the SDK for such a span."""
    attributes = {"rpc.system": "grpc", "rpc.service": "catalog.Book", "rpc.method": "Retrieve"}
    kind = trace.SpanKind.SERVER
    for _ in range(count):
        span = tracer.start_span("catalog.Book/Retrieve", kind=kind, attributes=attributes)
        span.set_attribute("rpc.grpc.status_code", 0)
        span.end()


def set_tracer_provider(ratio: float) -> TracerProvider:
    sampler = {} if ratio >= 1 else {"sampler": ParentBased(TraceIdRatioBased(ratio))}
    provider = TracerProvider(**sampler)
    provider.add_span_processor(BatchSpanProcessor(DroppingExporter()))
    trace.set_tracer_provider(provider)
    return provider


def span_loop(options: argparse.Namespace) -> Callable[[int], None]:
    from django_grpc_bus.observability.call_observer import CallObserver

    observer = CallObserver.for_server()
    assert observer is not None and observer.spans is not None
    if options.floor:
        return partial(sdk_only, observer.spans.tracer)
    metadata = [("user-agent", "grpc-python/1.76.0 grpc-c/51.0.0 (linux; chttp2)")]
    if options.traceparent:
        metadata.append(("traceparent", PARENT))
    return partial(calls, observer, Context(tuple(metadata)))


def retrieve_loop(mode: str, traceparent: bool) -> Callable[[int], None]:
    """N retrieves through the handler a server with `mode`'s observer registers."""
    import inprocess  # Django's settings and the scratch database, as its own runs have them

    inprocess.setup(10_000)
    from django_grpc_bus.observability.call_observer import CallObserver
    from django_grpc_bus.observability.metrics import PrometheusMetrics
    from django_grpc_bus.observability.tracing import Spans, configured_tracer
    from django_grpc_bus.serving.binding import method_handlers, service_descriptor
    from django_grpc_bus.serving.traffic import Traffic
    from prometheus_client import CollectorRegistry

    from generated_grpc.grpc import Book_pb2
    from shop.services import BookService

    tracer = configured_tracer() if mode in ("tracing", "both") else None
    spans = Spans(tracer) if tracer is not None else None
    metrics = PrometheusMetrics(CollectorRegistry()) if mode in ("metrics", "both") else None
    observer = None if spans is None and metrics is None else CallObserver(spans, metrics)
    handlers = method_handlers(
        BookService, service_descriptor(BookService), Traffic(), observer=observer
    )
    retrieve = handlers["Retrieve"].unary_unary

    class Metadata(inprocess.StandInContext):
        def invocation_metadata(self):
            return (("traceparent", PARENT),) if traceparent else ()

        def details(self):
            return ""

    context = Metadata()
    requests = [Book_pb2.BookLookupRequest(id=(i * 7919) % 10_000 + 1) for i in range(1000)]

    def run(count: int) -> None:
        for i in range(count):
            retrieve(requests[i % 1000], context)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--sampled", type=float, default=1.0)
    parser.add_argument("--traceparent", action="store_true")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--floor", action="store_true")
    parser.add_argument("--retrieve", choices=RETRIEVE_MODES)
    parser.add_argument("--top", type=int, default=25)
    options = parser.parse_args()

    provider = set_tracer_provider(options.sampled)
    if options.retrieve:
        run = retrieve_loop(options.retrieve, options.traceparent)
        run(1000)  # warm-up: every row read once (SQLite's page cache), plans, the connection
    else:
        run = span_loop(options)
        run(10)  # warm-up: the per-method attributes, the SDK's first span

    if options.profile:
        profiler = cProfile.Profile()
        profiler.runcall(run, options.calls)
        stats = pstats.Stats(profiler)
        total = sum(entry[1] for entry in stats.stats.values())  # type: ignore[attr-defined]
        print(f"function calls per call: {total / max(options.calls, 1):.0f}")
        stats.sort_stats("tottime").print_stats(options.top)
    else:
        began = time.process_time()
        run(options.calls)
        spent = time.process_time() - began
        if options.calls:
            print(f"{options.calls} calls, {spent / options.calls * 1e6:.1f} µs CPU per call")
    provider.shutdown()
    if options.retrieve:
        import shutil

        import inprocess

        shutil.rmtree(inprocess.SCRATCH, ignore_errors=True)


if __name__ == "__main__":
    main()
