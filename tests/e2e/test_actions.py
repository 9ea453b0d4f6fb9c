"""Actions (SPEC §9) in a new project, as the tutorial builds it: one of each kind, declared with
``@grpc_action`` in ``library/services.py``, generated, served by ``rungrpcserver`` and called
through the registry, aregistry, ``grpccall`` and ``buf curl`` with no stubs.

The server is the threaded one, or the asyncio one under ``DJANGO_GRPC_BUS_TEST_ASYNCIO=1``
(``make test-asyncio``), where the streaming actions are ``async def``. The new project uses
SQLite, or a database of its own on the PostgreSQL server ``DATABASE_URL`` names.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import grpc
import pytest
from django.core.management import call_command
from support import add_servlets, servlet_entry
from tutorial_project import CLEAN_ENV, SETTINGS_TAIL, manage, start_project

from django_grpc_bus.client.aio import aregistry
from django_grpc_bus.client.registry import registry
from django_grpc_bus.testing import ServerProcess

TIMEOUT = 10
ASYNCIO = os.environ.get("DJANGO_GRPC_BUS_TEST_ASYNCIO") == "1"
BUF = Path(__file__).resolve().parents[2] / ".tools/node_modules/.bin/buf"

# The user's own code: library/services.py after generateservices, with four actions.
SERVICES = '''
"""gRPC services of library."""

from decimal import Decimal

from django.db.models import Count, Sum
from rest_framework import serializers as drf

from django_grpc_bus.decorators import grpc_action, validate_request, validate_stream
from django_grpc_bus.generics import ModelService

from library import models, serializers


class DiscountSerializer(drf.Serializer):
    id = drf.IntegerField()
    percent = drf.DecimalField(max_digits=4, decimal_places=1, min_value=1, max_value=90)


class NewBookSerializer(drf.ModelSerializer):
    class Meta:
        model = models.Book
        fields = ["title", "author", "price"]


class AuthorService(ModelService):
    queryset = models.Author.objects.all()
    serializer_class = serializers.AuthorSerializer


class BookService(ModelService):
    queryset = models.Book.objects.all()
    serializer_class = serializers.BookSerializer

    @grpc_action(request=DiscountSerializer, response="BookData", idempotent=True)
    def discount(self, request, context):
        """Lower one book's price by a percentage."""
        data = validate_request(self, request).validated_data
        book = self.get_queryset().get(pk=data["id"])
        book.price = (book.price * (100 - data["percent"]) / 100).quantize(Decimal("0.01"))
        book.save(update_fields=["price"])
        return self.get_serializer_class().to_message(book)

    @grpc_action(
        request=[("min_books", "int32")],
        response=[("author", "string"), ("books", "int64"), ("total", "string")],
        response_stream=True,
    )
    def report(self, request, context):
        """Books and their total price per author, for authors with min_books or more."""
        rows = (
            models.Author.objects.annotate(books=Count("book"), total=Sum("book__price"))
            .filter(books__gte=request.min_books)
            .order_by("name")
        )
        for row in rows:
            yield {"author": row.name, "books": row.books, "total": f"{row.total or 0:.2f}"}

    @grpc_action(
        request=NewBookSerializer,
        response=[("created", "int64"), ("ids", "repeated int64")],
        request_stream=True,
        atomic=True,
    )
    def bulk_create(self, request, context):
        """Create every book streamed, or none of them."""
        ids = [serializer.save().pk for serializer in validate_stream(self, request)]
        return {"created": len(ids), "ids": ids}

    @grpc_action(
        request=[("text", "string")],
        response=[("text", "string"), ("seen", "int32")],
        request_stream=True,
        response_stream=True,
    )
    def echo(self, request, context):
        """Each message back as it comes, counted; "boom" fails the stream."""
        for seen, message in enumerate(request, start=1):
            if message.text == "boom":
                raise RuntimeError("boom")
            yield {"text": message.text.upper(), "seen": seen}
