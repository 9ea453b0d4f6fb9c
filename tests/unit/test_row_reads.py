"""Retrieve read from row values (django_grpc_bus.row_reads) gives the message get_object gives."""

from __future__ import annotations

import datetime as dt
import importlib
import uuid
from decimal import Decimal

import grpc
import pytest
from django.db import connection, models
from django.test.utils import CaptureQueriesContext
from rest_framework import permissions
from rest_framework import serializers as drf_serializers

from django_grpc_bus import row_reads
from django_grpc_bus.errors import GrpcError
from django_grpc_bus.generics import RetrieveService
from django_grpc_bus.serializers import ModelProtoSerializer

from .fakes import FakeContext
from .test_serializers import make_everything


@pytest.fixture
def classes(compiled):
    """A column-only serializer and an open Retrieve service of catalog.Everything and Token."""
    from catalog import models

    everything_pb2 = importlib.import_module("generated_grpc.grpc.Everything_pb2")
    token_pb2 = importlib.import_module("generated_grpc.grpc.Token_pb2")

    class Columns(ModelProtoSerializer):
        class Meta:
            model = models.Everything
            proto_class = everything_pb2.EverythingData
            exclude = ["tags"]  # many-to-many: not a column

    class Everything(RetrieveService):
        queryset = models.Everything.objects.all()
        serializer_class = Columns
        authentication_classes: list[type] = []
        permission_classes: list[type] = []

    class TokenSerializer(ModelProtoSerializer):
        class Meta:
            model = models.Token
            proto_class = token_pb2.TokenData

    class Tokens(RetrieveService):
        queryset = models.Token.objects.all()
        serializer_class = TokenSerializer
        authentication_classes: list[type] = []
        permission_classes: list[type] = []

    return type(
        "Classes",
        (),
        {
            "Columns": Columns,
            "Everything": Everything,
            "Tokens": Tokens,
            "models": models,
            "everything_pb2": everything_pb2,
            "token_pb2": token_pb2,
        },
    )


def service(service_class, request):
    return service_class(
        request=request, context=FakeContext(), action="retrieve", response_class=None
    )


def both_ways(service_class, request):
    """(message read from the row, message of get_object()) for one request."""
    from_row = row_reads.retrieve_message(service(service_class, request))
    usual = service(service_class, request)
    return from_row, usual.get_serializer_class().to_message(usual.get_object())


@pytest.mark.django_db
def test_the_row_gives_the_message_get_object_gives(classes):
    row = make_everything()
    variants = [
        {},
        {"f_null_int": None, "f_null_char": None, "f_null_decimal": None, "f_char": "é\U0001f600"},
        {"f_decimal": "-0.0000000001", "f_float": -0.0, "f_null_datetime": None},
    ]
    everything = classes.models.Everything.objects
    request = classes.everything_pb2.EverythingLookupRequest(id=row.pk)
    for changes in variants:
        everything.filter(pk=row.pk).update(**changes)
        from_row, usual = both_ways(classes.Everything, request)
        assert from_row is not None
        assert from_row == usual
        assert from_row.SerializeToString(deterministic=True) == usual.SerializeToString(
            deterministic=True
        )


@pytest.mark.django_db
def test_a_uuid_key_given_as_text_finds_its_row(classes):
    token = classes.models.Token.objects.create(label="t")
    request = classes.token_pb2.TokenLookupRequest(key=str(token.key))
    from_row, usual = both_ways(classes.Tokens, request)
    assert from_row is not None and from_row == usual
    assert from_row.key == str(token.key)


@pytest.mark.django_db
def test_one_query_as_get_object_makes(classes):
    row = make_everything()
    request = classes.everything_pb2.EverythingLookupRequest(id=row.pk)
    row_reads.retrieve_message(service(classes.Everything, request))  # compiled on first use
    with CaptureQueriesContext(connection) as queries:
        assert row_reads.retrieve_message(service(classes.Everything, request)) is not None
    assert len(queries) == 1


@pytest.mark.django_db
def test_a_missing_row_is_not_found_with_get_objects_message(classes):
    request = classes.token_pb2.TokenLookupRequest(key=str(uuid.UUID(int=7)))
    with pytest.raises(GrpcError) as from_row:
        row_reads.retrieve_message(service(classes.Tokens, request))
    with pytest.raises(GrpcError) as usual:
        service(classes.Tokens, request).get_object()
    assert from_row.value.code == usual.value.code == grpc.StatusCode.NOT_FOUND
    assert str(from_row.value) == str(usual.value)


