"""Conversions between Python values and protobuf field values, one pair per type-map kind.

``encode(kind, value)`` gives what is assigned to a scalar field; for message kinds
(``datetime``, ``duration``, ``json``) ``write_message(kind, message, value)`` fills the
sub-message in place. ``decode``/``read_message`` go the other way. The well-known-type helpers
here are shared with the client, which meets the same types through reflection.
"""

from __future__ import annotations

import datetime as dt
import warnings
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.utils import timezone
from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2

# Doubles represent every integer up to 2**53 exactly; integral JSON numbers within that range
# come back as `int`, so `{"n": 1}` round-trips as 1 and not 1.0.
MAX_EXACT_INT = 2**53
# Each JSON level is three message levels (Value, Struct, map entry) and protobuf parses at
# most 100; a row must still parse inside a List response, two levels deeper.
MAX_JSON_DEPTH = 30


def _file_name(value: Any) -> str:
    return getattr(value, "name", value) or ""


ENCODERS: dict[str, Callable[[Any], Any]] = {
    "int": int,
    "float": float,
    "bool": bool,
    "str": str,
    "bytes": bytes,
    "decimal": lambda value: format(Decimal(value), "f") if not isinstance(value, str) else value,
    "uuid": str,
    "file": _file_name,
    "date": lambda value: value.isoformat(),
    "time": lambda value: value.isoformat(),
}

DECODERS: dict[str, Callable[[Any], Any]] = {
    "int": int,
    "float": float,
    "bool": bool,
    "str": str,
    "bytes": bytes,
    "decimal": str,
    "uuid": str,
    "file": str,
    "date": dt.date.fromisoformat,
    "time": dt.time.fromisoformat,
}


def local_to_aware(value: dt.datetime) -> dt.datetime:
    """A naive datetime as Django reads one: in the current time zone (TIME_ZONE unless another
    is activated) with ``USE_TZ``, in TIME_ZONE without it."""
    if getattr(settings, "USE_TZ", True):
        return timezone.make_aware(value)
    return timezone.make_aware(value, timezone.get_default_timezone())


def datetime_to_timestamp(value: dt.datetime, message: timestamp_pb2.Timestamp) -> None:
    """Fill `message` with the instant `value` names (a naive value by ``local_to_aware``).

    With ``USE_TZ`` a naive datetime is probably a mistake: it is warned about, as Django's
    ``DateTimeField`` does.
    """
    if timezone.is_naive(value):
        if getattr(settings, "USE_TZ", True):
            warnings.warn(
                f"A naive datetime ({value}) was given while time zone support is active; "
                f"it is taken as {timezone.get_current_timezone_name()} time.",
                RuntimeWarning,
                stacklevel=2,
            )
        value = local_to_aware(value)
    message.FromDatetime(value)


def timestamp_to_datetime(message: timestamp_pb2.Timestamp) -> dt.datetime:
    """An aware UTC datetime, or a naive one in TIME_ZONE when ``USE_TZ`` is off."""
    value = message.ToDatetime(tzinfo=dt.timezone.utc)
    if not getattr(settings, "USE_TZ", True):
        value = timezone.make_naive(value, timezone.get_default_timezone())
    return value


def timedelta_to_duration(value: dt.timedelta, message: duration_pb2.Duration) -> None:
    message.FromTimedelta(value)


# google.protobuf.Duration's documented range: about +-10,000 years.
MAX_DURATION_SECONDS = 315_576_000_000


def duration_to_timedelta(message: duration_pb2.Duration) -> dt.timedelta:
    if abs(message.seconds) > MAX_DURATION_SECONDS:
        raise ValueError(f"{message.seconds} s is outside google.protobuf.Duration's range")
    return message.ToTimedelta()


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


MESSAGE_WRITERS: dict[str, Callable[[Any, Any], None]] = {
    "datetime": lambda message, value: datetime_to_timestamp(value, message),
    "duration": lambda message, value: timedelta_to_duration(value, message),
    "json": lambda message, value: json_to_value(value, message),
}

MESSAGE_READERS: dict[str, Callable[[Any], Any]] = {
    "datetime": timestamp_to_datetime,
    "duration": duration_to_timedelta,
    "json": value_to_json,
}
