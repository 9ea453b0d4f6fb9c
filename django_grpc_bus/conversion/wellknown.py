"""Python values <-> protobuf's well-known message types: one reader and one writer for each.

Timestamp <-> aware ``datetime``, Duration <-> ``timedelta``, Value/Struct/ListValue <-> JSON
values, FieldMask <-> a list of paths, the wrapper types <-> their value, Empty <-> ``{}``.
``WELL_KNOWN`` gives ``conversion.messages`` the (reader, writer) of each type by full name; its
writers also take the text DRF data carries (ISO 8601, Django's duration text). The serializer
writes a model's datetimes with :func:`datetime_to_timestamp` itself, the same writer.
"""

from __future__ import annotations

import datetime as dt
import warnings
from collections.abc import Callable, Mapping
from typing import Any

from django.conf import settings
from django.utils import timezone
from django.utils.dateparse import parse_duration
from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2

from django_grpc_bus.conversion.scalars import SCALAR_COERCE

Reader = Callable[[Any], Any]
Writer = Callable[[Any, Any], None]

# -- Timestamp -----------------------------------------------------------------------------------

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
# google.protobuf.Timestamp's documented range: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
MIN_TIMESTAMP_SECONDS = -62_135_596_800
MAX_TIMESTAMP_SECONDS = 253_402_300_799


def local_to_aware(value: dt.datetime) -> dt.datetime:
    """A naive datetime as Django reads one: in the current time zone (TIME_ZONE unless another
    is activated) with ``USE_TZ``, in TIME_ZONE without it."""
    if getattr(settings, "USE_TZ", True):
        return timezone.make_aware(value)
    return timezone.make_aware(value, timezone.get_default_timezone())


def given_to_aware(value: dt.datetime) -> dt.datetime:
    """A naive datetime given as a value (a request's): :func:`local_to_aware`, and with
    ``USE_TZ``, where it is probably a mistake, warned about as Django's ``DateTimeField`` does."""
    if getattr(settings, "USE_TZ", True):
        warnings.warn(
            f"A naive datetime ({value}) was given while time zone support is active; "
            f"it is taken as {timezone.get_current_timezone_name()} time.",
            RuntimeWarning,
            stacklevel=3,
        )
    return local_to_aware(value)


def stored_to_aware(value: dt.datetime) -> dt.datetime:
    """A naive datetime of a model instance: in TIME_ZONE, where Django stores and reads one."""
    return timezone.make_aware(value, timezone.get_default_timezone())


def datetime_to_timestamp(
    value: dt.datetime,
    message: timestamp_pb2.Timestamp,
    naive: Callable[[dt.datetime], dt.datetime] = given_to_aware,
) -> None:
    """Fill `message` with the instant `value` names; a naive `value` is made aware by `naive`.

    By datetime arithmetic, which is C, where ``Timestamp.FromDatetime`` goes through a time
    tuple: every response row's datetimes come here. The epoch itself is set, not left unset.
    """
    if value.tzinfo is None:
        value = naive(value)
    delta = value - EPOCH  # nanos come out non-negative, as the Timestamp requires
    seconds = delta.days * 86400 + delta.seconds
    if not MIN_TIMESTAMP_SECONDS <= seconds <= MAX_TIMESTAMP_SECONDS:
        raise ValueError(f"{value} is outside google.protobuf.Timestamp's range")
    message.seconds = seconds
    message.nanos = delta.microseconds * 1000
    if not (seconds or delta.microseconds):
        message.SetInParent()


def timestamp_to_datetime(message: timestamp_pb2.Timestamp) -> dt.datetime:
    """An aware UTC datetime, or a naive one in TIME_ZONE when ``USE_TZ`` is off."""
    value = message.ToDatetime(tzinfo=dt.timezone.utc)
    if not getattr(settings, "USE_TZ", True):
        value = timezone.make_naive(value, timezone.get_default_timezone())
    return value


def _write_timestamp(message: Any, value: Any) -> None:
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        if value.tzinfo is None:  # text without an offset: local time, as DRF reads it
            value = local_to_aware(value)
    if not isinstance(value, dt.datetime):
        raise TypeError(f"expected a datetime, got {type(value).__name__}")
    datetime_to_timestamp(value, message)


# -- Duration ------------------------------------------------------------------------------------

# google.protobuf.Duration's documented range: about +-10,000 years.
MAX_DURATION_SECONDS = 315_576_000_000


def timedelta_to_duration(value: dt.timedelta, message: duration_pb2.Duration) -> None:
    message.FromTimedelta(value)


def duration_to_timedelta(message: duration_pb2.Duration) -> dt.timedelta:
    if abs(message.seconds) > MAX_DURATION_SECONDS:
        raise ValueError(f"{message.seconds} s is outside google.protobuf.Duration's range")
    return message.ToTimedelta()


