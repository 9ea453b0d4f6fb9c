"""Python values <-> protobuf messages, driven by descriptors and never through JSON.

One plan per message descriptor is built on first use and cached, so each conversion is a
loop over precomputed per-field functions; reading a whole message is one compiled function
per type (a dict display, see ``_compiled_reader``). Shared by the serializer (DRF data -> message,
message -> data for validation) and the client (request dicts, response dicts).

Conversion rules (both directions):

- integers of every width are ``int``; ``bytes`` stay bytes; strings stay strings;
- an unset field with presence (proto3 ``optional``, message fields, oneof members) is ``None``;
  a field without presence always has its value, zero included;
- repeated fields are lists, maps are dicts, enums are their names;
- well-known types become Python values (``conversion.wellknown``): Timestamp <-> aware
  ``datetime`` (a naive one is local time, as Django takes it), Duration <-> ``timedelta``,
  Value/Struct/ListValue <-> JSON values, FieldMask <-> list of paths, wrapper types <-> their
  value, Empty <-> ``{}``;
- when writing a string field, ``Decimal``, ``date``/``time``/``datetime`` and ``UUID`` values are
  written in their canonical text (ISO 8601, fixed-point decimals), a ``FieldFile`` as its
  storage name (``conversion.scalars``).
"""

from __future__ import annotations

import keyword
import threading
from collections.abc import Callable, Mapping
from typing import Any

from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message

from django_grpc_bus.conversion.scalars import SCALAR_COERCE, as_int
from django_grpc_bus.conversion.wellknown import WELL_KNOWN, Reader, Writer

FD = _descriptor.FieldDescriptor


def repeated(field: FD) -> bool:
    """Whether a field is repeated, on every supported protobuf.

    protobuf 6 added ``FieldDescriptor.is_repeated``; protobuf 7 removed ``label``.
    """
    flag = getattr(field, "is_repeated", None)
    if flag is not None:
        return bool(flag)
    return getattr(field, "label", None) == FD.LABEL_REPEATED


