"""Deterministic measure of the client's row conversion: 1,000 List rows (BookData) to dicts.

    .venv/bin/python bench/client_reader.py [compiled|by-field|handwritten] [-n 1000] [--profile]
    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        .venv/bin/python bench/client_reader.py compiled --once -n 1000

``compiled`` is the registry's reader (``conversion.messages.dict_reader``, what
``RPC.results`` runs per row); ``by-field`` is the field-by-field read message_to_dict did
before 2.0's compiled reader (each field's plan reader, one at a time, each in its own
try); ``handwritten`` is the bench's dict comprehension (``load.row_to_dict``). No server, no
database: the rows are built in memory as the server sends them (parsed from bytes). Prints
the function calls cProfile counts per N rows, which do not vary from run to run, and the best
wall time of ``--repeat`` runs, which does. Under callgrind, ``--once`` converts the rows once and
measures nothing: the instructions of ``-n 2000`` less those of ``-n 1000``, less the same
difference for mode ``none`` (rows built, not converted), are those of 1,000 conversions.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import pstats
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE / "project"), str(HERE / "handwritten"), str(HERE)]

UTC = dt.timezone.utc


def rows(count: int) -> list:
    from generated_grpc.grpc import Book_pb2

    response = Book_pb2.BookListResponse()
    for i in range(count):
        row = response.results.add(
            id=i + 1,
            title=f"Book {i}",
            pages=100 + i % 500,
            price=f"{i % 90 + 10}.{i % 100:02d}",
            published=(dt.date(2021, 1, 1) + dt.timedelta(days=i % 3000)).isoformat(),
            in_print=bool(i % 2),
            rating=3.5,
        )
        row.added.FromDatetime(dt.datetime(2024, 5, 1, tzinfo=UTC) + dt.timedelta(minutes=i))
    return list(Book_pb2.BookListResponse.FromString(response.SerializeToString()).results)


def converter(mode: str):
    import django
    from django.conf import settings

    settings.configure(INSTALLED_APPS=["rest_framework", "django_grpc_bus"], USE_TZ=True)
    django.setup()
    from django_grpc_bus.conversion import messages

    if mode == "none":  # the baseline: rows built, nothing converted
        return lambda batch: None
    if mode == "handwritten":
        from load import row_to_dict

        return lambda batch: [row_to_dict(row) for row in batch]
    if mode == "by-field":

        def message_to_dict(row):  # as it was: the plan looked up per row, read by field
            plan = messages.plan_for(row.DESCRIPTOR)
            return messages._read_each(plan, plan.field_names, row)

        return lambda batch: [message_to_dict(row) for row in batch]

    def compiled(batch):
        read = messages.dict_reader(batch[0].DESCRIPTOR)
        return [read(row) for row in batch]

    return compiled


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["compiled", "by-field", "handwritten", "none"])
    parser.add_argument("-n", type=int, default=1000, help="rows converted per run")
    parser.add_argument("--repeat", type=int, default=20, help="runs timed (best is printed)")
    parser.add_argument("--profile", action="store_true", help="print the top functions")
    parser.add_argument(
        "--once", action="store_true", help="convert once, measure nothing (for callgrind)"
    )
    args = parser.parse_args()
    batch = rows(args.n)
    convert = converter(args.mode)
    if args.once:
        convert(batch)
        return
    convert(batch)  # warm: plans built, settings read
    best = min(_timed(convert, batch) for _ in range(args.repeat)) if args.repeat > 1 else None
    profile = cProfile.Profile()
    profile.runcall(convert, batch)
    stats = pstats.Stats(profile)
    line = f"{args.mode}: {stats.total_calls} function calls per {args.n} rows"  # type: ignore[attr-defined]
    if best is not None:
        line += f", best of {args.repeat}: {best * 1000:.2f} ms"
    print(line)
    if args.profile:
        stats.sort_stats("tottime").print_stats(10)


def _timed(convert, batch) -> float:
    start = time.perf_counter()
    convert(batch)
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
