"""Python values <-> protobuf messages, driven by descriptors and never through JSON.

One plan per message descriptor is built on first use and cached, so each conversion is a
loop over precomputed per-field functions. Shared by the serializer (DRF data -> message,
message -> data for validation) and the client (request dicts, response dicts).

Conversion rules (both directions):

- integers of every width are ``int``; ``bytes`` stay bytes; strings stay strings;
- an unset field with presence (proto3 ``optional``, message fields, oneof members) is ``None``;
  a field without presence always has its value, zero included;
- repeated fields are lists, maps are dicts, enums are their names;
- well-known types become Python values: Timestamp <-> aware ``datetime`` (a naive one is
  local time, as Django takes it: see ``values.datetime_to_timestamp``), Duration <->
  ``timedelta``, Value/Struct/ListValue <-> JSON values, FieldMask <-> list of paths, wrapper
  types <-> their value, Empty <-> ``{}``;
- when writing a string field, ``Decimal``, ``date``/``time``/``datetime`` and ``UUID`` values are
  written in their canonical text (ISO 8601, fixed-point decimals).
"""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

from django.utils.dateparse import parse_duration
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message

from django_grpc_bus import values

FD = _descriptor.FieldDescriptor


def repeated(field: FD) -> bool:
    """Whether a field is repeated, on every supported protobuf.

    protobuf 6 added ``FieldDescriptor.is_repeated``; protobuf 7 removed ``label``.
    """
    flag = getattr(field, "is_repeated", None)
    if flag is not None:
        return bool(flag)
    return field.label == FD.LABEL_REPEATED


Reader = Callable[[Any], Any]
Writer = Callable[[Any, Any], None]


class ConversionError(ValueError):
    """A value does not fit the message field it is meant for; names the field."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


# -- well-known types --------------------------------------------------------------------------

WRAPPERS = frozenset(
    f"google.protobuf.{name}Value"
    for name in ("Double", "Float", "Int64", "UInt64", "Int32", "UInt32", "Bool", "String", "Bytes")
)


def _read_wrapper(msg: Any) -> Any:
    return msg.value


def _write_wrapper(msg: Any, value: Any) -> None:
    """A wrapper's value is coerced exactly as a plain field of the wrapped type would be."""
    msg.value = SCALAR_COERCE[msg.DESCRIPTOR.fields_by_name["value"].type](value)


def _write_field_mask(msg: Any, value: Any) -> None:
    paths = value.split(",") if isinstance(value, str) else list(value)
    del msg.paths[:]
    msg.paths.extend(path.strip() for path in paths if path.strip())


def _write_struct(msg: Any, value: Any) -> None:
    if not isinstance(value, Mapping):
        raise TypeError(f"expected a dict, got {type(value).__name__}")
    msg.Clear()
    for key, item in value.items():
        values.json_to_value(item, msg.fields[str(key)])


def _write_list_value(msg: Any, value: Any) -> None:
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"expected a list, got {type(value).__name__}")
    msg.Clear()
    for item in value:
        values.json_to_value(item, msg.values.add())


def _write_timestamp(msg: Any, value: Any) -> None:
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        if value.tzinfo is None:  # text without an offset: local time, as DRF reads it
            value = values.local_to_aware(value)
    if not isinstance(value, dt.datetime):
        raise TypeError(f"expected a datetime, got {type(value).__name__}")
    values.datetime_to_timestamp(value, msg)


def _write_duration(msg: Any, value: Any) -> None:
    if isinstance(value, str):  # DRF's and Django's text form: "1 02:03:04.5", "P1DT2H"
        parsed = parse_duration(value)
        if parsed is None:
            raise ValueError(f"{value!r} is not a duration")
        value = parsed
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = dt.timedelta(seconds=value)
    if not isinstance(value, dt.timedelta):
        raise TypeError(f"expected a timedelta, got {type(value).__name__}")
    values.timedelta_to_duration(value, msg)


def _write_empty(msg: Any, value: Any) -> None:
    if value not in ({}, None):
        raise TypeError("google.protobuf.Empty takes no fields")


WELL_KNOWN: dict[str, tuple[Reader, Writer]] = {
    "google.protobuf.Timestamp": (values.timestamp_to_datetime, _write_timestamp),
    "google.protobuf.Duration": (values.duration_to_timedelta, _write_duration),
    "google.protobuf.Value": (values.value_to_json, lambda m, v: values.json_to_value(v, m)),
    "google.protobuf.Struct": (
        lambda m: {k: values.value_to_json(v) for k, v in m.fields.items()},
        _write_struct,
    ),
    "google.protobuf.ListValue": (
        lambda m: [values.value_to_json(v) for v in m.values],
        _write_list_value,
    ),
    "google.protobuf.FieldMask": (lambda m: list(m.paths), _write_field_mask),
    "google.protobuf.Empty": (lambda m: {}, _write_empty),
    **{name: (_read_wrapper, _write_wrapper) for name in WRAPPERS},
}


