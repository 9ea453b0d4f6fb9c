"""The load generator: one measurement per run, printed as one JSON line on stdout.

``run.py`` starts it with ``taskset -c 1`` (the server has core 0). Modes:

``closed-loop``  N asyncio tasks call Retrieve or Create back to back for a fixed time after a
                 warm-up, through the generated stub (the same for both servers): calls/s,
                 p50/p99 latency of the calls that succeeded, the failed calls (warm-up
                 included) with the first one's status and text, and the server's CPU per
                 call from ``/proc/<pid>/stat``.
``list``         the first ROWS rows as a list of dicts, timed per call: through the registry
                 (django-grpc-bus's streaming List) or the hand-written unary ListAll with a
                 field-by-field dict conversion; with ``--price-lt``, the rows below that price,
                 cheapest first, instead (the registry's List with ``filter`` and ``order_by``,
                 the hand-written ListCheaper).
``first-row``    the registry's List on a large table: time to the first row (several samples,
                 each abandoning the stream), then optionally the whole stream (with
                 ``--price-lt``, the filtered one).
``client-cpu``   CPU time of this process per Retrieve: registry call vs generated stub.
``verify``       both servers answer the same bytes for Retrieve, the same dicts for a list.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import statistics
import sys
import time
from pathlib import Path

import grpc

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE / "project"), str(HERE / "handwritten")]

import bench_pb2  # noqa: E402
import bench_pb2_grpc  # noqa: E402
from generated_grpc.grpc import Book_pb2, Book_pb2_grpc  # noqa: E402

UTC = dt.timezone.utc
TICKS = os.sysconf("SC_CLK_TCK")
SEED_ROWS = 10_000  # ids 1..SEED_ROWS exist in the small database
TIMEOUT = 10.0  # the registry's default deadline; the stub calls get the same one


# -- requests and conversions ---------------------------------------------------------------------


def lookup_requests(count: int = 1000) -> list:
    """Ids spread over the whole table, in a fixed order."""
    return [Book_pb2.BookLookupRequest(id=(i * 7919) % SEED_ROWS + 1) for i in range(count)]


def create_requests(count: int = 1000) -> list:
    requests = []
    for i in range(count):
        request = Book_pb2.BookData(
            title=f"New book {i}",
            pages=100 + i % 500,
            price=f"{i % 90 + 10}.{i % 100:02d}",
            published=(dt.date(2021, 1, 1) + dt.timedelta(days=i)).isoformat(),
            in_print=bool(i % 2),
            rating=3.5,
        )
        request.added.FromDatetime(dt.datetime(2024, 5, 1, tzinfo=UTC) + dt.timedelta(minutes=i))
        requests.append(request)
    return requests


def row_to_dict(row) -> dict:
    """What a hand-written client does with a BookData: field by field, same Python values."""
    return {
        "id": row.id,
        "title": row.title,
        "pages": row.pages,
        "price": row.price,
        "published": row.published,
        "added": row.added.ToDatetime(tzinfo=UTC),
        "in_print": row.in_print,
        "rating": row.rating,
    }


def registry_servlet(target: str):
    """django-grpc-bus's registry, configured for one servlet named ``bench`` at `target`."""
    import django
    from django.conf import settings

    host, _, port = target.rpartition(":")
    settings.configure(
        INSTALLED_APPS=["rest_framework", "django_grpc_bus"],
        USE_TZ=True,
        MESSAGE_BUS={"SERVLETS": {"bench": {"host": host, "port": int(port)}}},
    )
    django.setup()
    from django_grpc_bus.client.registry import registry

    return registry.bench


