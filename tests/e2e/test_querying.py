"""Querying a List (SPEC §8), end to end: filter, order_by, search, pages and Count.

A real `rungrpcserver` (``LIST_BATCH_SIZE`` 7, so results span several messages) on a fresh
database of this module's own, seeded through the ORM. Every expectation is computed here, with
django-filter and DRF themselves, on that same database (the alias ``served``, which a router
sends every read to, so that django-filter's model choice fields look rows up there too): the
FilterSet ``DjangoFilterBackend.get_filterset_class`` builds for the service, bound to the query
string a DRF client would send, ``SearchFilter`` with the text as its query parameter, and
``order_by(*terms, "id")``. Requests use the generated stubs, in proto spelling only.

Each filter of the catalog's EverythingService and BookService is tried with values taken from
the seeded rows (a middle value for comparisons, two for ``in`` and ``range``, parts of a text
for text lookups, both answers for ``isnull``), so every lookup on every field type django-filter
offers is covered; each case checks List (rows and order) and Count.
"""

from __future__ import annotations

import datetime as dt
import random
import uuid
from decimal import Decimal
from typing import Any

import dj_database_url
import django_filters
import grpc
import pytest
from catalog.models import Author, Book, Everything, Tag, Token
from catalog.services import BookService, EverythingService
from django.db import connections
from django.http import QueryDict
from django.test import override_settings
from django.utils.duration import duration_iso_string
from django_filters.rest_framework import DjangoFilterBackend
from google.protobuf import duration_pb2, timestamp_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from rest_framework.filters import SearchFilter
from support import ON_POSTGRES, bus_env, running_server

from django_grpc_bus.errors import GrpcError
from django_grpc_bus.testing import stub_for

TIMEOUT = 10
Code = grpc.StatusCode
UTC = dt.timezone.utc
SERVED = "served"  # the test process's alias for the server's database
ROWS = 36
LOOKUPS = {
    "exact", "in", "range", "lt", "lte", "gt", "gte", "icontains", "startswith", "iexact",
    "endswith", "isnull",
}  # fmt: skip
WORDS = ["Alpha", "beta", "Gamma", "delta", "Epsilon", "zeta", "Eta", "theta", "Iota"]


def filter_names(service: type, model: type) -> list[str]:
    """django-filter's names of the filters of the FilterSet it builds for `service`."""
    queryset = model._default_manager.all()
    return list(DjangoFilterBackend().get_filterset_class(service, queryset).base_filters)


FILTER_CASES = [
    (service, model, name)
    for service, model in ((EverythingService, Everything), (BookService, Book))
    for name in filter_names(service, model)
]


class ServedRouter:
    """Every read and write of this process's ORM goes to the server's database."""

    def db_for_read(self, model: type, **hints: Any) -> str:
        return SERVED

    db_for_write = db_for_read


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(fresh_database):
    with running_server(fresh_database, env=bus_env(LIST_BATCH_SIZE=7)) as server:
        yield server


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.target) as channel:
        yield channel


@pytest.fixture(scope="module")
def orm(fresh_database, django_db_blocker):
    """This process's ORM on the server's database, for seeding and for the expectations."""
    conf = connections.configure_settings({"default": dj_database_url.parse(fresh_database)})
    connections.settings[SERVED] = conf["default"]
    try:
        with django_db_blocker.unblock(), override_settings(DATABASE_ROUTERS=[ServedRouter()]):
            yield
    finally:
        connections[SERVED].close()
        del connections[SERVED]
        del connections.settings[SERVED]


