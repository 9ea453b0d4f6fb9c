"""Python values -> protobuf scalar fields: by the type map's kind, and by the field's proto type.

``ENCODERS[kind]`` turns a model's own value of a kind (see ``conversion.fieldtypes``) into the
text its message field holds: exact decimal digits, ISO 8601 dates and times, UUID text, a
file's storage name. Values of the kinds int, float, bool, str and bytes are assigned as they
are; the message kinds (datetime, duration, json) are in ``conversion.wellknown``.

``SCALAR_COERCE[field type]`` takes any value given for a scalar field (a request dict, DRF
data) and refuses one of the wrong type with a ``TypeError`` saying what it expected. Scalars
read from a message are already Python values: they need no reader.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from google.protobuf.descriptor import FieldDescriptor as FD


def file_name(value: Any) -> str:
    """A ``FieldFile`` as its storage name, ``""`` for none; a name given as text stays itself."""
    return getattr(value, "name", value) or ""


ENCODERS: dict[str, Callable[[Any], str]] = {
    "decimal": lambda value: format(Decimal(value), "f") if not isinstance(value, str) else value,
    "uuid": str,
    "file": file_name,
    "date": lambda value: value.isoformat(),
    "time": lambda value: value.isoformat(),
}


def as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, (dt.date, dt.time)):  # datetime is a date
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if hasattr(value, "name") and hasattr(value, "storage"):  # a FieldFile
        return file_name(value)
    raise TypeError(f"expected a string, got {type(value).__name__}")


def as_bytes(value: Any) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"expected bytes, got {type(value).__name__}")


def as_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    return value


def as_float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
        raise TypeError(f"expected a number, got {type(value).__name__}")
    return float(value)


def as_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected true or false, got {type(value).__name__}")
    return value


INT_TYPES = frozenset(
    {FD.TYPE_INT32, FD.TYPE_INT64, FD.TYPE_UINT32, FD.TYPE_UINT64, FD.TYPE_SINT32,
     FD.TYPE_SINT64, FD.TYPE_FIXED32, FD.TYPE_FIXED64, FD.TYPE_SFIXED32, FD.TYPE_SFIXED64}
)  # fmt: skip
SCALAR_COERCE: dict[int, Callable[[Any], Any]] = {
    **{t: as_int for t in INT_TYPES},
    FD.TYPE_DOUBLE: as_float,
    FD.TYPE_FLOAT: as_float,
    FD.TYPE_BOOL: as_bool,
    FD.TYPE_STRING: as_text,
    FD.TYPE_BYTES: as_bytes,
}