@pytest.mark.django_db
def test_a_value_that_is_no_key_goes_the_usual_way(classes):
    request = classes.token_pb2.TokenLookupRequest(key="not a uuid")
    assert row_reads.retrieve_message(service(classes.Tokens, request)) is None


@pytest.mark.django_db
def test_a_lookup_through_a_relation_goes_the_usual_way(classes):
    row = make_everything()
    request = classes.everything_pb2.EverythingLookupRequest(token=str(row.token_id))
    assert row_reads.retrieve_message(service(classes.Everything, request)) is None


def test_the_users_hooks_declared_fields_and_filters_switch_it_off(classes):
    base = classes.Everything
    assert row_reads.row_readable(base, base.serializer_class)

    class OwnQueryset(base):
        def get_queryset(self):
            return super().get_queryset()

    class OwnObject(base):
        def get_object(self, message=None):
            return super().get_object(message)

    class Filtered(base):
        queryset = classes.models.Everything.objects.filter(f_bool=True)

    class Declared(classes.Columns):
        f_char = drf_serializers.CharField()

    class DeclaredService(base):
        serializer_class = Declared

    class Represented(classes.Columns):
        def to_representation(self, instance):
            return super().to_representation(instance)

    class RepresentedService(base):
        serializer_class = Represented

    for service_class in (OwnQueryset, OwnObject, Filtered, DeclaredService, RepresentedService):
        assert not row_reads.row_readable(service_class, service_class.serializer_class)


@pytest.mark.django_db
def test_object_permissions_need_the_instance(classes):
    class Checked(permissions.BasePermission):
        def has_object_permission(self, request, view, obj):
            return True

    class Guarded(classes.Everything):
        permission_classes = [Checked]

    row = make_everything()
    request = classes.everything_pb2.EverythingLookupRequest(id=row.pk)
    assert row_reads.retrieve_message(service(Guarded, request)) is None


@pytest.mark.django_db
def test_two_lookups_take_their_values_in_order(compiled):
    """A row named by its id and its email (both unique; keyword order would put email first):
    found when both match, NOT_FOUND with get_object's message when they name different rows."""
    from shop import models
    from shop.serializers import CustomerSerializer

    customer_pb2 = importlib.import_module("generated_grpc.grpc.Customer_pb2")

    class Customers(RetrieveService):
        queryset = models.Customer.objects.all()
        serializer_class = CustomerSerializer
        authentication_classes: list[type] = []
        permission_classes: list[type] = []

    one = models.Customer.objects.create(email="one@example.com")
    two = models.Customer.objects.create(email="two@example.com")
    both = customer_pb2.CustomerLookupRequest(id=one.pk, email=one.email)
    from_row, usual = both_ways(Customers, both)
    assert from_row is not None and from_row == usual and from_row.email == one.email
    crossed = customer_pb2.CustomerLookupRequest(id=two.pk, email=one.email)
    with pytest.raises(GrpcError) as from_row_error:
        row_reads.retrieve_message(service(Customers, crossed))
    with pytest.raises(GrpcError) as usual_error:
        service(Customers, crossed).get_object()
    assert str(from_row_error.value) == str(usual_error.value)


@pytest.mark.django_db
@pytest.mark.parametrize("lookup_field", ["author__name", "author__name__iexact", "title__iexact"])
def test_a_lookup_field_spanning_a_relation_or_a_lookup_goes_the_usual_way(compiled, lookup_field):
    """A ``lookup_field`` that is a path (``author__name``) or has a lookup is no column of the
    model: the ORM's own way reads it (it used to fail every call with INTERNAL)."""
    from catalog import models
    from catalog.serializers import BookSerializer

    book_pb2 = importlib.import_module("generated_grpc.grpc.catalog_Book_pb2")

    class Books(RetrieveService):
        queryset = models.Book.objects.all()
        serializer_class = BookSerializer
        authentication_classes: list[type] = []
        permission_classes: list[type] = []

    Books.lookup_field = lookup_field
    Books.lookup_request_field = "isbn"  # the value is read from this request field
    author = models.Author.objects.create(name="Ada")
    book = models.Book.objects.create(title="Ada", author=author, isbn="1")
    request = book_pb2.BookLookupRequest(isbn="Ada")
    assert row_reads.row_readable(Books, BookSerializer)
    assert row_reads.retrieve_message(service(Books, request)) is None
    assert service(Books, request).get_object() == book