@pytest.fixture(scope="module")
def seeded(orm):
    """Authors, tags, tokens, books and Everything rows of varied values (some null)."""
    rng = random.Random(12)
    authors = [Author.objects.create(name=f"{word} Writer") for word in WORDS[:4]]
    tags = [Tag.objects.create(name=f"tag-{index}") for index in range(3)]
    tokens = [Token.objects.create(label=f"token {index}") for index in range(4)]
    for index in range(12):
        Book.objects.create(
            title=f"{rng.choice(WORDS)} {rng.choice(WORDS).lower()} {index}",
            author=rng.choice(authors),
            isbn=f"978{index:010}",
        )

    def maybe(value: Any) -> Any:
        return None if rng.random() < 0.3 else value

    for index in range(ROWS):
        words = rng.sample(WORDS, 3)
        row = Everything.objects.create(
            f_int=rng.randint(-1000, 1000),
            f_bigint=rng.randint(-(2**40), 2**40),
            f_smallint=rng.randint(-300, 300),
            f_posint=rng.randint(0, 5000),
            f_possmall=rng.randint(0, 300),
            f_posbig=rng.randint(0, 2**40),
            f_float=round(rng.uniform(-100, 100), 2),
            f_decimal=Decimal(rng.randint(-99999, 99999)) / 100,
            f_bool=rng.random() < 0.5,
            f_char=" ".join(words),
            f_text=" ".join(rng.sample(WORDS, 4)).lower(),
            f_slug=f"slug-{index % 6}",
            f_email=f"{words[0]}{index}@Example.com",
            f_url=f"https://example.com/{words[1].lower()}/{index}",
            f_uuid=uuid.UUID(int=rng.getrandbits(128)),
            f_ip=f"10.0.{rng.randint(0, 3)}.{rng.randint(1, 9)}",
            f_filepath=f"/tmp/file{index % 5}",
            f_file=f"files/{index}.txt",
            f_image=f"images/{index}.png",
            f_date=dt.date(rng.randint(1999, 2030), rng.randint(1, 12), rng.randint(1, 28)),
            f_datetime=dt.datetime(2000, 1, 1, tzinfo=UTC)
            + dt.timedelta(days=rng.randint(0, 11000), microseconds=rng.randint(0, 86400 * 10**6)),
            f_time=dt.time(rng.randint(0, 23), rng.randint(0, 59), rng.randint(0, 59)),
            f_duration=dt.timedelta(days=rng.randint(-3, 3), seconds=rng.randint(0, 86399)),
            f_binary=b"",
            f_json={"index": index},
            f_choice_int=rng.choice([1, 2]),
            f_choice_str=rng.choice(["a", "b"]),
            f_custom=words[2],
            f_null_int=maybe(rng.randint(-50, 50)),
            f_null_char=maybe(rng.choice(WORDS)),
            f_null_decimal=maybe(Decimal(rng.randint(0, 9999)) / 100),
            f_null_bool=maybe(rng.random() < 0.5),
            f_null_datetime=maybe(dt.datetime(2020, rng.randint(1, 12), 1, tzinfo=UTC)),
            f_null_date=maybe(dt.date(2021, rng.randint(1, 12), rng.randint(1, 28))),
            f_default_int=rng.randint(0, 9),
            f_blank_char=rng.choice(["", "x", "y"]),
            author=rng.choice(authors),
            editor=maybe(rng.choice(authors)),
            token=maybe(tokens[index % 4]) if index < 4 else None,
        )
        row.tags.set(rng.sample(tags, rng.randint(0, 2)))


@pytest.fixture(scope="module")
def stubs(channel, seeded, compiled):
    from generated_grpc.grpc import Everything_pb2, catalog_Book_pb2

    return {
        Everything: (stub_for(Everything, channel), Everything_pb2.EverythingListRequest),
        Book: (stub_for(Book, channel), catalog_Book_pb2.BookListRequest),
    }


# -- the expectations: django-filter and DRF, on the same database --------------------------------