def cpu_seconds(pid: int) -> float:
    """utime + stime of process `pid` (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, round(fraction * (len(sorted_values) - 1)))
    return sorted_values[index]


# -- modes ----------------------------------------------------------------------------------------


async def closed_loop(args) -> dict:
    """`concurrency` tasks, each calling back to back; only the window after warm-up counts."""
    channel_count = args.channels or 1
    options = [("grpc.use_local_subchannel_pool", 1)]  # one TCP connection per channel
    channels = [
        grpc.aio.insecure_channel(args.target, options=options) for _ in range(channel_count)
    ]
    stubs = [Book_pb2_grpc.BookStub(channel) for channel in channels]
    requests = lookup_requests() if args.rpc == "retrieve" else create_requests()
    method = "Retrieve" if args.rpc == "retrieve" else "Create"
    clock = time.perf_counter
    start = clock() + args.warmup
    end = start + args.duration
    latencies: list[float] = []
    errors = completed = 0
    first_error = ""

    async def worker(index: int) -> None:
        nonlocal errors, completed, first_error
        call = getattr(stubs[index % channel_count], method)
        i = index
        while True:
            request = requests[i % len(requests)]
            i += args.concurrency
            began = clock()
            if began >= end:
                return
            try:
                await call(request, timeout=TIMEOUT)
            except grpc.RpcError as exc:
                errors += 1
                if not first_error:
                    first_error = f"{exc.code().name}: {exc.details()}"
                continue
            finished = clock()
            completed += 1
            if start <= finished <= end:
                latencies.append(finished - began)

    cpu: dict[str, float] = {}

    async def sample_server_cpu() -> None:
        if not args.server_pid:
            return
        await asyncio.sleep(start - clock())
        cpu["start"] = cpu_seconds(args.server_pid)
        await asyncio.sleep(end - clock())
        cpu["end"] = cpu_seconds(args.server_pid)

    await asyncio.gather(sample_server_cpu(), *(worker(k) for k in range(args.concurrency)))
    for channel in channels:
        await channel.close()
    latencies.sort()
    calls = len(latencies)
    result = {
        "calls": calls,
        "calls_with_warmup": completed,
        "errors": errors,  # failed calls, warm-up included; not in calls, calls/s or latencies
        "first_error": first_error,
        "calls_per_s": calls / args.duration,
        "p50_ms": percentile(latencies, 0.50) * 1e3,
        "p99_ms": percentile(latencies, 0.99) * 1e3,
    }
    if cpu:
        result["server_cpu_us_per_call"] = (cpu["end"] - cpu["start"]) / max(calls, 1) * 1e6
    return result


def list_rows(args) -> dict:
    """Time to get ROWS rows as dicts, per call; the median of `repeat` calls after warm-up."""
    if args.client == "registry":
        book = registry_servlet(args.target).Book
        query = list_query(args)

        def fetch() -> list[dict]:
            return list(book.list(query))
    else:
        stub = bench_pb2_grpc.BenchBooksStub(grpc.insecure_channel(args.target))
        if args.price_lt:
            unary, request = stub.ListCheaper, bench_pb2.ListCheaperRequest(price_lt=args.price_lt)
        else:
            unary, request = stub.ListAll, bench_pb2.ListAllRequest(limit=args.rows)

        def fetch() -> list[dict]:
            return [row_to_dict(row) for row in unary(request, timeout=TIMEOUT).rows]

    for _ in range(args.warmup_calls):
        fetch()
    times = []
    for _ in range(args.repeat):
        began = time.perf_counter()
        fetched = fetch()
        times.append(time.perf_counter() - began)
        if len(fetched) != args.rows:
            raise SystemExit(f"expected {args.rows} rows, got {len(fetched)}")
    return {"ms": statistics.median(times) * 1e3, "min_ms": min(times) * 1e3, "calls": len(times)}


def list_query(args) -> dict:
    """The registry's List request: the first ROWS rows, or those below ``--price-lt``,
    cheapest first (the filter in Django's spelling, which the registry takes)."""
    if args.price_lt:
        return cheaper_than(args.price_lt)
    return {"page_size": args.rows}


def cheaper_than(price: str) -> dict:
    """Rows below `price`, cheapest first: SQLite reads them off the price index, in order."""
    return {"filter": {"price__lt": price}, "order_by": ["price"]}


def first_row(args) -> dict:
    """Time from calling List to holding its first row (the catalog is fetched beforehand)."""
    book = registry_servlet(args.target).Book
    list(book.list({"page_size": 1}))  # reflection and channel set up, code paths warm
    samples = []
    for _ in range(args.samples):
        began = time.perf_counter()
        rows = book.list()
        next(rows)
        samples.append(time.perf_counter() - began)
        rows.close()  # abandons the stream: the server stops reading
    result: dict = {"first_row_ms": [s * 1e3 for s in samples]}
    if args.consume_all:
        began = time.perf_counter()
        query = cheaper_than(args.price_lt) if args.price_lt else None
        rows = book.list(query, timeout=args.stream_timeout)
        next(rows)
        result["whole_first_row_ms"] = (time.perf_counter() - began) * 1e3
        count = 1 + sum(1 for _ in rows)
        result["rows"] = count
        result["whole_s"] = time.perf_counter() - began
    return result


def client_cpu(args) -> dict:
    """CPU time of this process per Retrieve, single thread, `calls` calls after a warm-up."""
    requests = lookup_requests(args.calls)
    if args.client == "registry":
        retrieve = registry_servlet(args.target).Book.retrieve
        ids = [{"id": request.id} for request in requests]

        def run(n: int) -> None:
            for i in range(n):
                retrieve(ids[i % len(ids)])
    else:
        stub = Book_pb2_grpc.BookStub(grpc.insecure_channel(args.target))

        def run(n: int) -> None:
            for i in range(n):
                row_to_dict(stub.Retrieve(requests[i % len(requests)], timeout=TIMEOUT))

    run(args.warmup_calls)
    cpu_began, wall_began = time.process_time(), time.perf_counter()
    run(args.calls)
    cpu = time.process_time() - cpu_began
    wall = time.perf_counter() - wall_began
    return {"cpu_us_per_call": cpu / args.calls * 1e6, "wall_us_per_call": wall / args.calls * 1e6}


def verify(args) -> dict:
    """Both servers must do the same work: the same Retrieve bytes, the same list of dicts."""
    bus = Book_pb2_grpc.BookStub(grpc.insecure_channel(args.target))
    handwritten_channel = grpc.insecure_channel(args.handwritten)
    handwritten = Book_pb2_grpc.BookStub(handwritten_channel)
    for request in lookup_requests(200):
        ours = bus.Retrieve(request, timeout=TIMEOUT).SerializeToString(deterministic=True)
        theirs = handwritten.Retrieve(request, timeout=TIMEOUT)
        if ours != theirs.SerializeToString(deterministic=True):
            raise SystemExit(f"Retrieve(id={request.id}) differs between the servers")
    stub = bench_pb2_grpc.BenchBooksStub(handwritten_channel)
    if args.price_lt:
        page = stub.ListCheaper(
            bench_pb2.ListCheaperRequest(price_lt=args.price_lt), timeout=TIMEOUT
        )
    else:
        page = stub.ListAll(bench_pb2.ListAllRequest(limit=args.rows), timeout=TIMEOUT)
    expected = [row_to_dict(row) for row in page.rows]
    got = list(registry_servlet(args.target).Book.list(list_query(args)))
    if got != expected or len(got) != args.rows:
        raise SystemExit(
            f"the registry's list ({len(got)} rows) and the hand-written one ({len(expected)}) "
            f"differ, or are not {args.rows} rows"
        )
    return {"ok": True, "rows": len(got)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "mode", choices=["closed-loop", "list", "first-row", "client-cpu", "verify"]
    )
    parser.add_argument("--target", required=True, help="host:port of the server measured")
    parser.add_argument("--rpc", choices=["retrieve", "create"], default="retrieve")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--channels", type=int, default=1, help="connections (default: 1 shared)")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before measuring")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured")
    parser.add_argument("--server-pid", type=int, help="read this process's CPU time")
    parser.add_argument("--client", choices=["registry", "stub"], default="registry")
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--price-lt", help="list the rows below this price (a filtered List)")
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--warmup-calls", type=int, default=3)
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--consume-all", action="store_true")
    parser.add_argument("--stream-timeout", type=float, default=120.0)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--handwritten", help="host:port of the hand-written server (verify)")
    args = parser.parse_args()
    if args.mode == "closed-loop":
        result = asyncio.run(closed_loop(args))
    else:
        modes = {"list": list_rows, "first-row": first_row, "client-cpu": client_cpu}
        result = modes.get(args.mode, verify)(args)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
