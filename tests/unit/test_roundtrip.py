"""Every field type, both ways, through the code that runs in production.

A database row -> the serializer's message -> bytes -> the client's values (the type map's
"Python value" column) -> the client's request message -> bytes -> ``data_from_message`` -> DRF
validation -> the same row, saved. The client's message class is built from descriptors in a
pool of its own, as the client builds it from reflection: conversion needs nothing else.
"""

import datetime as dt
import importlib
import tempfile
import uuid
from decimal import Decimal

import pytest
from catalog.models import Author, Everything, Tag, Token
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from django_grpc_bus.conversion.messages import build_message, message_to_dict
from django_grpc_bus.meta import selectable_fields

UTC = dt.timezone.utc
FIELDS = selectable_fields(Everything)


def client_value(value):
    """A model value as the client reads it (the README's type map)."""
    if isinstance(value, Decimal):
        return format(value, "f")  # the exact digits, never an exponent
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (dt.date, dt.time)) and not isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, memoryview):
        return bytes(value)
    if hasattr(value, "storage"):  # a FieldFile: its storage name
        return value.name
    return value


def row_values(instance):
    """Every selected field of a row, by its message field's name, as the client reads it."""
    result = {}
    for field in FIELDS:
        if field.many_to_many:
            result[field.name] = sorted(getattr(instance, field.name).values_list("pk", flat=True))
        else:
            result[field.name] = client_value(getattr(instance, field.attname))
    return result


def saved_values(instance):
    """`row_values` of a row saved again: ``auto_now`` moves on."""
    result = row_values(instance)
    del result["f_auto_now"]
    return result


@pytest.fixture
def filepath():
    # Everything.f_filepath is a FilePathField(path="/tmp"): DRF accepts the files there.
    with tempfile.NamedTemporaryFile(dir="/tmp", suffix=".txt") as handle:
        yield handle.name


@pytest.fixture
def make_row(db, filepath):
    def make(**overrides):
        author = Author.objects.create(name="Ursula")
        row = dict(
            f_int=-(2**31),
            f_bigint=2**63 - 1,
            f_smallint=-32768,
            f_posint=2**31 - 1,
            f_possmall=32767,
            f_posbig=2**63 - 1,
            f_float=0.1 + 0.2,
            f_decimal=Decimal("12345678901234567890.0123456789"),
            f_bool=True,
            f_char="héllo ✓",
            f_text="line 1\nline 2\x7f",
            f_slug="a-slug",
            f_email="a@example.com",
            f_url="https://example.com/x?y=1",
            f_uuid=uuid.UUID("12345678-1234-5678-1234-567812345678"),
            f_ip="2001:db8::1",
            f_filepath=filepath,
            f_file="files/a.txt",
            f_image="images/b.png",
            f_date=dt.date(1999, 12, 31),
            f_datetime=dt.datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=UTC),
            f_time=dt.time(13, 14, 15, 161718),
            f_duration=dt.timedelta(days=-1, seconds=5, microseconds=7),
            f_binary=b"\x00\x01\xffbytes",
            f_json={"list": [1, 2.5, None, True, "x"], "big": 2**40, "nested": {"k": []}},
            f_choice_int=2,
            f_choice_str="b",
            f_custom="lower",
            f_null_int=0,
            f_null_char="",
            f_null_decimal=Decimal("0.00"),
            f_null_bool=False,
            f_null_datetime=dt.datetime(1970, 1, 1, tzinfo=UTC),
            f_null_date=dt.date(1970, 1, 1),
            f_null_json=[],
            f_default_int=0,
            f_blank_char="",
            author=author,
            editor=author,
            token=Token.objects.create(label="t"),
        )
        row.update(overrides)
        instance = Everything.objects.create(**row)
        instance.tags.set([Tag.objects.create(name="a"), Tag.objects.create(name="b")])
        return Everything.objects.get(pk=instance.pk)

    return make


@pytest.fixture
def serializer_class(compiled):
    return importlib.import_module("catalog.serializers").EverythingSerializer


def client_message_class(message_class):
    """`message_class` as the client has it: from descriptors alone, in a pool of its own."""
    pool = descriptor_pool.DescriptorPool()
    added = set()

    def add(file):
        if file.name in added:
            return
        for dependency in file.dependencies:
            add(dependency)
        proto = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(proto)
        pool.Add(proto)
        added.add(file.name)

    add(message_class.DESCRIPTOR.file)
    found = pool.FindMessageTypeByName(message_class.DESCRIPTOR.full_name)
    return message_factory.GetMessageClass(found)


