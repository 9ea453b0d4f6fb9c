"""SPEC §9 on the tutorial's new project: a Book with its Author nested and a computed field, an
Author with its books (``many=True``), through the registry, aregistry, grpccall and buf curl;
and a List of 1,000 books (and of authors with their books) in a constant number of queries.

The project is made as the tutorial makes it (startproject, the tutorial's models, the seed's
commands); then the user edits ``library/serializers.py`` (SERIALIZERS below) and regenerates.
On PostgreSQL (DATABASE_URL) the project uses a database of its own; with
DJANGO_GRPC_BUS_TEST_ASYNCIO=1 it serves on the asyncio server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from support import DATABASE_URL, ON_POSTGRES, pg_connect
from tutorial_project import CLEAN_ENV, SETTINGS_TAIL, manage, start_project

from django_grpc_bus.testing import ServerProcess

BUF = Path(__file__).resolve().parents[2] / ".tools/node_modules/.bin/buf"
ASYNCIO = os.environ.get("DJANGO_GRPC_BUS_TEST_ASYNCIO") == "1"

# What the user writes in library/serializers.py (the scaffold's, plus the nesting).
SERIALIZERS = """
from rest_framework import serializers

from django_grpc_bus import serializers as proto_serializers
from generated_grpc.grpc import Author_pb2, Book_pb2
from library import models


class BookBriefSerializer(proto_serializers.ModelProtoSerializer):
    class Meta:
        model = models.Book
        fields = ["id", "title", "price"]


class AuthorBriefSerializer(proto_serializers.ModelProtoSerializer):
    class Meta:
        model = models.Author
        fields = ["id", "name", "born"]


class AuthorSerializer(proto_serializers.ModelProtoSerializer):
    # Writable, so (as DRF requires for writable nested serializers) create() saves them.
    books = BookBriefSerializer(source="book_set", many=True, required=False)

    def create(self, validated_data):
        books = validated_data.pop("book_set", [])
        author = super().create(validated_data)
        for book in books:
            models.Book.objects.create(author=author, **book)
        return author

    class Meta:
        model = models.Author
        proto_class = Author_pb2.AuthorData


class BookSerializer(proto_serializers.ModelProtoSerializer):
    author_detail = AuthorBriefSerializer(source="author", read_only=True)
    author_name = serializers.CharField(source="author.name", read_only=True)
    title_words = serializers.SerializerMethodField()

    def get_title_words(self, obj) -> int:
        return len(obj.title.split())

    class Meta:
        model = models.Book
        proto_class = Book_pb2.BookData
"""

# Run in the new project (manage.py shell): 1,000 books by 50 authors (more on a second pass),
# List through an in-process GrpcTestServer, every query of every thread counted.
COUNT_QUERIES = """
import json
from decimal import Decimal

from django.db import connection
from django.db.backends.signals import connection_created

from django_grpc_bus.conf import bus_settings
from django_grpc_bus.testing import GrpcTestServer
from generated_grpc.grpc import Author_pb2, Book_pb2
from library.models import Author, Book

queries = []


def count(execute, sql, params, many, context):
    queries.append(sql)
    return execute(sql, params, many, context)


def attach(sender, connection, **kwargs):
    if count not in connection.execute_wrappers:  # a thread's connection object reconnects
        connection.execute_wrappers.append(count)


def selects():
    return [sql for sql in queries if sql.lstrip().upper().startswith("SELECT")]


def listed(model, request):
    return [row for batch in server.stub(model).List(request, timeout=60) for row in batch.results]


