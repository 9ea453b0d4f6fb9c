"""conversion.wellknown: the one Timestamp writer, for model values and request values alike.

The serializer's direct writer and the messages' writer both fill Timestamps with
``datetime_to_timestamp``; it agrees with protobuf's own ``FromDatetime``, edge cases included.
"""

import datetime as dt
import warnings

import pytest
from django.test import override_settings
from django.utils import timezone
from google.protobuf import timestamp_pb2

from django_grpc_bus.conversion.messages import ConversionError, build_message, plan_for
from django_grpc_bus.conversion.wellknown import (
    datetime_to_timestamp,
    given_to_aware,
    stored_to_aware,
)
from django_grpc_bus.serializers import direct_writer

UTC = dt.timezone.utc

MOMENTS = [
    dt.datetime(1970, 1, 1, tzinfo=UTC),  # the epoch: zero seconds, still set
    dt.datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),  # negative seconds
    dt.datetime(1, 1, 1, tzinfo=UTC),
    dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    dt.datetime(2024, 2, 29, 12, 0, 0, 1, tzinfo=dt.timezone(dt.timedelta(hours=-9, minutes=-30))),
]


@pytest.fixture
def everything(compiled):
    from generated_grpc.grpc import Everything_pb2

    return Everything_pb2.EverythingData


def written_by_serializer(message_class, value, name="f_datetime"):
    """`value` as the serializer writes a model's datetime into `name`."""
    message = message_class()
    coercing = plan_for(message_class.DESCRIPTOR).writers[name]
    direct_writer("datetime", name, coercing)(message, value)
    return message


def from_datetime(moment):
    expected = timestamp_pb2.Timestamp()
    expected.FromDatetime(moment)
    return expected


@pytest.mark.parametrize("moment", MOMENTS)
def test_timestamps_match_protobufs_own_conversion(moment):
    stamp = timestamp_pb2.Timestamp()
    datetime_to_timestamp(moment, stamp)
    expected = from_datetime(moment)
    assert (stamp.seconds, stamp.nanos) == (expected.seconds, expected.nanos)
    assert stamp.ToDatetime(tzinfo=UTC) == moment


@pytest.mark.parametrize("moment", MOMENTS)
def test_the_serializer_and_a_request_write_the_same_timestamp(everything, moment):
    by_serializer = written_by_serializer(everything, moment)
    by_request = build_message(everything, {"f_datetime": moment})
    for message in (by_serializer, by_request):
        assert message.HasField("f_datetime")
        assert message.f_datetime == from_datetime(moment)
        assert message.f_datetime.ToDatetime(tzinfo=UTC) == moment


@override_settings(USE_TZ=False, TIME_ZONE="Asia/Kolkata")
def test_naive_datetimes_are_in_time_zone(everything):
    naive = dt.datetime(2020, 1, 1, 5, 30)  # 00:00 UTC in Kolkata
    midnight = dt.datetime(2020, 1, 1, tzinfo=UTC)
    message = written_by_serializer(everything, naive)
    assert message.f_datetime.ToDatetime(tzinfo=UTC) == midnight
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning without time zone support
        message = build_message(everything, {"f_datetime": naive})
    assert message.f_datetime.ToDatetime(tzinfo=UTC) == midnight


@override_settings(USE_TZ=True, TIME_ZONE="Asia/Kolkata")
def test_a_naive_model_value_is_in_time_zone_and_a_given_one_in_the_current_zone(everything):
    naive = dt.datetime(2020, 1, 1, 5, 30)
    with timezone.override("America/New_York"):
        # A model's naive value, as Django stores it: TIME_ZONE, without a warning.
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            message = written_by_serializer(everything, naive)
        assert message.f_datetime.ToDatetime(tzinfo=UTC) == dt.datetime(2020, 1, 1, tzinfo=UTC)
        assert stored_to_aware(naive).utcoffset() == dt.timedelta(hours=5, minutes=30)
        # A request's naive value, as DRF reads one: the current zone, with a warning.
        with pytest.warns(RuntimeWarning, match="naive datetime.*America/New_York"):
            message = build_message(everything, {"f_datetime": naive})
        assert message.f_datetime.ToDatetime(tzinfo=UTC) == dt.datetime(
            2020, 1, 1, 10, 30, tzinfo=UTC
        )
        with pytest.warns(RuntimeWarning):
            assert given_to_aware(naive).utcoffset() == dt.timedelta(hours=-5)


@pytest.mark.parametrize(
    "moment",
    [
        dt.datetime(1, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=5))),  # year 0 in UTC
        dt.datetime(9999, 12, 31, 23, tzinfo=dt.timezone(dt.timedelta(hours=-1))),  # year 10000
    ],
)
def test_an_instant_outside_the_timestamp_range_is_refused(everything, moment):
    with pytest.raises(ValueError, match=r"outside google\.protobuf\.Timestamp's range"):
        datetime_to_timestamp(moment, timestamp_pb2.Timestamp())
    with pytest.raises(ConversionError) as caught:
        build_message(everything, {"f_datetime": moment})
    assert caught.value.path == "f_datetime"
