"""The serializer's direct writers agree with protobuf's own conversions, edge cases included."""

import datetime as dt
import uuid
from decimal import Decimal

import pytest
from django.test import override_settings
from google.protobuf import timestamp_pb2

from django_grpc_bus.messages import plan_for
from django_grpc_bus.serializers import direct_writer

UTC = dt.timezone.utc


@pytest.fixture
def everything(compiled):
    from generated_grpc.grpc import Everything_pb2

    return Everything_pb2.EverythingData


def written(message_class, kind, name, value):
    message = message_class()
    coercing = plan_for(message_class.DESCRIPTOR).writers[name]
    direct_writer(kind, name, coercing)(message, value)
    return message


@pytest.mark.parametrize(
    "moment",
    [
        dt.datetime(1970, 1, 1, tzinfo=UTC),  # the epoch: zero seconds, still set
        dt.datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),  # negative seconds
        dt.datetime(1, 1, 1, tzinfo=UTC),
        dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        dt.datetime(
            2024, 2, 29, 12, 0, 0, 1, tzinfo=dt.timezone(dt.timedelta(hours=-9, minutes=-30))
        ),
    ],
)
def test_timestamps_match_protobufs_own_conversion(everything, moment):
    message = written(everything, "datetime", "f_datetime", moment)
    expected = timestamp_pb2.Timestamp()
    expected.FromDatetime(moment)
    assert message.HasField("f_datetime")
    assert (message.f_datetime.seconds, message.f_datetime.nanos) == (
        expected.seconds,
        expected.nanos,
    )
    assert message.f_datetime.ToDatetime(tzinfo=UTC) == moment


@override_settings(USE_TZ=False, TIME_ZONE="Asia/Kolkata")
def test_naive_datetimes_are_in_time_zone(everything):
    naive = dt.datetime(2020, 1, 1, 5, 30)  # 00:00 UTC in Kolkata
    message = written(everything, "datetime", "f_datetime", naive)
    assert message.f_datetime.ToDatetime(tzinfo=UTC) == dt.datetime(2020, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("kind", "name", "value", "expected"),
    [
        ("decimal", "f_decimal", Decimal("-0.0000000001"), "-0.0000000001"),
        ("decimal", "f_decimal", Decimal("1E+3"), "1000"),
        ("date", "f_date", dt.date(1999, 12, 31), "1999-12-31"),
        ("time", "f_time", dt.time(13, 14, 15, 161718), "13:14:15.161718"),
        ("uuid", "f_uuid", uuid.UUID(int=1), "00000000-0000-0000-0000-000000000001"),
        ("int", "f_int", -(2**31), -(2**31)),
        ("str", "f_char", "héllo", "héllo"),
        # not the model's own type: the coercing writer takes over
        ("decimal", "f_decimal", "12.50", "12.50"),
        ("float", "f_float", Decimal("0.5"), 0.5),
        ("date", "f_date", "2020-01-02", "2020-01-02"),
    ],
)
def test_encoded_kinds(everything, kind, name, value, expected):
    assert getattr(written(everything, kind, name, value), name) == expected