connection_created.connect(attach)
result = {"batch": bus_settings.LIST_BATCH_SIZE}
with GrpcTestServer() as server:
    for books in (10, 1000):
        Book.objects.all().delete()
        Author.objects.all().delete()
        authors = Author.objects.bulk_create(Author(name=f"A{i}") for i in range(books // 5))
        Book.objects.bulk_create(
            Book(title=f"T {i} x", author=authors[i % len(authors)], price=Decimal("1.00"))
            for i in range(books)
        )
        queries.clear()
        rows = listed(Book, Book_pb2.BookListRequest())
        assert all(r.author_detail.name == r.author_name for r in rows), rows[:2]
        result[f"books_{len(rows)}"] = selects()
        queries.clear()
        rows = listed(Author, Author_pb2.AuthorListRequest())
        result[f"authors_{len(rows)}"] = selects()
        result[f"author_books_{len(rows)}"] = sum(len(r.books) for r in rows)
print("RESULT " + json.dumps(result))
"""


@pytest.fixture(scope="module")
def new_project(tmp_path_factory):
    project = tmp_path_factory.mktemp("nested")
    settings = start_project(project)
    tail = SETTINGS_TAIL
    if ASYNCIO:
        tail += 'MESSAGE_BUS["ASYNCIO"] = True\n'
    database = None
    if ON_POSTGRES:
        database = f"grpcbus_nested_{uuid.uuid4().hex[:10]}"
        with pg_connect(DATABASE_URL, connect_timeout=10) as connection:
            connection.execute(f'CREATE DATABASE "{database}"')
        url = DATABASE_URL.rsplit("/", 1)[0] + f"/{database}"
        tail += (
            f"import dj_database_url\nDATABASES = {{'default': dj_database_url.parse({url!r})}}\n"
        )
    settings.write_text(settings.read_text() + tail)
    try:
        manage(project, "makemigrations", "library", "shop")
        manage(project, "migrate")
        manage(project, "generatemetayaml", "--file", "service_meta.yaml")
        manage(project, "generateproto")
        manage(project, "generategrpc")
        manage(project, "generateservices", "-hd")
        # The user's edit: nest, compute; then regenerate (the data messages gain the fields).
        (project / "library/serializers.py").write_text(SERIALIZERS)
        manage(project, "generateproto")
        manage(project, "generategrpc")
        yield project
    finally:
        if database is not None:
            with pg_connect(DATABASE_URL, connect_timeout=10) as connection:
                connection.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


@pytest.fixture(scope="module")
def server(new_project):
    with ServerProcess([sys.executable, "manage.py"], cwd=new_project, env=CLEAN_ENV) as running:
        yield running


def consumer_shell(project: Path, port: int, code: str) -> str:
    """Run `code` in `manage.py shell` of a consumer project whose SERVLETS name the server."""
    consumer = project.parent / f"{project.name}-consumer"
    if not consumer.exists():
        consumer.mkdir()
        subprocess.run(
            [sys.executable, "-m", "django", "startproject", "consumer", str(consumer)],
            check=True,
            env={k: v for k, v in os.environ.items() if k not in CLEAN_ENV},
            timeout=60,
        )
        settings = consumer / "consumer/settings.py"
        settings.write_text(
            settings.read_text()
            + 'INSTALLED_APPS += ["django_grpc_bus"]\n'
            + "MESSAGE_BUS = "
            + repr({"SERVLETS": {"library": {"host": "127.0.0.1", "port": port}}})
            + "\n"
        )
    return manage(consumer, "shell", "-c", code).stdout


def test_generated_messages_carry_the_nested_and_computed_fields(new_project):
    text = (new_project / "generated_grpc/library/Book.proto").read_text()
    assert "message AuthorDetail {" in text
    assert "AuthorDetail author_detail = 6;" in text
    assert "optional string author_name = 7;" in text
    assert "optional int64 title_words = 8;" in text
    author = (new_project / "generated_grpc/library/Author.proto").read_text()
    assert "repeated Books books = 4;" in author
    assert manage(new_project, "generateproto", "--check").returncode == 0
    assert "no issues" in manage(new_project, "check").stdout


REGISTRY = """
import json
from django_grpc_bus.client.registry import registry

author = registry.library.Author.create({"name": "Ursula K. Le Guin", "born": "1929-10-21"})
book = registry.library.Book.create(
    {"title": "The Left Hand of Darkness", "author": author["id"], "price": "12.50"}
)
again = registry.library.Book.retrieve({"id": book["id"]})
rows = list(registry.library.Book.list())
with_books = registry.library.Author.retrieve({"id": author["id"]})
print("RESULT " + json.dumps({"created": book, "again": again, "rows": rows,
                              "author": with_books}, default=str))
"""

AREGISTRY = """
import asyncio, json
from django_grpc_bus.client.aio import aregistry

async def main():
    try:
        rows = [row async for row in aregistry.library.Book.list()]
        author = await aregistry.library.Author.retrieve({"id": rows[0]["author"]})
        return rows, author
    finally:
        await aregistry.aclose()

rows, author = asyncio.run(main())
print("RESULT " + json.dumps({"rows": rows, "author": author}, default=str))
"""


def result_of(printed: str):
    line = next(line for line in printed.splitlines() if line.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def test_registry_aregistry_grpccall_and_buf_curl_see_nested_fields(new_project, server):
    found = result_of(consumer_shell(new_project, server.port, REGISTRY))
    book = found["created"]
    assert book["author_detail"] == {
        "id": book["author"],
        "name": "Ursula K. Le Guin",
        "born": "1929-10-21",
    }
    assert book["author_name"] == "Ursula K. Le Guin"
    assert book["title_words"] == 5
    assert found["again"] == book
    assert book in found["rows"]
    assert found["author"]["books"] == [
        {"id": book["id"], "title": "The Left Hand of Darkness", "price": "12.50"}
    ]

    found = result_of(consumer_shell(new_project, server.port, AREGISTRY))
    assert book in found["rows"]
    assert found["author"]["books"] == [
        {"id": book["id"], "title": "The Left Hand of Darkness", "price": "12.50"}
    ]

    called = manage(
        new_project,
        "grpccall",
        server.target,
        "library.Book.retrieve",
        json.dumps({"id": book["id"]}),
    ).stdout
    assert json.loads(called.splitlines()[0]) == book

    # the nested message as reflection describes it to a client that has no .proto
    described = manage(new_project, "grpclist", server.target, "library.Book").stdout
    assert "author_detail" in described

    if not BUF.exists():
        if os.environ.get("DJANGO_GRPC_BUS_REQUIRE_BUF"):
            pytest.fail(f"buf is required (DJANGO_GRPC_BUS_REQUIRE_BUF) but {BUF} is missing")
        pytest.skip("buf is not installed (make tools installs it with npm)")
    done = subprocess.run(
        [str(BUF), "curl", "--protocol", "grpc", "--http2-prior-knowledge",
         f"http://{server.target}/library.Book/Retrieve", "-d", json.dumps({"id": book["id"]})],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    printed = json.loads(done.stdout)
    # protobuf's JSON: camelCase names, int64 (a BigAutoField's) as a string
    assert printed["authorDetail"] == {
        "id": str(book["author"]),
        "name": "Ursula K. Le Guin",
        "born": "1929-10-21",
    }
    assert printed["titleWords"] == "5"


def test_a_list_of_1000_books_with_nested_authors_runs_a_constant_number_of_queries(
    new_project, server
):
    found = result_of(manage(new_project, "shell", "-c", COUNT_QUERIES, timeout=300).stdout)
    batch = found["batch"]
    small, large = found["books_10"], found["books_1000"]
    # One SELECT of books joined to their authors, however many rows: no query per row.
    assert len(small) == len(large) == 1, (small, large)
    assert "JOIN" in large[0].upper()
    # Authors with their books (many=True): one query for the authors, one per batch for
    # their books (a prefetch per batch of LIST_BATCH_SIZE rows), never one per author.
    assert found["author_books_200"] == 1000
    assert len(found["authors_2"]) == 2
    assert len(found["authors_200"]) == 1 + -(-200 // batch)


WRITABLE = """
import json
from django_grpc_bus.client.exceptions import CallError
from django_grpc_bus.client.registry import registry

author = registry.library.Author.create(
    {"name": "Octavia E. Butler", "books": [{"title": "Kindred", "price": "9.00"},
                                            {"title": "Dawn", "price": "8.00"}]}
)
before = registry.library.Author.count({})
try:
    registry.library.Author.create(
        {"name": "Nobody", "books": [{"title": "Fine", "price": "1.00"},
                                     {"title": "", "price": "not a number"}]}
    )
except CallError as error:
    failure = {"code": error.code().name, "violations": error.violations}
print("RESULT " + json.dumps({"author": author, "failure": failure,
                              "unchanged": registry.library.Author.count({}) == before}))
"""


def test_writable_nested_data_is_validated_as_drf_validates_it(new_project, server):
    found = result_of(consumer_shell(new_project, server.port, WRITABLE))
    books = found["author"]["books"]
    assert [(b["title"], b["price"]) for b in books] == [("Kindred", "9.00"), ("Dawn", "8.00")]
    assert found["failure"]["code"] == "INVALID_ARGUMENT"
    fields = {field for field, _description in found["failure"]["violations"]}
    assert fields == {"books[1].title", "books[1].price"}
    assert found["unchanged"]  # nothing half-written