def text(value: Any) -> str:
    """A value as a DRF client would write it in a query string."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dt.timedelta):
        return duration_iso_string(value)
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    if hasattr(value, "pk"):
        return str(value.pk)
    return str(value)


def query_string(filters: dict[str, Any], multiple: frozenset[str]) -> QueryDict:
    data = QueryDict(mutable=True)
    for name, value in filters.items():
        if isinstance(value, list) and name in multiple:
            data.setlist(name, [text(item) for item in value])
        elif isinstance(value, list):
            data[name] = ",".join(text(item) for item in value)
        else:
            data[name] = text(value)
    return data


class QueryRequest:
    def __init__(self, **params: str) -> None:
        self.query_params = params


def expected_ids(
    service: type,
    model: type,
    filters: dict[str, Any] | None = None,
    order_by: list[str] | None = None,
    search: str = "",
) -> list[int]:
    queryset = model.objects.all()
    filterset_class = DjangoFilterBackend().get_filterset_class(service, queryset)
    multiple = frozenset(
        name
        for name, filter_ in filterset_class.base_filters.items()
        if isinstance(filter_, django_filters.MultipleChoiceFilter)
    )
    filterset = filterset_class(data=query_string(filters or {}, multiple), queryset=queryset)
    assert filterset.is_valid(), filterset.errors
    queryset = filterset.qs
    if search:
        queryset = SearchFilter().filter_queryset(QueryRequest(search=search), queryset, service)
    return list(queryset.order_by(*(order_by or []), "id").values_list("id", flat=True))


# -- requests --------------------------------------------------------------------------------------


def proto_value(field: Any, value: Any) -> Any:
    """A Python value as the typed request field `field` carries it."""
    if isinstance(value, dt.datetime):
        message = timestamp_pb2.Timestamp()
        message.FromDatetime(value)
        return message
    if isinstance(value, dt.timedelta):
        message = duration_pb2.Duration()
        message.FromTimedelta(value)
        return message
    if hasattr(value, "pk"):
        return value.pk
    if field.type == field.TYPE_STRING:
        return value.isoformat() if isinstance(value, (dt.date, dt.time)) else str(value)
    return value


def list_request(
    request_class: type,
    filters: dict[str, Any] | None = None,
    **fields: Any,
) -> Any:
    request = request_class(**fields)
    filter_message = request.filter if filters else None
    for name, value in (filters or {}).items():
        proto_name = name.replace("__", "_")  # the naming rule (SPEC §8)
        field = filter_message.DESCRIPTOR.fields_by_name[proto_name]
        if isinstance(value, list):
            getattr(filter_message, proto_name).extend(proto_value(field, v) for v in value)
        elif field.message_type is not None:
            getattr(filter_message, proto_name).CopyFrom(proto_value(field, value))
        else:
            setattr(filter_message, proto_name, proto_value(field, value))
    return request


def served_ids(stubs: dict, model: type, request: Any) -> tuple[list[int], int]:
    """The ids List streams for `request` (every message's rows, in order), and Count's count."""
    stub, _ = stubs[model]
    responses = list(stub.List(request, timeout=TIMEOUT))
    assert all(len(response.results) <= 7 for response in responses)
    ids = [row.id for response in responses for row in response.results]
    return ids, stub.Count(request, timeout=TIMEOUT).count


def refused(call: Any, request: Any) -> dict[str, list[str]]:
    """The field violations of a call that must fail INVALID_ARGUMENT."""
    with pytest.raises(grpc.RpcError) as info:
        result = call(request, timeout=TIMEOUT)
        if not hasattr(result, "count"):
            list(result)
    assert info.value.code() == Code.INVALID_ARGUMENT, info.value.details()
    status = rpc_status.from_call(info.value)
    found: dict[str, list[str]] = {}
    for detail in status.details:
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(bad_request):
            for violation in bad_request.field_violations:
                found.setdefault(violation.field, []).append(violation.description)
    return found


# -- values for each filter, from the seeded rows -------------------------------------------------


def split(name: str) -> tuple[str, str]:
    """``f_date__year__gte`` -> (``f_date__year``, ``gte``); an exact lookup is unnamed."""
    path, _, last = name.rpartition("__")
    return (path, last) if path and last in LOOKUPS else (name, "exact")


def values_to_try(model: type, name: str) -> list[Any]:
    """Filter values taken from the rows: each matches some rows (and comparisons not all)."""
    path, lookup = split(name)
    if lookup == "isnull":
        return [True, False]
    column = sorted(
        {value for value in model.objects.values_list(path, flat=True) if value is not None}
    )
    middle, quarter = column[len(column) // 2], column[len(column) // 4]
    if lookup == "range" or (len(column) > 2 and (lookup == "in" or name == "tags")):
        return [[quarter, middle]]
    if lookup == "in":  # two choices only: both would be every row
        return [[middle]]
    if lookup == "icontains":
        return [middle[1:4].upper()]
    if lookup in ("startswith", "endswith"):  # the shortest end that some rows lack
        ends = (middle[:k] if lookup == "startswith" else middle[-k:] for k in range(3, 99))
        return [next(end for end in ends if not all(end in value for value in column))]
    if lookup == "iexact":
        return [middle.swapcase()]
    return [middle]


# -- every filter --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("service", "model", "name"),
    FILTER_CASES,
    ids=[f"{model.__name__}.{name}" for _service, model, name in FILTER_CASES],
)
def test_each_filter_gives_what_django_filter_gives(stubs, service, model, name):
    _stub, request_class = stubs[model]
    total = model.objects.count()
    narrowed = False
    for value in values_to_try(model, name):
        expected = expected_ids(service, model, {name: value})
        ids, count = served_ids(stubs, model, list_request(request_class, {name: value}))
        assert ids == expected, (name, value)
        assert count == len(expected)
        narrowed |= 0 < len(expected) < total
    assert narrowed, f"{name}: no value tried matched some rows but not all"


def test_filters_combine_and_unset_ones_do_not_filter(stubs):
    _stub, request_class = stubs[Everything]
    filters = {"f_int__gte": -500, "f_bool": True, "f_char__icontains": "a"}
    ids, count = served_ids(stubs, Everything, list_request(request_class, filters))
    assert ids == expected_ids(EverythingService, Everything, filters) and count == len(ids)
    # An empty filter message, and unset fields in it, filter nothing.
    request = request_class()
    request.filter.SetInParent()
    ids, count = served_ids(stubs, Everything, request)
    assert ids == expected_ids(EverythingService, Everything) and count == ROWS


# -- ordering and search ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "order_by",
    [["f_int"], ["-f_int"], ["f_char", "-id"], ["-f_decimal"], ["f_datetime"], ["-f_datetime"],
     ["f_char,-f_int"], ["-id"]],
    ids=repr,
)  # fmt: skip
def test_order_by_gives_what_ordering_filter_gives(stubs, order_by):
    _stub, request_class = stubs[Everything]
    filters = {"f_int__gt": -800}
    terms = [term for item in order_by for term in item.split(",")]
    request = list_request(request_class, filters, order_by=order_by)
    ids, _count = served_ids(stubs, Everything, request)
    assert ids == expected_ids(EverythingService, Everything, filters, order_by=terms)
    assert len(ids) > 1


def test_book_ordering(stubs):
    _stub, request_class = stubs[Book]
    for order_by in (["title"], ["-isbn"], ["-title", "isbn"]):
        ids, count = served_ids(stubs, Book, request_class(order_by=order_by))
        assert ids == expected_ids(BookService, Book, order_by=order_by) and count == 12


@pytest.mark.parametrize(
    ("model", "service", "search"),
    [
        (Everything, EverythingService, "alpha"),
        (Everything, EverythingService, "ALPHA beta"),
        (Everything, EverythingService, '"gamma delta"'),
        (Everything, EverythingService, "eta,zeta"),
        (Everything, EverythingService, "nothing-like-it"),
        (Book, BookService, "writer"),  # author__name
        (Book, BookService, "gamma 1"),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_search_gives_what_search_filter_gives(stubs, model, service, search):
    _stub, request_class = stubs[model]
    ids, count = served_ids(stubs, model, request_class(search=search))
    assert ids == expected_ids(service, model, search=search)
    assert count == len(ids)


def test_filter_search_and_order_together(stubs):
    _stub, request_class = stubs[Book]
    author = Author.objects.order_by("id").first()
    filters = {"author__in": [author, Author.objects.order_by("id").last()]}
    request = list_request(request_class, filters, search="a", order_by=["-title"])
    ids, count = served_ids(stubs, Book, request)
    expected = expected_ids(BookService, Book, filters, order_by=["-title"], search="a")
    assert ids == expected and count == len(expected) and expected


# -- pages -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("page_size", [1, 4, 7, 50])
def test_pages_with_a_query_add_up_to_the_whole_result(stubs, page_size):
    stub, request_class = stubs[Everything]
    filters = {"f_int__gte": -900, "f_char__icontains": "e"}
    expected = expected_ids(
        EverythingService, Everything, filters, order_by=["-f_decimal"], search="a"
    )
    assert len(expected) > 4
    seen: list[int] = []
    token = ""
    for _page in range(ROWS + 2):
        request = list_request(request_class, filters, page_size=page_size, page_token=token)
        request.order_by[:], request.search = ["-f_decimal"], "a"
        responses = list(stub.List(request, timeout=TIMEOUT))
        rows = [row.id for response in responses for row in response.results]
        assert len(rows) <= page_size
        seen += rows
        token = responses[-1].next_page_token
        if not token:
            break
    assert seen == expected


def test_a_page_token_is_bound_to_its_filter_order_and_search(stubs):
    stub, request_class = stubs[Everything]
    filters = {"f_int__gte": -900}
    first = list_request(request_class, filters, page_size=3, order_by=["f_int"], search="a")
    token = list(stub.List(first, timeout=TIMEOUT))[-1].next_page_token
    assert token

    same = list_request(
        request_class, filters, page_size=3, page_token=token, order_by=["f_int"], search="a"
    )
    assert next(iter(stub.List(same, timeout=TIMEOUT))).results  # the same query: accepted
    others = [
        list_request(request_class, {"f_int__gte": -899}, order_by=["f_int"], search="a"),
        list_request(request_class, filters, order_by=["-f_int"], search="a"),
        list_request(request_class, filters, order_by=["f_int"], search="b"),
        list_request(request_class, filters, order_by=["f_int"]),
        request_class(),
    ]
    for other in others:
        other.page_size, other.page_token = 3, token
        violations = refused(stub.List, other)
        assert set(violations) == {"page_token"}, violations

    # A token of an unfiltered list (the format of earlier versions) is refused with a query.
    plain = list(stub.List(request_class(page_size=3), timeout=TIMEOUT))[-1].next_page_token
    assert list(stub.List(request_class(page_size=3, page_token=plain), timeout=TIMEOUT))
    filtered = list_request(request_class, filters, page_size=3, page_token=plain)
    assert set(refused(stub.List, filtered)) == {"page_token"}


# -- Count -----------------------------------------------------------------------------------------


def test_count_counts_the_rows_without_a_query_too(stubs):
    for model, total in ((Everything, ROWS), (Book, 12)):
        stub, request_class = stubs[model]
        assert stub.Count(request_class(), timeout=TIMEOUT).count == total
        assert stub.Count(request_class(page_size=2), timeout=TIMEOUT).count == total


# -- what is refused -------------------------------------------------------------------------------


OUT_OF_RANGE = timestamp_pb2.Timestamp(seconds=253402300800)  # past 9999-12-31
INVALID_CASES = [
    ({"filter": {"f_decimal": "abc"}}, "filter.f_decimal", "Enter a number."),
    ({"filter": {"f_date": "2020-13-45"}}, "filter.f_date", "Enter a valid date."),
    ({"filter": {"f_date_gte": "yesterday"}}, "filter.f_date_gte", "Enter a valid date."),
    ({"filter": {"f_time": "25:00"}}, "filter.f_time", "Enter a valid time."),
    ({"filter": {"f_uuid": "not-a-uuid"}}, "filter.f_uuid", "Enter a valid UUID."),
    ({"filter": {"f_int_in": [1]}, "order_by": ["nope"]}, "order_by", "'nope'"),
    ({"order_by": ["f_text"]}, "order_by", "'f_text'"),
    ({"order_by": ["--f_int"]}, "order_by", "'--f_int'"),
    ({"filter": {"f_int_range": [1]}}, "filter.f_int_range", "Range query expects two values."),
    ({"filter": {"author": 987654}}, "filter.author", "Select a valid choice."),
    ({"filter": {"f_datetime": OUT_OF_RANGE}}, "filter.f_datetime", "Timestamp"),
    ({"filter": {"f_char_in": ["a,b"]}}, "filter.f_char_in", "comma"),
    ({"filter": {"f_date_year": 2**31 - 1}}, "filter.f_date_year", "out of range"),
    ({"filter": {"f_float": float("nan")}}, "filter.f_float", "Enter a number."),
    ({"search": "a\x00b"}, "search", "Null characters are not allowed."),
    ({"search": " ".join(["term"] * 101)}, "search", "at most 100 terms"),
]


@pytest.mark.parametrize(
    ("fields", "path", "words"), INVALID_CASES, ids=[case[1] for case in INVALID_CASES]
)
def test_invalid_queries_are_invalid_argument_naming_the_field(stubs, fields, path, words):
    stub, request_class = stubs[Everything]
    request = request_class(**fields)
    for call in (stub.List, stub.Count):
        violations = refused(call, request)
        assert list(violations) == [path], violations
        assert any(words in text for text in violations[path]), violations


def unknown_field(number: int, value: int = 1) -> bytes:
    """A varint field `number` on the wire: a field of a newer proto than the server's."""
    out = bytearray()
    for n in (number << 3, value):
        while n > 0x7F:
            out.append(n & 0x7F | 0x80)
            n >>= 7
        out.append(n)
    return bytes(out)


@pytest.mark.parametrize("where", ["", "filter"])
def test_fields_of_a_newer_proto_are_refused_not_ignored(stubs, where):
    stub, request_class = stubs[Everything]
    request = request_class()
    (request.filter if where else request).MergeFromString(unknown_field(999))
    for call in (stub.List, stub.Count):
        violations = refused(call, request)
        assert violations == {where: ["Unknown field numbers: 999."]}


def test_a_query_past_sqlite_limits_is_invalid_argument(stubs):
    """SQLite refuses a LIKE pattern over 50,000 bytes; PostgreSQL runs it."""
    stub, request_class = stubs[Everything]
    request = list_request(request_class, {"f_char__icontains": "x" * 60_000})
    if not ON_POSTGRES:
        with pytest.raises(grpc.RpcError) as info:
            stub.Count(request, timeout=TIMEOUT)
        assert info.value.code() == Code.INVALID_ARGUMENT
        assert "too large" in info.value.details()
    else:
        assert served_ids(stubs, Everything, request) == ([], 0)


def test_count_on_a_service_that_declares_no_query(channel, stubs, compiled):
    from generated_grpc.grpc import Tag_pb2

    assert "filter" not in Tag_pb2.TagListRequest.DESCRIPTOR.fields_by_name
    tags = stub_for(Tag, channel)
    assert tags.Count(Tag_pb2.TagListRequest(), timeout=TIMEOUT).count == 3


# -- in process: the default ordering, and what a stale proto would ask -------------------------


class OrderedBookService(BookService):
    ordering = ["-title"]


@pytest.fixture
def book_request(compiled):
    from generated_grpc.grpc import catalog_Book_pb2

    return catalog_Book_pb2.BookListRequest


@pytest.mark.parametrize(
    ("order_by", "expected"), [([], ("-title",)), (["isbn"], ("isbn",))], ids=repr
)
def test_the_default_ordering_applies_when_no_order_by_is_given(book_request, order_by, expected):
    request = book_request(order_by=order_by)
    service = OrderedBookService(request=request, action="list")
    assert service.filter_queryset(service.get_queryset()).query.order_by == expected
    # Outside List and Count, the request is not a query.
    service = OrderedBookService(request=request, action="retrieve")
    assert service.filter_queryset(service.get_queryset()).query.order_by == ()


class TitlesOnlyBookService(BookService):
    filterset_fields = ["title"]
    search_fields = ()


@pytest.mark.parametrize(
    ("fields", "path"),
    [({"filter": {"author": 1}}, "filter.author"), ({"search": "x"}, "search")],
    ids=["filter", "search"],
)
def test_what_the_service_does_not_declare_is_refused_not_ignored(book_request, fields, path):
    """A proto compiled from other declarations than the service's (not regenerated)."""
    service = TitlesOnlyBookService(request=book_request(**fields), action="count")
    with pytest.raises(GrpcError) as info:
        service.filter_queryset(service.get_queryset())
    assert info.value.code == Code.INVALID_ARGUMENT
    assert [field for field, _text in info.value.violations] == [path]
