"""conversion.scalars: the encoders the serializer writes model values with, and file names."""

import datetime as dt
import types
import uuid
from decimal import Decimal

import pytest
from catalog.models import Everything

from django_grpc_bus.conversion.messages import build_message, plan_for
from django_grpc_bus.conversion.scalars import file_name
from django_grpc_bus.serializers import FileNameField, direct_writer


@pytest.fixture
def everything(compiled):
    from generated_grpc.grpc import Everything_pb2

    return Everything_pb2.EverythingData


def written(message_class, kind, name, value):
    """`value` as the serializer writes a model value of the type map's `kind` into `name`."""
    message = message_class()
    coercing = plan_for(message_class.DESCRIPTOR).writers[name]
    direct_writer(kind, name, coercing)(message, value)
    return message


@pytest.mark.parametrize(
    ("kind", "name", "value", "expected"),
    [
        ("decimal", "f_decimal", Decimal("-0.0000000001"), "-0.0000000001"),
        ("decimal", "f_decimal", Decimal("1E+3"), "1000"),
        ("date", "f_date", dt.date(1999, 12, 31), "1999-12-31"),
        ("time", "f_time", dt.time(13, 14, 15, 161718), "13:14:15.161718"),
        ("uuid", "f_uuid", uuid.UUID(int=1), "00000000-0000-0000-0000-000000000001"),
        ("int", "f_int", -(2**31), -(2**31)),
        ("str", "f_char", "héllo ✓", "héllo ✓"),
        ("file", "f_file", Everything(f_file="files/a.txt").f_file, "files/a.txt"),
        # not the model's own type: the coercing writer takes over
        ("decimal", "f_decimal", "12.50", "12.50"),
        ("float", "f_float", Decimal("0.5"), 0.5),
        ("date", "f_date", "2020-01-02", "2020-01-02"),
    ],
)
def test_encoded_kinds(everything, kind, name, value, expected):
    assert getattr(written(everything, kind, name, value), name) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (Everything(f_file="files/deep/report.pdf").f_file, "files/deep/report.pdf"),
        (Everything(f_file="").f_file, ""),
        (Everything(f_file=None).f_file, ""),
        (types.SimpleNamespace(name=None), ""),
        ("plain/name", "plain/name"),
    ],
)
def test_one_file_name_wherever_a_file_is_written(everything, value, expected):
    assert file_name(value) == expected
    assert FileNameField().to_representation(value) == expected
    assert written(everything, "file", "f_file", value).f_file == expected
    if hasattr(value, "storage"):  # a FieldFile given as a request value
        assert build_message(everything, {"f_file": value}).f_file == expected
