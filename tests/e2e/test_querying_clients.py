"""One query, every client (SPEC §8): the registry, aregistry, ``grpccall`` and ``buf curl``
get the rows django-filter and DRF's filters give for the same declarations, in Django's
spelling or the proto's; Count, pages, and the client's refusals before sending.

The server runs in this process (``GrpcTestServer``) on the test database, so the expected rows
come from the ORM on the very rows the server reads.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from catalog.models import Author, Book, Everything
from catalog.services import BookService, EverythingService
from django.core.management import call_command
from django.http import QueryDict
from django_filters.rest_framework import DjangoFilterBackend
from rest_framework.filters import SearchFilter
from rest_framework.request import Request
from rest_framework.test import APIRequestFactory
from support import servlet_entry

from django_grpc_bus.client.aio import aregistry
from django_grpc_bus.client.exceptions import RequestError
from django_grpc_bus.client.filters import django_spelling
from django_grpc_bus.client.registry import registry
from django_grpc_bus.protogen.query import filter_fields
from django_grpc_bus.testing import GrpcTestServer

TIMEOUT = 10
BUF = Path(__file__).resolve().parents[2] / ".tools/node_modules/.bin/buf"

TITLES = {
    "Ursula K. Le Guin": ["The Dispossessed", "The Left Hand of Darkness", "The Lathe of Heaven",
                          "A Wizard of Earthsea", "Always Coming Home"],
    "Octavia E. Butler": ["Kindred", "Parable of the Sower", "Dawn", "Wild Seed"],
    "Stanisław Lem": ["Solaris", "The Cyberiad", "His Master's Voice"],
}  # fmt: skip


@pytest.fixture(scope="module")
def server(compiled):
    with GrpcTestServer() as running:
        yield running


@pytest.fixture
def authors(transactional_db, server, settings) -> dict[str, int]:
    """The books above, on the database the server reads; the servlet ``q`` is the server."""
    settings.MESSAGE_BUS = {
        **settings.MESSAGE_BUS,
        "SERVLETS": {"q": servlet_entry(server.port, TIMEOUT)},
    }
    ids = {}
    for number, (name, titles) in enumerate(TITLES.items()):
        author = Author.objects.create(name=name)
        ids[name] = author.pk
        for index, title in enumerate(titles):
            Book.objects.create(title=title, author=author, isbn=f"978{number}{index:09d}")
    return ids


class Query:
    """One List request, in Django's spelling and the proto's, and what the ORM says it gives."""

    def __init__(self, filters: dict[str, Any], search: str = "", order_by: tuple = ()) -> None:
        self.filters = filters  # django-filter's names, values as the client sends them
        self.search = search
        self.order_by = list(order_by)

    def request(self, spelling: str = "django") -> dict[str, Any]:
        """The request dict, its filter keys as django-filter names them or as the proto does."""
        rename = (lambda name: name.replace("__", "_")) if spelling == "proto" else str
        request: dict[str, Any] = {"filter": {rename(k): v for k, v in self.filters.items()}}
        if self.search:
            request["search"] = self.search
        if self.order_by:
            request["order_by"] = self.order_by
        return request

    def expected(self) -> list[dict[str, Any]]:
        """The rows a DRF view with the service's declarations gives, by django-filter itself."""
        queryset = Book.objects.all()
        filterset_class = DjangoFilterBackend().get_filterset_class(BookService, queryset)
        data = QueryDict(mutable=True)
        for name, value in self.filters.items():
            data[name] = ",".join(map(str, value)) if isinstance(value, list) else str(value)
        filterset = filterset_class(data=data, queryset=queryset)
        assert filterset.is_valid(), filterset.errors
        queryset = filterset.qs
        if self.search:
            request = Request(APIRequestFactory().get("/", {"search": self.search}))
            queryset = SearchFilter().filter_queryset(request, queryset, BookService)
        rows = queryset.order_by(*self.order_by, "pk")
        return [{"id": b.pk, "title": b.title, "author": b.author_id, "isbn": b.isbn} for b in rows]


QUERIES = {
    "filter and order": lambda a: Query(
        {"title__icontains": "the", "author__in": [a["Ursula K. Le Guin"], a["Stanisław Lem"]]},
        order_by=("-title",),
    ),
    "search, filter and order": lambda a: Query(
        {"title__startswith": "The"}, search="guin", order_by=("isbn",)
    ),
    "exact filter": lambda a: Query({"author": a["Octavia E. Butler"]}, order_by=("title",)),
}


@pytest.fixture(params=list(QUERIES))
def query(request, authors) -> Query:
    made = QUERIES[request.param](authors)
    assert made.expected(), "a query that matches nothing proves little"
    assert len(made.expected()) < Book.objects.count()
    return made


# -- registry ----------------------------------------------------------------------------------


def test_registry_lists_and_counts_what_django_filter_gives(query):
    book = registry.q.Book
    expected = query.expected()
    assert list(book.list(query.request("django"))) == expected
    assert list(book.list(query.request("proto"))) == expected
    assert book.count(query.request("django")) == len(expected)
    assert book.count() == Book.objects.count()


def test_registry_pages_through_a_filtered_list(query):
    expected = query.expected()
    rows, token, pages = [], "", 0
    while True:
        request = {**query.request(), "page_size": 2, "page_token": token}
        batches = list(registry.q.Book.list.batches(request))
        rows += [row for batch in batches for row in batch["results"]]
        token = batches[-1]["next_page_token"]
        pages += 1
        if not token:
            break
    assert rows == expected
    assert pages == math.ceil(len(expected) / 2)