# -- scalar coercion when writing --------------------------------------------------------------


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, (dt.date, dt.time)):  # datetime is a date
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if hasattr(value, "name") and hasattr(value, "storage"):  # a FieldFile
        return value.name or ""
    raise TypeError(f"expected a string, got {type(value).__name__}")


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"expected bytes, got {type(value).__name__}")


def _as_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    return value


def _as_float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
        raise TypeError(f"expected a number, got {type(value).__name__}")
    return float(value)


def _as_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected true or false, got {type(value).__name__}")
    return value


INT_TYPES = frozenset(
    {FD.TYPE_INT32, FD.TYPE_INT64, FD.TYPE_UINT32, FD.TYPE_UINT64, FD.TYPE_SINT32,
     FD.TYPE_SINT64, FD.TYPE_FIXED32, FD.TYPE_FIXED64, FD.TYPE_SFIXED32, FD.TYPE_SFIXED64}
)  # fmt: skip
SCALAR_COERCE: dict[int, Callable[[Any], Any]] = {
    **{t: _as_int for t in INT_TYPES},
    FD.TYPE_DOUBLE: _as_float,
    FD.TYPE_FLOAT: _as_float,
    FD.TYPE_BOOL: _as_bool,
    FD.TYPE_STRING: _as_text,
    FD.TYPE_BYTES: _as_bytes,
}


# -- plans ---------------------------------------------------------------------------------------


class MessagePlan:
    """Per-field readers and writers of one message type."""

    __slots__ = ("descriptor", "field_names", "fields", "readers", "writers")

    def __init__(self, descriptor: _descriptor.Descriptor) -> None:
        self.descriptor = descriptor
        self.fields = {field.name: field for field in descriptor.fields}
        self.field_names = tuple(self.fields)
        self.readers: dict[str, Reader] = {}
        self.writers: dict[str, Writer] = {}
        for field in descriptor.fields:
            self.readers[field.name] = _field_reader(field)
            self.writers[field.name] = _field_writer(field)


_plans: dict[_descriptor.Descriptor, MessagePlan] = {}
_plans_lock = threading.Lock()


def plan_for(descriptor: _descriptor.Descriptor) -> MessagePlan:
    plan = _plans.get(descriptor)
    if plan is None:
        with _plans_lock:
            plan = _plans.get(descriptor)
            if plan is None:
                plan = _plans[descriptor] = MessagePlan(descriptor)
    return plan


def _is_map(field: FD) -> bool:
    message_type = field.message_type
    return bool(
        message_type is not None and message_type.GetOptions().map_entry and repeated(field)
    )


def _value_reader(field: FD) -> Reader:
    """Reads one value (an element, for repeated fields) already taken from the message."""
    if field.type == FD.TYPE_MESSAGE:
        well_known = WELL_KNOWN.get(field.message_type.full_name)
        if well_known is not None:
            return well_known[0]
        return message_to_dict
    if field.type == FD.TYPE_ENUM:
        by_number = field.enum_type.values_by_number

        def read_enum(number: int) -> Any:
            value = by_number.get(number)
            return value.name if value is not None else number

        return read_enum
    return lambda value: value


def _field_reader(field: FD) -> Reader:
    name = field.name
    if _is_map(field):
        value_field = field.message_type.fields_by_name["value"]
        read_value = _value_reader(value_field)
        return lambda msg: {k: read_value(v) for k, v in getattr(msg, name).items()}
    read_one = _value_reader(field)
    if repeated(field):
        if field.type in (FD.TYPE_MESSAGE, FD.TYPE_ENUM):
            return lambda msg: [read_one(item) for item in getattr(msg, name)]
        return lambda msg: list(getattr(msg, name))
    if field.has_presence:
        return lambda msg: read_one(getattr(msg, name)) if msg.HasField(name) else None
    if field.type == FD.TYPE_ENUM:
        return lambda msg: read_one(getattr(msg, name))
    return lambda msg: getattr(msg, name)


def _enum_number(field: FD, value: Any) -> int:
    if isinstance(value, str):
        found = field.enum_type.values_by_name.get(value)
        if found is None:
            names = ", ".join(field.enum_type.values_by_name)
            raise TypeError(f"{value!r} is not one of {names}")
        return found.number
    return _as_int(value)


def _element_writer(field: FD) -> Callable[[Any, Any], None] | Callable[[Any], Any]:
    """For message elements: fill(target, value); for scalars: coerce(value) -> wire value."""
    if field.type == FD.TYPE_MESSAGE:
        well_known = WELL_KNOWN.get(field.message_type.full_name)
        if well_known is not None:
            write = well_known[1]

            def fill_well_known(target: Any, value: Any) -> None:
                if isinstance(value, _message.Message):
                    target.CopyFrom(value)
                else:
                    write(target, value)

            return fill_well_known
        return _fill
    if field.type == FD.TYPE_ENUM:
        return lambda value: _enum_number(field, value)
    return SCALAR_COERCE[field.type]