def _write_duration(message: Any, value: Any) -> None:
    if isinstance(value, str):  # DRF's and Django's text form: "1 02:03:04.5", "P1DT2H"
        parsed = parse_duration(value)
        if parsed is None:
            raise ValueError(f"{value!r} is not a duration")
        value = parsed
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = dt.timedelta(seconds=value)
    if not isinstance(value, dt.timedelta):
        raise TypeError(f"expected a timedelta, got {type(value).__name__}")
    timedelta_to_duration(value, message)


# -- JSON: Value, Struct, ListValue --------------------------------------------------------------

# Doubles represent every integer up to 2**53 exactly; integral JSON numbers within that range
# come back as `int`, so `{"n": 1}` round-trips as 1 and not 1.0.
MAX_EXACT_INT = 2**53
# Each JSON level is three message levels (Value, Struct, map entry) and protobuf parses at
# most 100; a row must still parse inside a List response, two levels deeper.
MAX_JSON_DEPTH = 30


def json_to_value(value: Any, message: struct_pb2.Value, depth: int = 0) -> None:
    """Fill a ``google.protobuf.Value`` from a JSON-compatible Python value."""
    if depth > MAX_JSON_DEPTH:
        raise ValueError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    if value is None:
        message.null_value = struct_pb2.NULL_VALUE
    elif isinstance(value, bool):
        message.bool_value = value
    elif isinstance(value, (int, float)):
        message.number_value = value
    elif isinstance(value, str):
        message.string_value = value
    elif isinstance(value, dict):
        fields = message.struct_value.fields
        message.struct_value.SetInParent()
        for key, item in value.items():
            json_to_value(item, fields[str(key)], depth + 1)
    elif isinstance(value, (list, tuple)):
        items = message.list_value.values
        message.list_value.SetInParent()
        for item in value:
            json_to_value(item, items.add(), depth + 1)
    else:
        raise TypeError(f"{type(value).__name__} is not a JSON value")


def value_to_json(message: struct_pb2.Value, depth: int = 0) -> Any:
    """The Python value of a ``google.protobuf.Value`` (integral numbers as ``int``)."""
    if depth > MAX_JSON_DEPTH:
        raise ValueError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    kind = message.WhichOneof("kind")
    if kind == "number_value":
        number = message.number_value
        if number.is_integer() and abs(number) <= MAX_EXACT_INT:
            return int(number)
        return number
    if kind == "string_value":
        return message.string_value
    if kind == "bool_value":
        return message.bool_value
    if kind == "struct_value":
        fields = message.struct_value.fields
        return {key: value_to_json(item, depth + 1) for key, item in fields.items()}
    if kind == "list_value":
        return [value_to_json(item, depth + 1) for item in message.list_value.values]
    return None


def _write_struct(message: Any, value: Any) -> None:
    if not isinstance(value, Mapping):
        raise TypeError(f"expected a dict, got {type(value).__name__}")
    message.Clear()
    for key, item in value.items():
        json_to_value(item, message.fields[str(key)])


def _write_list_value(message: Any, value: Any) -> None:
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"expected a list, got {type(value).__name__}")
    message.Clear()
    for item in value:
        json_to_value(item, message.values.add())


# -- FieldMask, wrappers, Empty ------------------------------------------------------------------


def _write_field_mask(message: Any, value: Any) -> None:
    paths = value.split(",") if isinstance(value, str) else list(value)
    del message.paths[:]
    message.paths.extend(path.strip() for path in paths if path.strip())


WRAPPERS = frozenset(
    f"google.protobuf.{name}Value"
    for name in ("Double", "Float", "Int64", "UInt64", "Int32", "UInt32", "Bool", "String", "Bytes")
)


def _read_wrapper(message: Any) -> Any:
    return message.value


def _write_wrapper(message: Any, value: Any) -> None:
    """A wrapper's value is coerced exactly as a plain field of the wrapped type would be."""
    message.value = SCALAR_COERCE[message.DESCRIPTOR.fields_by_name["value"].type](value)


def _write_empty(message: Any, value: Any) -> None:
    if value not in ({}, None):
        raise TypeError("google.protobuf.Empty takes no fields")


WELL_KNOWN: dict[str, tuple[Reader, Writer]] = {
    "google.protobuf.Timestamp": (timestamp_to_datetime, _write_timestamp),
    "google.protobuf.Duration": (duration_to_timedelta, _write_duration),
    "google.protobuf.Value": (value_to_json, lambda m, v: json_to_value(v, m)),
    "google.protobuf.Struct": (
        lambda m: {k: value_to_json(v) for k, v in m.fields.items()},
        _write_struct,
    ),
    "google.protobuf.ListValue": (
        lambda m: [value_to_json(v) for v in m.values],
        _write_list_value,
    ),
    "google.protobuf.FieldMask": (lambda m: list(m.paths), _write_field_mask),
    "google.protobuf.Empty": (lambda m: {}, _write_empty),
    **{name: (_read_wrapper, _write_wrapper) for name in WRAPPERS},
}
