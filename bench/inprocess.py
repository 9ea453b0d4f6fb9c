"""Deterministic measures of one server's work per call, in one process, no network.

    .venv/bin/python bench/inprocess.py [retrieve|create|list|handwritten-retrieve|...] [-n 2000]
        [--profile] [--top 10]

Runs N calls of the django-grpc-bus handler (``method_handlers``, the same behavior the
server registers with grpc: the call's connection housekeeping, the service, the transaction)
or of the hand-written servicer's method with a stand-in context, on a scratch copy of the
bench database. Prints queries per call and, with ``--profile``, the top functions by own
time and by call count, which, unlike wall-clock timings on a shared machine, do not vary from
run to run. Under ``valgrind --tool=callgrind`` it gives instruction counts of a fixed number
of calls. Needs the generated code (``make bench`` once, or ``manage.py generategrpc``).
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import os
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROJECT = HERE / "project"
sys.path[:0] = [str(PROJECT), str(HERE / "handwritten"), str(HERE)]
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchsite.settings")
SCRATCH = Path(tempfile.mkdtemp(prefix="dgb-inprocess-"))
os.environ["BENCH_DATABASE"] = str(SCRATCH / "books.sqlite3")


class StandInContext:
    """What a call's code reads of a ``grpc.ServicerContext``."""

    def abort(self, code, details):
        raise RuntimeError(f"{code}: {details}")

    def add_callback(self, callback):
        callback()
        return True

    def is_active(self):
        return True

    def code(self):
        return None

    def time_remaining(self):
        return 10.0

    def invocation_metadata(self):
        return ()

    def peer(self):
        return "ipv4:127.0.0.1:1"

    def set_code(self, code):
        pass

    def set_details(self, details):
        pass


def setup(rows: int) -> None:
    import django

    import databases

    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    databases.build(Path(os.environ["BENCH_DATABASE"]), rows, [sys.executable, "manage.py"],
                    PROJECT, env)  # fmt: skip
    django.setup()


def workloads(rows: int):
    """name -> (function of i doing one call, its label)."""
    from django_grpc_bus.serving.binding import method_handlers, service_descriptor
    from django_grpc_bus.serving.traffic import Traffic

    import bench_pb2
    from generated_grpc.grpc import Book_pb2
    from server import BenchBooksServicer, BookServicer
    from shop.services import BookService

    handlers = method_handlers(BookService, service_descriptor(BookService), Traffic())
    context = StandInContext()
    added = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)

    def new_book(i: int):
        message = Book_pb2.BookData(
            title=f"Book {i}", pages=100 + i % 500, price=f"{1 + i % 90}.25",
            published="2020-02-29", in_print=bool(i % 2), rating=i % 5 + 0.5,
        )  # fmt: skip
        message.added.FromDatetime(added)
        return message

    retrieve = handlers["Retrieve"].unary_unary
    create = handlers["Create"].unary_unary
    list_ = handlers["List"].unary_stream
    hand = BookServicer()
    hand_list = BenchBooksServicer()

    def ids(i: int) -> int:
        return (i * 7919) % rows + 1

    return {
        "retrieve": lambda i: retrieve(Book_pb2.BookLookupRequest(id=ids(i)), context),
        "create": lambda i: create(new_book(i), context),
        "list": lambda i: list(list_(Book_pb2.BookListRequest(page_size=1000), context)),
        "hand-retrieve": lambda i: hand.Retrieve(Book_pb2.BookLookupRequest(id=ids(i)), context),
        "hand-create": lambda i: hand.Create(new_book(i), context),
        "hand-list": lambda i: hand_list.ListAll(bench_pb2.ListAllRequest(limit=1000), context),
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("workload")
    parser.add_argument("-n", type=int, default=2000)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--top", type=int, default=10)
    args = parser.parse_args()
    setup(args.rows)
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    call = workloads(args.rows)[args.workload]
    for i in range(20):  # warm-up: plans, connections
        call(-i - 1)
    with CaptureQueriesContext(connection) as queries:
        call(0)
    print(f"{args.workload}: {len(queries)} queries per call: "
          + "; ".join(q["sql"][:60] for q in queries))  # fmt: skip
    profile = cProfile.Profile() if args.profile else None
    began = time.process_time()
    if profile:
        profile.enable()
    for i in range(1, args.n + 1):
        call(i)
    if profile:
        profile.disable()
    spent = time.process_time() - began
    print(f"{args.n} calls, {spent / args.n * 1e6:.0f} µs CPU per call (noisy; profiled: "
          f"{bool(profile)})")  # fmt: skip
    if profile:
        stats = pstats.Stats(profile)
        calls = sum(entry[1] for entry in stats.stats.values())  # type: ignore[attr-defined]
        print(f"function calls per call: {calls / args.n:.0f}")
        stats.sort_stats("tottime").print_stats(args.top)
    shutil.rmtree(SCRATCH, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