def test_unknown_filter_name_is_refused_naming_both_spellings(authors):
    with pytest.raises(RequestError) as refused:
        registry.q.Book.list({"filter": {"price__lt": "10.00"}})
    text = str(refused.value)
    assert "catalog.Book.List: filter has no field 'price__lt' (read as price_lt)." in text
    assert "title_icontains (title__icontains)" in text
    assert "author_in (author__in)" in text
    assert "isbn" in text
    with pytest.raises(RequestError, match="filter has no field 'nope'"):
        registry.q.Book.count({"filter": {"nope": 1}})


def test_both_spellings_of_one_filter_are_refused(authors):
    request = {"filter": {"title__icontains": "a", "title_icontains": "b"}}
    with pytest.raises(RequestError) as refused:
        list(registry.q.Book.list(request))
    assert str(refused.value) == (
        "catalog.Book.List: filter title_icontains is given twice, as 'title__icontains' and "
        "'title_icontains'; give it once."
    )


def test_django_spelling_is_rebuilt_for_every_declared_filter():
    """grpclist and the errors show django-filter's own name for every filter the test
    project declares (reflection carries no comments, so it is rebuilt from the names)."""
    from generated_grpc.grpc import Everything_pb2, catalog_Book_pb2

    for service, model, data in (
        (BookService, Book, catalog_Book_pb2.BookData),
        (EverythingService, Everything, Everything_pb2.EverythingData),
    ):
        fields, _source = filter_fields(service, model)
        rows = {field.name for field in data.DESCRIPTOR.fields}
        assert len(fields) > 5
        for field in fields:
            assert django_spelling(field.name, rows) == field.filter_name


# -- aregistry ---------------------------------------------------------------------------------


def test_aregistry_lists_and_counts_the_same(query):
    async def call():
        try:
            book = aregistry.q.Book
            rows = [row async for row in book.list(query.request("django"))]
            awaited = await book.list(query.request("proto"))
            count = await book.count(query.request("django"))
            pages = [page async for page in book.list.batches({**query.request(), "page_size": 1})]
            return rows, awaited, count, pages
        finally:
            await aregistry.aclose()

    rows, awaited, count, pages = asyncio.run(call())
    expected = query.expected()
    assert rows == awaited == expected
    assert count == len(expected)
    assert [row for page in pages for row in page["results"]] == expected[:1]
    assert pages[-1]["next_page_token"] or len(expected) == 1


# -- grpccall ----------------------------------------------------------------------------------


def grpccall(*args: str) -> tuple[list[Any], str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("grpccall", "q", *args, stdout=out, stderr=err)
    return [json.loads(line) for line in out.getvalue().splitlines()], err.getvalue()


def test_grpccall_lists_counts_and_pages(query):
    expected = query.expected()
    request = json.dumps(query.request("django"))
    rows, err = grpccall("Book.list", request)
    assert rows == expected
    assert err == ""
    assert grpccall("Book.count", request) == ([{"count": len(expected)}], "")

    paged, paging = [], ["--page-size", "2"]
    for _ in range(len(expected) + 1):
        rows, err = grpccall("Book.list", request, *paging)
        paged += rows
        token = json.loads(err)["next_page_token"]  # stderr: the one JSON line
        if not token:
            break
        paging = ["--page-size", "2", "--page-token", token]
    assert paged == expected


def test_grpccall_refuses_an_unknown_filter_name(authors):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="filter has no field 'price__lt'"):
        grpccall("Book.list", '{"filter": {"price__lt": "1"}}')


# -- buf curl ----------------------------------------------------------------------------------


def buf_curl(server: GrpcTestServer, method: str, request: dict[str, Any]) -> list[dict]:
    """`buf curl` over gRPC with server reflection; the messages it printed."""
    if not BUF.exists():
        if os.environ.get("DJANGO_GRPC_BUS_REQUIRE_BUF"):
            pytest.fail(f"buf is required (DJANGO_GRPC_BUS_REQUIRE_BUF) but {BUF} is missing")
        pytest.skip("buf is not installed (make tools installs it with npm)")
    done = subprocess.run(
        [str(BUF), "curl", "--protocol", "grpc", "--http2-prior-knowledge",
         f"http://{server.target}/catalog.Book/{method}", "-d", json.dumps(request)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    decoder, text, messages = json.JSONDecoder(), done.stdout.strip(), []
    while text:
        message, end = decoder.raw_decode(text)
        messages.append(message)
        text = text[end:].lstrip()
    return messages


def test_buf_curl_gets_the_same_rows_and_count(query, server):
    expected = query.expected()
    request = query.request("proto")  # protobuf's JSON: field names (or their camelCase)
    batches = buf_curl(server, "List", request)
    rows = [row for batch in batches for row in batch.get("results", [])]
    # protobuf's JSON writes int64 as a string, and leaves zero values out
    assert [{**row, "id": int(row["id"])} for row in rows] == expected
    assert buf_curl(server, "Count", request) == [{"count": str(len(expected))}]


# -- grpclist ----------------------------------------------------------------------------------


def test_grpclist_shows_the_query_fields_in_both_spellings(authors):
    out = io.StringIO()
    call_command("grpclist", "q", "Book", stdout=out)
    lines = out.getvalue().splitlines()
    at = lines.index("  list (List): catalog.BookListRequest -> stream catalog.BookListResponse")
    assert lines[at + 1 : at + 14] == [
        "    request:",
        "      page_size: int32",
        "      page_token: string",
        "      filter: catalog.BookFilter",
        "        title: optional string",
        "        title_icontains: optional string (title__icontains)",
        "        title_startswith: optional string (title__startswith)",
        "        author: optional int32",
        "        author_in: repeated int32 (author__in)",
        "        isbn: optional string",
        "      order_by: repeated string",
        "      search: string",
        "  count (Count): catalog.BookListRequest -> catalog.BookCountResponse",
    ]