'''

# The same service with its streaming actions async def, for the asyncio server.
ASYNC_SERVICES = """
import threading

from asgiref.sync import sync_to_async

from django_grpc_bus.decorators import grpc_action

from library import models, services


class BookService(services.BookService):
    @grpc_action(
        request=[("min_books", "int32")],
        response=[("author", "string"), ("books", "int64"), ("total", "string")],
        response_stream=True,
    )
    async def report(self, request, context):
        rows = await sync_to_async(list)(services.BookService.report(self, request, context))
        for row in rows:
            yield row

    @grpc_action(
        request=[("text", "string")],
        response=[("text", "string"), ("seen", "int32")],
        request_stream=True,
        response_stream=True,
    )
    async def echo(self, request, context):
        if threading.current_thread().name.startswith("grpc-bus-sync"):  # not on the loop
            raise RuntimeError(f"async echo ran in {threading.current_thread().name}")
        seen = 0
        async for message in request:
            seen += 1
            if message.text == "boom":
                raise RuntimeError("boom")
            yield {"text": message.text.upper(), "seen": seen}
"""

ASYNC_HANDLERS = """
from django_grpc_bus.handlers import BasicHandler

handler = BasicHandler()
handler.register("library.services.AuthorService")
handler.register("library.async_services.BookService")
"""

# The new project's database: its own on the PostgreSQL server DATABASE_URL names, if any.
DATABASE_TAIL = """
import os
if os.environ.get("ACTIONS_DATABASE_URL"):
    import dj_database_url
    DATABASES = {"default": dj_database_url.parse(os.environ["ACTIONS_DATABASE_URL"])}
MESSAGE_BUS["ROOT_HANDLERS_HOOK"] = os.environ.get("LIBRARY_HOOK", "handlers.handler")
"""


def _postgres_database():
    """A fresh database on DATABASE_URL's server for the new project (None: use SQLite)."""
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith("postgres"):
        return None, None
    import psycopg

    name = f"actions_e2e_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    return f"{url.rsplit('/', 1)[0]}/{name}", name


@pytest.fixture(scope="module")
def action_project(tmp_path_factory):
    project = tmp_path_factory.mktemp("actions")
    database_url, database_name = _postgres_database()
    if database_url:
        os.environ["ACTIONS_DATABASE_URL"] = database_url
    try:
        settings = start_project(project)
        settings.write_text(settings.read_text() + SETTINGS_TAIL + DATABASE_TAIL)
        manage(project, "makemigrations", "library", "shop")
        manage(project, "migrate")
        manage(project, "generatemetayaml", "--file", "service_meta.yaml")
        manage(project, "generateproto")
        manage(project, "generategrpc")
        manage(project, "generateservices", "-hd")
        (project / "library/services.py").write_text(SERVICES.lstrip())
        (project / "library/async_services.py").write_text(ASYNC_SERVICES.lstrip())
        (project / "async_handlers.py").write_text(ASYNC_HANDLERS.lstrip())
        manage(project, "generateproto")
        manage(project, "generategrpc")
        assert manage(project, "generateproto", "--check").returncode == 0
        vendor = "from django.db import connection; print(connection.vendor)"
        expected = "postgresql" if database_url else "sqlite"
        assert manage(project, "shell", "-c", vendor).stdout.split()[-1] == expected
        yield project
    finally:
        os.environ.pop("ACTIONS_DATABASE_URL", None)
        if database_name:
            import psycopg

            with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as connection:
                connection.execute(f"DROP DATABASE IF EXISTS {database_name} WITH (FORCE)")


@pytest.fixture(scope="module")
def served(action_project):
    env = {**CLEAN_ENV}
    if os.environ.get("ACTIONS_DATABASE_URL"):
        env["ACTIONS_DATABASE_URL"] = os.environ["ACTIONS_DATABASE_URL"]
    args: tuple[str, ...] = ()
    if ASYNCIO:
        env["LIBRARY_HOOK"] = "async_handlers.handler"
        args = ("--asyncio",)
    with ServerProcess(
        [sys.executable, "manage.py"], cwd=action_project, env=env, args=args
    ) as server:
        yield server
        assert server.stop() == 0


@pytest.fixture
def lib(served, settings):
    """The registry's servlet for the new project's server, with an author to write books for."""
    add_servlets(settings, lib=servlet_entry(served.port, TIMEOUT))
    return registry.lib


def test_unary_action_validates_its_serializer(lib):
    author = lib.Author.create({"name": "Le Guin"})
    book = lib.Book.create({"title": "Lathe", "author": author["id"], "price": "20.00"})
    assert lib.Book.discount({"id": book["id"], "percent": "25"})["price"] == "15.00"
    assert lib.Book.retrieve({"id": book["id"]})["price"] == "15.00"

    with pytest.raises(grpc.RpcError) as invalid:
        lib.Book.discount({"id": book["id"], "percent": "95"})
    assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert invalid.value.violations == [
        ("percent", "Ensure this value is less than or equal to 90.")
    ]
    with pytest.raises(grpc.RpcError) as missing:
        lib.Book.discount({"id": 10**9, "percent": "10"})
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    # An omitted id is "not given" (the request's scalars have presence), not id 0.
    with pytest.raises(grpc.RpcError) as no_id:
        lib.Book.discount({"percent": "10"})
    assert no_id.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert no_id.value.violations == [("id", "This field is required.")]
    assert lib.Book.retrieve({"id": book["id"]})["price"] == "15.00"


def test_client_stream_creates_every_book_or_none(lib):
    author = lib.Author.create({"name": "Butler"})["id"]
    rows = [{"title": f"Book {n}", "author": author, "price": "1.00"} for n in range(3)]
    created = lib.Book.bulk_create(iter(rows))  # any iterable; a generator is sent as it goes
    assert created["created"] == 3
    assert [lib.Book.retrieve({"id": pk})["title"] for pk in created["ids"]] == [
        "Book 0",
        "Book 1",
        "Book 2",
    ]

    before = lib.Book.count()
    bad = [*rows, {"title": "", "author": author, "price": "1.00"}, rows[0]]
    with pytest.raises(grpc.RpcError) as invalid:
        lib.Book.bulk_create(bad)
    assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert invalid.value.violations == [("[3].title", "This field may not be blank.")]
    assert lib.Book.count() == before  # the three good rows before it were rolled back


def test_server_stream_reports_and_bidi_echoes(lib):
    author = lib.Author.create({"name": "Lem"})["id"]
    lib.Book.create({"title": "Solaris", "author": author, "price": "3.50"})
    lib.Book.create({"title": "Cyberiad", "author": author, "price": "4.00"})
    report = list(lib.Book.report({"min_books": 2}))
    assert {"author": "Lem", "books": 2, "total": "7.50"} in report
    assert all(row["books"] >= 2 for row in report)

    replies = lib.Book.echo({"text": t} for t in ["a", "b", "c"])
    assert list(replies) == [
        {"text": "A", "seen": 1},
        {"text": "B", "seen": 2},
        {"text": "C", "seen": 3},
    ]

    echoed = lib.Book.echo([{"text": "x"}, {"text": "boom"}, {"text": "y"}])
    first = next(echoed)
    assert first == {"text": "X", "seen": 1}
    with pytest.raises(grpc.RpcError) as failed:  # a stream that raises midway: INTERNAL
        list(echoed)
    assert failed.value.code() == grpc.StatusCode.INTERNAL
    assert "boom" not in failed.value.details()  # logged on the server, not sent


def test_aregistry_calls_every_kind(lib):
    author = lib.Author.create({"name": "Tolkien"})["id"]

    async def rows():
        for title in ("Hobbit", "Silmarillion"):
            yield {"title": title, "author": author, "price": "2.00"}

    async def texts():
        for text in ("p", "q"):
            yield {"text": text}

    async def calls():
        try:
            book = aregistry.lib.Book
            created = await book.bulk_create(rows())  # an async iterable
            discounted = await book.discount({"id": created["ids"][0], "percent": "50"})
            report = [row async for row in book.report({"min_books": 2})]
            echoed = [row async for row in book.echo(texts())]
            listed = await book.echo([{"text": "r"}])  # a plain list works too
            return created, discounted, report, echoed, listed
        finally:
            await aregistry.aclose()

    created, discounted, report, echoed, listed = asyncio.run(calls())
    assert created["created"] == 2
    assert discounted["price"] == "1.00"
    assert {"author": "Tolkien", "books": 2, "total": "3.00"} in report
    assert echoed == [{"text": "P", "seen": 1}, {"text": "Q", "seen": 2}]
    assert listed == [{"text": "R", "seen": 1}]


def grpccall(*args: str) -> tuple[list, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("grpccall", "lib", *args, stdout=out, stderr=err)
    return [json.loads(line) for line in out.getvalue().splitlines()], err.getvalue()


def test_grpclist_and_grpccall_see_and_call_the_actions(lib):
    out = io.StringIO()
    call_command("grpclist", "lib", "Book", stdout=out)
    listing = out.getvalue()
    for line in (
        "discount (Discount): library.BookDiscountRequest -> library.BookData",
        "report (Report): library.BookReportRequest -> stream library.BookReportResponse",
        "bulk_create (BulkCreate): stream library.BookBulkCreateRequest -> "
        "library.BookBulkCreateResponse",
        "echo (Echo): stream library.BookEchoRequest -> stream library.BookEchoResponse",
    ):
        assert line in listing, listing

    author = lib.Author.create({"name": "Herbert"})["id"]
    rows = [{"title": t, "author": author, "price": "5.00"} for t in ("Dune", "Messiah")]
    (created,), _ = grpccall("Book.bulk_create", json.dumps(rows))  # a JSON array: the stream
    assert created["created"] == 2
    (discounted,), _ = grpccall(
        "Book.discount", json.dumps({"id": created["ids"][1], "percent": "10"})
    )
    assert discounted["price"] == "4.50"
    report, _ = grpccall("Book.report", '{"min_books": 2}')
    assert {"author": "Herbert", "books": 2, "total": "9.50"} in report
    assert grpccall("Book.echo", '[{"text": "hi"}]')[0] == [{"text": "HI", "seen": 1}]


def buf_curl(server: ServerProcess, method: str, data: str) -> list[dict]:
    if not BUF.exists():
        if os.environ.get("DJANGO_GRPC_BUS_REQUIRE_BUF"):
            pytest.fail(f"buf is required (DJANGO_GRPC_BUS_REQUIRE_BUF) but {BUF} is missing")
        pytest.skip("buf is not installed (make tools installs it with npm)")
    done = subprocess.run(
        [str(BUF), "curl", "--protocol", "grpc", "--http2-prior-knowledge",
         f"http://{server.target}/library.Book/{method}", "-d", data],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    decoder, text, messages = json.JSONDecoder(), done.stdout.strip(), []
    while text:
        message, end = decoder.raw_decode(text)
        messages.append(message)
        text = text[end:].lstrip()
    return messages


def test_buf_curl_calls_every_kind(lib, served):
    author = lib.Author.create({"name": "Banks"})["id"]
    rows = [{"title": t, "author": author, "price": "6.00"} for t in ("Excession", "Matter")]
    # a client stream: the messages one after another
    (created,) = buf_curl(served, "BulkCreate", " ".join(json.dumps(row) for row in rows))
    assert created["created"] == "2"  # protobuf's JSON writes int64 as a string
    (discounted,) = buf_curl(
        served, "Discount", json.dumps({"id": created["ids"][0], "percent": "50"})
    )
    assert discounted["price"] == "3.00"
    report = buf_curl(served, "Report", '{"min_books": 2}')
    assert {"author": "Banks", "books": "2", "total": "9.00"} in report
    echoed = buf_curl(served, "Echo", '{"text": "u"} {"text": "v"}')
    assert echoed == [{"text": "U", "seen": 1}, {"text": "V", "seen": 2}]


def test_a_request_the_client_cannot_send_is_named_and_nothing_is_kept(lib):
    from django_grpc_bus.client.exceptions import RequestError

    author = lib.Author.create({"name": "Probe"})["id"]
    before = lib.Book.count()
    with pytest.raises(RequestError, match=r"Discount takes library\.BookDiscountRequest, not "):
        lib.Book.discount(lib.Book.method("retrieve").request_class(id=1))  # a wrong message
    with pytest.raises(RequestError, match="is client-streaming: pass an iterable of requests"):
        lib.Book.bulk_create({"title": "one dict"})

    def rows():  # sent lazily: the first row is on its way before the second is read
        yield {"title": "ok", "author": author, "price": "1.00"}
        yield {"titel": "typo"}

    with pytest.raises(RequestError, match=r"request \[1\] of the stream: .*no field 'titel'"):
        lib.Book.bulk_create(rows())

    async def arows():
        for row in rows():
            yield row

    async def acall():
        try:
            await aregistry.lib.Book.bulk_create(arows())
        finally:
            await aregistry.aclose()

    with pytest.raises(RequestError, match=r"request \[1\] of the stream: .*no field 'titel'"):
        asyncio.run(acall())
    assert lib.Book.count() == before  # the atomic action kept nothing of either stream
