"""Every field type: database row -> message -> bytes -> message -> the same Python values."""

import datetime as dt
import importlib
import uuid
from decimal import Decimal

import pytest
from catalog.models import Author, Everything, Tag, Token

from django_grpc_bus import typemap, values
from django_grpc_bus.meta import selectable_fields

UTC = dt.timezone.utc
FIELDS = selectable_fields(Everything)


def to_message(instance, message_class):
    message = message_class()
    for field in FIELDS:
        ptype = typemap.proto_type(field)
        if field.many_to_many:
            getattr(message, field.name).extend(
                getattr(instance, field.name).values_list("pk", flat=True)
            )
            continue
        value = getattr(instance, field.attname)
        if value is None:
            continue
        if ptype.is_message:
            values.MESSAGE_WRITERS[ptype.kind](getattr(message, field.name), value)
        else:
            setattr(message, field.name, values.ENCODERS[ptype.kind](value))
    return message


def from_message(message):
    result = {}
    for field in FIELDS:
        ptype = typemap.proto_type(field)
        if field.many_to_many:
            result[field.name] = sorted(getattr(message, field.name))
        elif message.DESCRIPTOR.fields_by_name[field.name].has_presence and not message.HasField(
            field.name
        ):
            result[field.attname] = None
        elif ptype.is_message:
            result[field.attname] = values.MESSAGE_READERS[ptype.kind](getattr(message, field.name))
        else:
            result[field.attname] = values.DECODERS[ptype.kind](getattr(message, field.name))
    return result


def model_values(instance):
    result = {}
    for field in FIELDS:
        if field.many_to_many:
            result[field.name] = sorted(getattr(instance, field.name).values_list("pk", flat=True))
            continue
        value = getattr(instance, field.attname)
        ptype = typemap.proto_type(field)
        # Values whose Python type the wire does not carry are compared in their wire form.
        if ptype.kind in ("decimal", "uuid", "file") and value is not None:
            value = values.ENCODERS[ptype.kind](value)
        if ptype.kind == "bytes" and value is not None:
            value = bytes(value)
        result[field.attname] = value
    return result


def make_row(**overrides):
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
        f_filepath="/tmp/a.txt",
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


@pytest.fixture
def message_class(compiled):
    return importlib.import_module("generated_grpc.grpc.Everything_pb2").EverythingData


def roundtrip(instance, message_class):
    wire = to_message(instance, message_class).SerializeToString()
    return from_message(message_class.FromString(wire))


@pytest.mark.django_db
def test_every_field_round_trips_with_zero_values_kept(message_class):
    instance = make_row()
    assert roundtrip(instance, message_class) == model_values(instance)


@pytest.mark.django_db
def test_nulls_stay_null_and_are_not_confused_with_zero(message_class):
    instance = make_row(
        f_null_int=None,
        f_null_char=None,
        f_null_decimal=None,
        f_null_bool=None,
        f_null_datetime=None,
        f_null_date=None,
        f_null_json=None,
        editor=None,
        token=None,
    )
    result = roundtrip(instance, message_class)
    for name in (
        "f_null_int",
        "f_null_char",
        "f_null_decimal",
        "f_null_bool",
        "f_null_datetime",
        "f_null_date",
        "f_null_json",
        "editor_id",
        "token_id",
    ):
        assert result[name] is None, name
    assert result == model_values(instance)


@pytest.mark.django_db
def test_decimal_keeps_its_exact_digits(message_class):
    instance = make_row(f_decimal=Decimal("-0.0000000001"))
    assert roundtrip(instance, message_class)["f_decimal"] == "-0.0000000001"


@pytest.mark.django_db
def test_datetime_keeps_its_instant_from_another_time_zone(message_class):
    tz = dt.timezone(dt.timedelta(hours=5, minutes=30))
    moment = dt.datetime(2030, 6, 1, 8, 0, 0, 1, tzinfo=tz)
    instance = make_row(f_datetime=moment)
    result = roundtrip(instance, message_class)["f_datetime"]
    assert result == moment
    assert result.utcoffset() == dt.timedelta(0)


@pytest.mark.django_db
def test_json_integers_stay_integers(message_class):
    instance = make_row(f_json=[1, -7, 2**53, 1.5, {"a": 0}])
    result = roundtrip(instance, message_class)["f_json"]
    assert result == [1, -7, 2**53, 1.5, {"a": 0}]
    assert [type(v) for v in result[:4]] == [int, int, int, float]
