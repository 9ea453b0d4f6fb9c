"""The cost of a server call's span, alone: CallObserver.start and .finish in a loop.

What `make bench`'s tracing rows add to a retrieve, without grpc, Django or the database, so that
it can be counted in instructions (valgrind) rather than timed on a shared machine. The tracer is
the bench's (bench/project/benchsite/settings.py): the SDK's TracerProvider with a
BatchSpanProcessor whose exporter drops the spans.

    .venv/bin/python bench/tracing_cost.py --calls 20000     # CPU time per call, a quick look
    .venv/bin/python bench/tracing_cost.py --profile         # cProfile: ours against the SDK's
    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        .venv/bin/python bench/tracing_cost.py --calls 2000  # instructions; run --calls 0 too
                                                             # and subtract, per call

Options: --sampled 0.1 (ParentBased(TraceIdRatioBased(0.1)), the bench's other row);
--traceparent (the call's metadata carries a W3C parent, as from a traced consumer; the bench's
load sends none); --floor (the SDK alone: the same span started with the same attributes, its
status code set and ended, with no context made current or read, so the rest is ours).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
from functools import partial

import grpc
from django_grpc_bus.observability.call_observer import CallObserver
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

METHOD = "/catalog.Book/Retrieve"
PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


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


def calls(observer: CallObserver, context: Context, count: int) -> None:
    start, finish, ok = observer.start, observer.finish, grpc.StatusCode.OK
    for _ in range(count):
        started = start(METHOD, context)  # type: ignore[arg-type]
        finish(METHOD, started, ok, 1.0, context)  # type: ignore[arg-type]


def sdk_only(tracer: trace.Tracer, count: int) -> None:
    """The floor: what any instrumentation pays the SDK for such a span."""
    attributes = {"rpc.system": "grpc", "rpc.service": "catalog.Book", "rpc.method": "Retrieve"}
    kind = trace.SpanKind.SERVER
    for _ in range(count):
        span = tracer.start_span("catalog.Book/Retrieve", kind=kind, attributes=attributes)
        span.set_attribute("rpc.grpc.status_code", 0)
        span.end()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--sampled", type=float, default=1.0)
    parser.add_argument("--traceparent", action="store_true")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--floor", action="store_true")
    options = parser.parse_args()

    ratio = options.sampled
    sampler = {} if ratio >= 1 else {"sampler": ParentBased(TraceIdRatioBased(ratio))}
    provider = TracerProvider(**sampler)
    provider.add_span_processor(BatchSpanProcessor(DroppingExporter()))
    trace.set_tracer_provider(provider)
    observer = CallObserver.for_server()
    assert observer is not None and observer.spans is not None
    metadata = [("user-agent", "grpc-python/1.76.0 grpc-c/51.0.0 (linux; chttp2)")]
    if options.traceparent:
        metadata.append(("traceparent", PARENT))
    context = Context(tuple(metadata))
    if options.floor:
        run = partial(sdk_only, observer.spans.tracer)
    else:
        run = partial(calls, observer, context)
    run(10)  # warm-up: the per-method attributes, the SDK's first span

    if options.profile:
        profiler = cProfile.Profile()
        profiler.runcall(run, options.calls)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    else:
        began = time.process_time()
        run(options.calls)
        spent = time.process_time() - began
        if options.calls:
            print(f"{options.calls} calls, {spent / options.calls * 1e6:.1f} µs CPU per call")
    provider.shutdown()


if __name__ == "__main__":
    main()