def _field_writer(field: FD) -> Writer:
    name = field.name
    if _is_map(field):
        value_field = field.message_type.fields_by_name["value"]
        element = _element_writer(value_field)
        is_message = value_field.type == FD.TYPE_MESSAGE

        def write_map(msg: Any, value: Any) -> None:
            if not isinstance(value, Mapping):
                raise TypeError(f"expected a dict, got {type(value).__name__}")
            target = getattr(msg, name)
            target.clear()
            for key, item in value.items():
                if is_message:
                    element(target[key], item)
                else:
                    target[key] = element(item)

        return write_map
    element = _element_writer(field)
    if repeated(field):
        if field.type == FD.TYPE_MESSAGE:

            def write_repeated_messages(msg: Any, value: Any) -> None:
                target = getattr(msg, name)
                del target[:]
                for index, item in enumerate(_as_list(value)):
                    try:
                        element(target.add(), item)
                    except ConversionError as exc:
                        raise ConversionError(
                            join_path(f"[{index}]", exc.path), exc.problem
                        ) from None
                    except (TypeError, ValueError, OverflowError) as exc:
                        raise ConversionError(f"[{index}]", str(exc)) from None

            return write_repeated_messages

        def write_repeated(msg: Any, value: Any) -> None:
            target = getattr(msg, name)
            items = []
            for index, item in enumerate(_as_list(value)):
                try:
                    items.append(element(item))
                except (TypeError, ValueError, OverflowError) as exc:
                    raise ConversionError(f"[{index}]", str(exc)) from None
            del target[:]
            target.extend(items)

        return write_repeated
    if field.type == FD.TYPE_MESSAGE:

        def write_message(msg: Any, value: Any) -> None:
            target = getattr(msg, name)
            target.SetInParent()
            element(target, value)

        return write_message

    def write_scalar(msg: Any, value: Any) -> None:
        setattr(msg, name, element(value))

    return write_scalar


def _as_list(value: Any) -> list:
    if isinstance(value, (str, bytes, Mapping)) or not hasattr(value, "__iter__"):
        raise TypeError(f"expected a list, got {type(value).__name__}")
    return list(value)


# -- public API ----------------------------------------------------------------------------------


def message_to_dict(message: Any, fields: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Every field of `message` (or only `fields`) as a Python value, by the rules above."""
    plan = plan_for(message.DESCRIPTOR)
    names = fields if fields is not None else plan.field_names
    return {name: _read(plan, name, message) for name in names}


def present_fields(message: Any) -> dict[str, Any]:
    """Only the fields that were given: set fields with presence, and all fields without it.

    This is what a request "gave" in the sense of DRF's ``data``: an unset ``optional`` field
    is left out (so model defaults and ``required`` apply), a plain scalar is always given.
    """
    plan = plan_for(message.DESCRIPTOR)
    result = {}
    for name, field in plan.fields.items():
        if field.has_presence and not message.HasField(name):
            continue
        result[name] = _read(plan, name, message)
    return result


def _read(plan: MessagePlan, name: str, message: Any) -> Any:
    try:
        return plan.readers[name](message)
    except (ValueError, OverflowError, TypeError) as exc:  # e.g. a Timestamp in year 0
        raise ConversionError(name, f"not a valid value: {exc}") from None


def join_path(prefix: str, path: str) -> str:
    """``data`` + ``title`` -> ``data.title``; ``items`` + ``[1].name`` -> ``items[1].name``."""
    if not path:
        return prefix
    if not prefix:
        return path
    return f"{prefix}{path}" if path.startswith("[") else f"{prefix}.{path}"


def _fill(message: Any, data: Any) -> Any:
    """Fill `message`; ConversionError paths are relative to it ("" is the message itself)."""
    if isinstance(data, _message.Message):
        message.CopyFrom(data)
        return message
    if not isinstance(data, Mapping):
        raise ConversionError("", f"expected a dict, got {type(data).__name__}")
    plan = plan_for(message.DESCRIPTOR)
    writers = plan.writers
    for key, value in data.items():
        writer = writers.get(key)
        if writer is None:
            raise ConversionError(
                str(key),
                f"{message.DESCRIPTOR.full_name} has no field {key!r}; "
                f"its fields: {', '.join(plan.field_names) or '(none)'}",
            )
        if value is None:
            continue
        try:
            writer(message, value)
        except ConversionError as exc:
            raise ConversionError(join_path(str(key), exc.path), exc.problem) from None
        except (TypeError, ValueError, OverflowError) as exc:
            raise ConversionError(str(key), str(exc)) from None
    return message


def fill_message(message: Any, data: Mapping[str, Any] | Any) -> Any:
    """Set the fields of `message` from a mapping (``None`` leaves a field unset).

    Repeated fields and maps are replaced, not appended to. A value that does not fit raises
    :class:`ConversionError` naming its path (``data.title``, ``items[1].name``).
    """
    try:
        return _fill(message, data)
    except ConversionError as exc:
        if exc.path:
            raise
        raise ConversionError(message.DESCRIPTOR.full_name, exc.problem) from None


def build_message(message_class: type, data: Mapping[str, Any] | Any | None = None) -> Any:
    """A new `message_class` filled from `data` (a mapping or a message instance)."""
    message = message_class()
    if data is not None:
        fill_message(message, data)
    return message