# -- List: messages from the driver's rows -------------------------------------------------------


def listed(plan, model):
    """(messages filled from the driver's rows, messages of the ORM's converted rows), and how
    many rows went the general way."""
    queryset = model.objects.order_by("pk").values_list(*plan.columns)
    rows, fill = row_reads.list_rows(queryset, plan, 2)  # 2 a fetch: rows cross chunks
    general = fill.__globals__.get("general")
    taken_generally = []
    if general is not None:  # the generated filler: count the rows it sends the general way
        fill.__globals__["general"] = lambda message, row: (
            taken_generally.append(row) or general(message, row)
        )
    try:
        from_rows = [fill(plan.message_class(), row) for row in rows]
    finally:
        if general is not None:
            fill.__globals__["general"] = general
    usual = [plan.fill_row(plan.message_class(), row) for row in queryset]
    return from_rows, usual, len(taken_generally)


def copies(row, *changes):
    """`row` saved again as a new row with each of `changes`."""
    from catalog.models import Token

    for change in changes:
        row.pk = row.id = None
        row.token = Token.objects.create(label="copy")  # one-to-one
        for name, value in change.items():
            setattr(row, name, value)
        row.save()


def same_messages(left, right):
    return [m.SerializeToString(deterministic=True) for m in left] == [
        m.SerializeToString(deterministic=True) for m in right
    ]


@pytest.mark.django_db
def test_list_rows_fill_the_messages_the_converted_rows_fill(classes):
    copies(
        make_everything(),
        {},
        {
            "f_null_int": None, "f_null_char": None, "f_null_decimal": None,
            "f_null_bool": None, "f_null_datetime": None, "f_null_date": None,
            "f_bool": False, "f_char": "é\U0001f600",
        },
        {
            "f_decimal": Decimal("-0.0000000001"), "f_float": -0.0,
            "f_datetime": dt.datetime(1, 1, 1, tzinfo=dt.timezone.utc),
            "f_null_datetime": dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.timezone.utc),
            "f_date": dt.date(1, 1, 1),
        },
    )  # fmt: skip
    plan = classes.Columns.plan()
    from_rows, usual, general = listed(plan, classes.models.Everything)
    assert len(from_rows) == 4
    assert same_messages(from_rows, usual)
    assert general == 0  # every row filled by the generated code


@pytest.mark.django_db
def test_values_the_filler_does_not_take_go_the_general_way(classes):
    """Text a program other than Django stored (a datetime with an offset, a date in short
    form, a boolean 2): the same messages as the ORM's converters give."""
    if connection.vendor != "sqlite":
        pytest.skip("SQLite's text columns: other databases keep their types")
    row = make_everything()
    first = row.pk
    copies(row, {})
    table = classes.models.Everything._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET f_datetime = %s, f_null_bool = %s WHERE id = %s",
            ["2024-02-29T23:59:59.5+02:00", 2, first],
        )
    plan = classes.Columns.plan()
    from_rows, usual, general = listed(plan, classes.models.Everything)
    assert same_messages(from_rows, usual)
    assert general == 1  # the aware datetime: only the general way makes no UTC of it
    assert from_rows[0].f_datetime.ToDatetime() == dt.datetime(2024, 2, 29, 21, 59, 59, 500000)


@pytest.mark.django_db
def test_without_use_tz_the_filler_writes_what_the_converters_give(classes, settings):
    make_everything(f_null_datetime=dt.datetime(2020, 6, 1, 12, tzinfo=dt.timezone.utc))
    plan = classes.Columns.plan()
    settings.USE_TZ = False
    settings.TIME_ZONE = "Europe/Paris"
    from_rows, usual, _general = listed(plan, classes.models.Everything)
    assert same_messages(from_rows, usual)
    if connection.vendor == "sqlite":  # stored in UTC, read as Paris time (UTC+2 in June)
        assert from_rows[0].f_null_datetime.ToDatetime() == dt.datetime(2020, 6, 1, 10)


def test_list_rows_leave_other_querysets_to_the_orm(classes):
    plan = classes.Columns.plan()
    everything = classes.models.Everything.objects
    assert row_reads.list_rows(everything.all(), plan, 10) is None  # model instances
    assert row_reads.list_rows(everything.values_list("id"), plan, 10) is None
    annotated = everything.values_list(*plan.columns).annotate(n=models.Count("tags"))
    assert row_reads.list_rows(annotated, plan, 10) is None
