"""The baseline: a hand-written grpcio servicer for the same proto, no framework.

    python bench/handwritten/server.py 127.0.0.1:0 --max-workers 10

What a competent developer writes by hand: the generated ``Book_pb2_grpc.BookServicer`` (from
the same generated Book.proto that django-grpc-bus serves), one ORM query per call, the
response filled field by field, ``grpc.server`` with a ``ThreadPoolExecutor``. Create validates
nothing beyond what the types and the model do. ``ListAll`` and ``ListCheaper`` (bench.proto)
return many rows in one unary message. Health checking is added so the harness can wait for it
as it does for ``rungrpcserver``; it costs nothing per call.

Prints ``Serving N service(s) on HOST:PORT (pid P)`` the way ``rungrpcserver`` does.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import signal
import sys
import threading
from concurrent import futures
from decimal import Decimal
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "project"), str(HERE)]
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchsite.settings")

import django  # noqa: E402

django.setup()

import grpc  # noqa: E402
from grpc_health.v1 import health, health_pb2, health_pb2_grpc  # noqa: E402

import bench_pb2  # noqa: E402
import bench_pb2_grpc  # noqa: E402
from generated_grpc.grpc import Book_pb2, Book_pb2_grpc  # noqa: E402
from shop.models import Book  # noqa: E402

UTC = dt.timezone.utc


def fill(message, book: Book):
    """Copy one row into a BookData message, field by field."""
    message.id = book.id
    message.title = book.title
    message.pages = book.pages
    message.price = str(book.price)
    message.published = book.published.isoformat()
    message.added.FromDatetime(book.added)
    message.in_print = book.in_print
    message.rating = book.rating
    return message


class BookServicer(Book_pb2_grpc.BookServicer):
    """Retrieve and Create of the generated shop.Book service; the other RPCs are not written."""

    def Retrieve(self, request, context):
        try:
            book = Book.objects.get(pk=request.id)
        except Book.DoesNotExist:
            context.abort(grpc.StatusCode.NOT_FOUND, f"No book with id={request.id}.")
        return fill(Book_pb2.BookData(), book)

    def Create(self, request, context):
        book = Book.objects.create(
            title=request.title,
            pages=request.pages,
            price=Decimal(request.price),
            published=dt.date.fromisoformat(request.published),
            added=request.added.ToDatetime(tzinfo=UTC),
            in_print=request.in_print if request.HasField("in_print") else True,
            rating=request.rating,
        )
        return fill(Book_pb2.BookData(), book)


class BenchBooksServicer(bench_pb2_grpc.BenchBooksServicer):
    def ListAll(self, request, context):
        return page_of(Book.objects.order_by("pk")[: request.limit])

    def ListCheaper(self, request, context):
        # The query django-filter and OrderingFilter make of {"filter": {"price__lt": ...},
        # "order_by": ["price"]}, with the primary key List adds to keep pages stable.
        cheaper = Book.objects.filter(price__lt=Decimal(request.price_lt))
        return page_of(cheaper.order_by("price", "pk"))


def page_of(books) -> bench_pb2.BookPage:
    page = bench_pb2.BookPage()
    rows = page.rows
    for book in books:
        fill(rows.add(), book)
    return page


def field_shape(message_class) -> list[tuple]:
    return [
        (f.name, f.number, f.type, f.has_presence, f.message_type and f.message_type.full_name)
        for f in message_class.DESCRIPTOR.fields
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("address", help="host:port (port 0: any free port)")
    parser.add_argument("--max-workers", type=int, default=10)
    args = parser.parse_args()

    if field_shape(bench_pb2.BookData) != field_shape(Book_pb2.BookData):
        sys.exit("bench.proto's BookData no longer matches the generated shop.BookData: copy it.")

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=args.max_workers))
    Book_pb2_grpc.add_BookServicer_to_server(BookServicer(), server)
    bench_pb2_grpc.add_BenchBooksServicer_to_server(BenchBooksServicer(), server)
    health_servicer = health.HealthServicer()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port(args.address)
    server.start()
    host = args.address.rpartition(":")[0]
    print(
        f"Serving 2 service(s) on {host}:{port} (pid {os.getpid()}): shop.Book, "
        "bench.BenchBooks (hand-written)",
        flush=True,
    )

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass
    server.stop(grace=2).wait(5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