def read_by_client(serializer_class, instance):
    """The row as a client gets it: the serializer's message over the wire, as client values."""
    wire = serializer_class.to_message(instance).SerializeToString()
    client_class = client_message_class(serializer_class.get_proto_class())
    return message_to_dict(client_class.FromString(wire))


def save_from_message(serializer_class, instance, message):
    """What an Update of `instance` saves from `message` (which arrives as bytes)."""
    request = serializer_class.get_proto_class().FromString(message.SerializeToString())
    plan = serializer_class.plan()
    data = serializer_class.data_from_message(request, nulls=plan.nullable)
    serializer = serializer_class(instance, data=data)
    assert serializer.is_valid(), serializer.errors
    assert set(serializer.validated_data) == plan.writable  # every field that can be written
    serializer.save()
    return Everything.objects.get(pk=instance.pk)


def write_by_client(serializer_class, instance, values):
    """What the server saves when a client sends `values` back as an Update of `instance`."""
    client_class = client_message_class(serializer_class.get_proto_class())
    return save_from_message(serializer_class, instance, build_message(client_class, values))


def test_every_field_reaches_the_client_with_zero_values_kept(serializer_class, make_row):
    instance = make_row()
    assert read_by_client(serializer_class, instance) == row_values(instance)


def test_every_field_a_client_sends_back_saves_the_same_row(serializer_class, make_row):
    # A CharField without blank=True refuses "" in DRF, as in a form: f_null_char is not blank.
    instance = make_row(f_null_char="not blank")
    before = saved_values(instance)
    values = read_by_client(serializer_class, instance)
    assert saved_values(write_by_client(serializer_class, instance, values)) == before


def test_every_field_through_the_serializer_alone_saves_the_same_row(serializer_class, make_row):
    instance = make_row(f_null_char="not blank")
    before = saved_values(instance)
    message = serializer_class.to_message(instance)
    assert saved_values(save_from_message(serializer_class, instance, message)) == before


NULLABLE = (
    "f_null_int",
    "f_null_char",
    "f_null_decimal",
    "f_null_bool",
    "f_null_datetime",
    "f_null_date",
    "f_null_json",
    "editor",
    "token",
)


def test_nulls_stay_null_and_are_not_confused_with_zero(serializer_class, make_row):
    instance = make_row(**dict.fromkeys(NULLABLE))
    result = read_by_client(serializer_class, instance)
    for name in NULLABLE:
        assert result[name] is None, name
    assert result == row_values(instance)

    saved = write_by_client(serializer_class, instance, result)
    assert saved_values(saved) == saved_values(instance)
    for name in NULLABLE:
        assert getattr(saved, Everything._meta.get_field(name).attname) is None, name


def test_decimal_keeps_its_exact_digits(serializer_class, make_row):
    instance = make_row(f_decimal=Decimal("-0.0000000001"), f_null_char="x")
    result = read_by_client(serializer_class, instance)
    assert result["f_decimal"] == "-0.0000000001"
    saved = write_by_client(serializer_class, instance, result)
    assert saved.f_decimal == Decimal("-0.0000000001")


def test_datetime_keeps_its_instant_from_another_time_zone(serializer_class, make_row):
    tz = dt.timezone(dt.timedelta(hours=5, minutes=30))
    moment = dt.datetime(2030, 6, 1, 8, 0, 0, 1, tzinfo=tz)
    instance = make_row(f_datetime=moment, f_null_char="x")
    result = read_by_client(serializer_class, instance)
    assert result["f_datetime"] == moment
    assert result["f_datetime"].utcoffset() == dt.timedelta(0)
    assert write_by_client(serializer_class, instance, result).f_datetime == moment


def test_json_integers_stay_integers(serializer_class, make_row):
    value = [1, -7, 2**53, 1.5, {"a": 0}]
    instance = make_row(f_json=value, f_null_char="x")
    values = read_by_client(serializer_class, instance)
    result = values["f_json"]
    assert result == value
    assert [type(v) for v in result[:4]] == [int, int, int, float]
    saved = write_by_client(serializer_class, instance, values).f_json
    assert saved == value
    assert [type(v) for v in saved[:4]] == [int, int, int, float]