class ConversionError(ValueError):
    """A value does not fit the message field it is meant for; names the field."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


# -- plans ---------------------------------------------------------------------------------------


class MessagePlan:
    """Per-field readers and writers of one message type."""

    __slots__ = ("descriptor", "field_names", "fields", "read", "readers", "writers")

    def __init__(self, descriptor: _descriptor.Descriptor) -> None:
        self.descriptor = descriptor
        self.fields = {field.name: field for field in descriptor.fields}
        self.field_names = tuple(self.fields)
        self.readers: dict[str, Reader] = {}
        self.writers: dict[str, Writer] = {}
        for field in descriptor.fields:
            self.readers[field.name] = _field_reader(field)
            self.writers[field.name] = _field_writer(field)
        self.read = _compiled_reader(self)


def _compiled_reader(plan: MessagePlan) -> Callable[[Any], dict[str, Any]]:
    """``message_to_dict`` of one message type, compiled from its plan.

    The reader is the source of one function, as ``dataclasses`` writes ``__init__``: a dict
    display with a key per field in field order, each value the attribute itself, None for a
    field with presence that is unset, or the attribute converted (enums, repeated fields,
    maps, messages) by the conversions the field-by-field readers use; so the dicts are the
    same, keys in the same order. A value that does not convert is read again field by field,
    which raises the ConversionError naming the first field that fails. A field name (which a
    client takes from the server's descriptors) is written into the source only as a string
    literal (``repr``) or, when it is an identifier, as an attribute name: it cannot be code.
    """
    names = plan.field_names
    namespace: dict[str, Any] = {
        "fallback": lambda message: _read_each(plan, names, message),
    }
    items = []
    for index, (name, field) in enumerate(plan.fields.items()):
        value = (
            f"message.{name}"
            if name.isidentifier() and not keyword.iskeyword(name)
            else f"getattr(message, {name!r})"
        )
        convert = _fetched_value_reader(field)
        if convert is not None:
            namespace[f"convert_{index}"] = convert
            value = f"convert_{index}({value})"
        if field.has_presence:
            value = f"{value} if has({name!r}) else None"
        items.append(f"            {name!r}: {value},\n")
    source = (
        "def read(message):\n"
        "    try:\n"
        "        has = message.HasField\n"
        "        return {\n" + "".join(items) + "        }\n"
        "    except (ValueError, OverflowError, TypeError):\n"
        "        return fallback(message)\n"
    )
    exec(compile(source, f"<message reader of {plan.descriptor.full_name}>", "exec"), namespace)
    read: Callable[[Any], dict[str, Any]] = namespace["read"]
    return read


def _fetched_value_reader(field: FD) -> Reader | None:
    """What :func:`_field_reader` does to the attribute it gets; None: it takes it as it is."""
    if _is_map(field):
        read_value = _value_reader(_message_type(field).fields_by_name["value"])
        return lambda value: {k: read_value(v) for k, v in value.items()}
    if repeated(field):
        if field.type in (FD.TYPE_MESSAGE, FD.TYPE_ENUM):
            read_one = _value_reader(field)
            return lambda value: [read_one(item) for item in value]
        return list
    if field.type in (FD.TYPE_MESSAGE, FD.TYPE_ENUM):
        return _value_reader(field)
    return None


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


def _message_type(field: FD) -> _descriptor.Descriptor:
    """The message type of a message field (a map's entry type for a map)."""
    assert field.message_type is not None, f"{field.full_name} is not a message field"
    return field.message_type


def _enum_type(field: FD) -> _descriptor.EnumDescriptor:
    assert field.enum_type is not None, f"{field.full_name} is not an enum field"
    return field.enum_type


def _is_map(field: FD) -> bool:
    message_type = field.message_type
    return bool(
        message_type is not None and message_type.GetOptions().map_entry and repeated(field)
    )


def _value_reader(field: FD) -> Reader:
    """Reads one value (an element, for repeated fields) already taken from the message."""
    if field.type == FD.TYPE_MESSAGE:
        well_known = WELL_KNOWN.get(_message_type(field).full_name)
        if well_known is not None:
            return well_known[0]
        return message_to_dict
    if field.type == FD.TYPE_ENUM:
        by_number = _enum_type(field).values_by_number

        def read_enum(number: int) -> Any:
            value = by_number.get(number)
            return value.name if value is not None else number

        return read_enum
    return lambda value: value


def _field_reader(field: FD) -> Reader:
    name = field.name
    if _is_map(field):
        value_field = _message_type(field).fields_by_name["value"]
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
        values = _enum_type(field).values_by_name
        found = values.get(value)
        if found is None:
            names = ", ".join(values)
            raise TypeError(f"{value!r} is not one of {names}")
        return found.number
    return as_int(value)


def _message_filler(field: FD) -> Writer:
    """fill(target, value) for the messages of a message field (or its elements)."""
    well_known = WELL_KNOWN.get(_message_type(field).full_name)
    if well_known is None:
        return _fill
    write = well_known[1]

    def fill_well_known(target: Any, value: Any) -> None:
        if isinstance(value, _message.Message):
            target.CopyFrom(value)
        else:
            write(target, value)

    return fill_well_known


def _scalar_coercer(field: FD) -> Callable[[Any], Any]:
    """coerce(value) -> the wire value, for a scalar or enum field (or its elements)."""
    if field.type == FD.TYPE_ENUM:
        return lambda value: _enum_number(field, value)
    return SCALAR_COERCE[field.type]


def _cleared_map(msg: Any, name: str, value: Any) -> Any:
    """The map field `name` of `msg`, emptied, once `value` is known to be a dict."""
    if not isinstance(value, Mapping):
        raise TypeError(f"expected a dict, got {type(value).__name__}")
    target = getattr(msg, name)
    target.clear()
    return target


def _field_writer(field: FD) -> Writer:
    name = field.name
    if _is_map(field):
        value_field = _message_type(field).fields_by_name["value"]
        if value_field.type == FD.TYPE_MESSAGE:
            fill_value = _message_filler(value_field)

            def write_message_map(msg: Any, value: Any) -> None:
                target = _cleared_map(msg, name, value)
                for key, item in value.items():
                    fill_value(target[key], item)

            return write_message_map
        coerce_value = _scalar_coercer(value_field)

        def write_map(msg: Any, value: Any) -> None:
            target = _cleared_map(msg, name, value)
            for key, item in value.items():
                target[key] = coerce_value(item)

        return write_map
    if field.type == FD.TYPE_MESSAGE:
        fill = _message_filler(field)
        if repeated(field):

            def write_repeated_messages(msg: Any, value: Any) -> None:
                target = getattr(msg, name)
                del target[:]
                for index, item in enumerate(_as_list(value)):
                    try:
                        fill(target.add(), item)
                    except ConversionError as exc:
                        raise ConversionError(
                            join_path(f"[{index}]", exc.path), exc.problem
                        ) from None
                    except (TypeError, ValueError, OverflowError) as exc:
                        raise ConversionError(f"[{index}]", str(exc)) from None

            return write_repeated_messages

        def write_message(msg: Any, value: Any) -> None:
            target = getattr(msg, name)
            target.SetInParent()
            fill(target, value)

        return write_message
    coerce = _scalar_coercer(field)
    if repeated(field):

        def write_repeated(msg: Any, value: Any) -> None:
            target = getattr(msg, name)
            items = []
            for index, item in enumerate(_as_list(value)):
                try:
                    items.append(coerce(item))
                except (TypeError, ValueError, OverflowError) as exc:
                    raise ConversionError(f"[{index}]", str(exc)) from None
            del target[:]
            target.extend(items)

        return write_repeated

    def write_scalar(msg: Any, value: Any) -> None:
        setattr(msg, name, coerce(value))

    return write_scalar


def _as_list(value: Any) -> list:
    if isinstance(value, (str, bytes, Mapping)) or not hasattr(value, "__iter__"):
        raise TypeError(f"expected a list, got {type(value).__name__}")
    return list(value)


# -- public API ----------------------------------------------------------------------------------


def message_to_dict(message: Any, fields: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Every field of `message` (or only `fields`) as a Python value, by the rules above."""
    plan = plan_for(message.DESCRIPTOR)
    if fields is None:
        return plan.read(message)
    return _read_each(plan, fields, message)


def dict_reader(descriptor: _descriptor.Descriptor) -> Callable[[Any], dict[str, Any]]:
    """``message_to_dict`` for messages of `descriptor`, looked up once for many messages."""
    return plan_for(descriptor).read


def _read_each(plan: MessagePlan, names: tuple[str, ...], message: Any) -> dict[str, Any]:
    """The fields `names` of `message`, field by field (an error names the field)."""
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


def given_fields(message: Any) -> dict[str, Any]:
    """:func:`present_fields`, and so for the messages nested in it (other than well-known
    types): what a request gave of a writable nested serializer's data."""
    plan = plan_for(message.DESCRIPTOR)
    result: dict[str, Any] = {}
    for name, field in plan.fields.items():
        if field.has_presence and not message.HasField(name):
            continue
        nested = field.message_type
        if nested is None or nested.full_name in WELL_KNOWN or _is_map(field):
            result[name] = _read(plan, name, message)
        elif repeated(field):
            result[name] = [given_fields(item) for item in getattr(message, name)]
        else:
            result[name] = given_fields(getattr(message, name))
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
