"""The compiled message reader gives the same dicts as the field-by-field reader it replaced.

``OldReader`` is ``message_to_dict`` as it was before the reader was compiled (commit b2b4e5c),
copied verbatim and made recursive on itself, so nested messages are read the old way too.
Every message type of the test project and the unit tests' ``Sample`` (every field kind) is
read by both: unset, zero-but-present, and filled; and the test project's ``Everything`` rows
with values and with nulls, as the serializer writes them. Equal means the same ``repr``
(types, key order, digits) and ``==``.
"""

from __future__ import annotations

import datetime as dt
import importlib
import pkgutil
from typing import Any

import pytest
from google.protobuf import struct_pb2
from google.protobuf.descriptor import FieldDescriptor as FD

from django_grpc_bus.conversion.messages import (
    ConversionError,
    dict_reader,
    message_to_dict,
    repeated,
)
from django_grpc_bus.conversion.wellknown import WELL_KNOWN, WRAPPERS, json_to_value

from .test_messages import _sample_classes
from .test_roundtrip import filepath, make_row, serializer_class  # noqa: F401 (fixtures)

# -- the reader before it was compiled ---------------------------------------------------------


class OldReader:
    def __init__(self) -> None:
        self.readers: dict[Any, dict[str, Any]] = {}

    def value_reader(self, field: FD) -> Any:
        if field.type == FD.TYPE_MESSAGE:
            well_known = WELL_KNOWN.get(field.message_type.full_name)
            if well_known is not None:
                return well_known[0]
            return self.message_to_dict
        if field.type == FD.TYPE_ENUM:
            by_number = field.enum_type.values_by_number

            def read_enum(number: int) -> Any:
                value = by_number.get(number)
                return value.name if value is not None else number

            return read_enum
        return lambda value: value

    def field_reader(self, field: FD) -> Any:
        name = field.name
        message_type = field.message_type
        if message_type is not None and message_type.GetOptions().map_entry and repeated(field):
            read_value = self.value_reader(message_type.fields_by_name["value"])
            return lambda msg: {k: read_value(v) for k, v in getattr(msg, name).items()}
        read_one = self.value_reader(field)
        if repeated(field):
            if field.type in (FD.TYPE_MESSAGE, FD.TYPE_ENUM):
                return lambda msg: [read_one(item) for item in getattr(msg, name)]
            return lambda msg: list(getattr(msg, name))
        if field.has_presence:
            return lambda msg: read_one(getattr(msg, name)) if msg.HasField(name) else None
        if field.type == FD.TYPE_ENUM:
            return lambda msg: read_one(getattr(msg, name))
        return lambda msg: getattr(msg, name)

    def message_to_dict(self, message: Any) -> dict[str, Any]:
        descriptor = message.DESCRIPTOR
        readers = self.readers.get(descriptor)
        if readers is None:
            readers = self.readers[descriptor] = {
                field.name: self.field_reader(field) for field in descriptor.fields
            }
        result = {}
        for name, reader in readers.items():
            try:
                result[name] = reader(message)
            except (ValueError, OverflowError, TypeError) as exc:
                raise ConversionError(name, f"not a valid value: {exc}") from None
        return result


old_message_to_dict = OldReader().message_to_dict


def assert_same(message: Any) -> dict[str, Any]:
    old = old_message_to_dict(message)
    new = message_to_dict(message)
    assert repr(new) == repr(old)
    assert new == old
    assert repr(dict_reader(message.DESCRIPTOR)(message)) == repr(old)
    return new


# -- messages of every type, filled by their descriptors ---------------------------------------

SCALARS = {
    FD.TYPE_DOUBLE: 0.1 + 0.2,
    FD.TYPE_FLOAT: 1.5,
    FD.TYPE_BOOL: True,
    FD.TYPE_STRING: "héllo ✓ 12345678901234567890.0123456789",
    FD.TYPE_BYTES: b"\x00\xffbytes",
    FD.TYPE_INT32: -(2**31),
    FD.TYPE_SINT32: -7,
    FD.TYPE_SFIXED32: -8,
    FD.TYPE_UINT32: 2**32 - 1,
    FD.TYPE_FIXED32: 9,
    FD.TYPE_INT64: 2**63 - 1,
    FD.TYPE_SINT64: -(2**63),
    FD.TYPE_SFIXED64: -11,
    FD.TYPE_UINT64: 2**64 - 1,
    FD.TYPE_FIXED64: 12,
}
JSON = {"list": [1, 2.5, None, True, "x"], "big": 2**40, "nested": {"k": []}}


def fill_well_known(message: Any) -> None:
    name = message.DESCRIPTOR.full_name
    if name == "google.protobuf.Timestamp":
        message.seconds, message.nanos = 1_709_251_199, 999_999_000
    elif name == "google.protobuf.Duration":
        message.seconds, message.nanos = -86_395, -999_993_000
    elif name == "google.protobuf.Value":
        json_to_value(JSON, message)
    elif name == "google.protobuf.Struct":
        for key, item in JSON.items():
            json_to_value(item, message.fields[key])
    elif name == "google.protobuf.ListValue":
        for item in JSON["list"]:
            json_to_value(item, message.values.add())
    elif name == "google.protobuf.FieldMask":
        message.paths.extend(["title", "author.name"])
    elif name in WRAPPERS:
        message.value = SCALARS[message.DESCRIPTOR.fields_by_name["value"].type]
    else:  # Empty
        message.SetInParent()


def set_value(message: Any, field: FD, depth: int) -> None:
    """One value of `field` in `message` (a repeated field or map gets one more)."""
    name = field.name
    if field.type == FD.TYPE_MESSAGE:
        entry = field.message_type
        if entry.GetOptions().map_entry:
            key_type = entry.fields_by_name["key"].type
            value_field = entry.fields_by_name["value"]
            for key in (SCALARS[key_type], "" if key_type == FD.TYPE_STRING else 0):
                target = getattr(message, name)
                if value_field.type == FD.TYPE_MESSAGE:
                    fill(target[key], depth + 1)
                elif value_field.type == FD.TYPE_ENUM:
                    target[key] = value_field.enum_type.values[-1].number
                else:
                    target[key] = SCALARS[value_field.type]
            return
        if repeated(field):
            fill(getattr(message, name).add(), depth + 1)
            getattr(message, name).add()  # and an empty one
            return
        fill(getattr(message, name), depth + 1)
        getattr(message, name).SetInParent()
        return
    if field.type == FD.TYPE_ENUM:
        last = field.enum_type.values[-1].number
        value: Any = [last, 0, 99] if repeated(field) else last
    else:
        value = [SCALARS[field.type]] * 2 if repeated(field) else SCALARS[field.type]
    if repeated(field):
        getattr(message, name).extend(value)
    else:
        setattr(message, name, value)


def fill(message: Any, depth: int = 0) -> Any:
    if message.DESCRIPTOR.full_name in WELL_KNOWN:
        fill_well_known(message)
    elif depth < 4:
        for field in message.DESCRIPTOR.fields:
            if field.containing_oneof is None or field.index == field.containing_oneof.fields[0]:
                set_value(message, field, depth)
    return message


def zeros(message_class: Any) -> Any:
    """Every field with presence set to its zero value (or an empty message)."""
    message = message_class()
    for field in message.DESCRIPTOR.fields:
        if not field.has_presence:
            continue
        if field.type == FD.TYPE_MESSAGE:
            getattr(message, field.name).SetInParent()
        elif field.containing_oneof is None:
            setattr(
                message,
                field.name,
                False if field.type == FD.TYPE_BOOL else type(SCALARS.get(field.type, 0))(),
            )
    return message


def project_message_classes() -> list[Any]:
    package = importlib.import_module("generated_grpc.grpc")
    classes = []
    for module_info in pkgutil.iter_modules(package.__path__):
        if not module_info.name.endswith("_pb2"):
            continue
        module = importlib.import_module(f"generated_grpc.grpc.{module_info.name}")
        for descriptor in module.DESCRIPTOR.message_types_by_name.values():
            classes.append(getattr(module, descriptor.name))
    return classes


@pytest.fixture(scope="module")
def all_classes(compiled, tmp_path_factory):
    sample = _sample_classes(str(tmp_path_factory.mktemp("sample_proto")))
    classes = project_message_classes()
    names = {cls.DESCRIPTOR.name for cls in classes}
    assert {"EverythingData", "BookData", "BookListResponse"} <= names  # the project was read
    return [sample.Sample, sample.Deep, sample.Inner, *classes]


def test_every_message_type_reads_the_same_unset_zero_and_filled(all_classes):
    filled_fields = 0
    for message_class in all_classes:
        assert_same(message_class())
        assert_same(zeros(message_class))
        full = fill(message_class())
        result = assert_same(full)
        filled_fields += sum(value not in (None, [], {}) for value in result.values())
        assert_same(message_class.FromString(full.SerializeToString()))
    assert filled_fields > 200  # the filler did fill: not only defaults compared


def test_a_list_response_reads_the_same_row_by_row(all_classes):
    response_class = next(c for c in all_classes if c.DESCRIPTOR.name == "BookListResponse")
    response = fill(response_class())
    for _ in range(5):
        fill(response.results.add())
    response.results.add()
    read = dict_reader(response.results[0].DESCRIPTOR)
    assert [repr(read(row)) for row in response.results] == [
        repr(old_message_to_dict(row)) for row in response.results
    ]


def test_a_value_that_does_not_convert_raises_the_same_error(proto_sample):
    message = proto_sample.Sample(i32=1)
    message.inner_by_name["x"].title = "ok"
    message.when.seconds = -62_135_596_800 - 86_400  # before year 1
    message.moments.add().seconds = 10**12  # after year 9999: the first failure is `when`
    with pytest.raises(ConversionError) as old:
        old_message_to_dict(message)
    with pytest.raises(ConversionError) as new:
        message_to_dict(message)
    assert (new.value.path, str(new.value)) == (old.value.path, str(old.value)) != ("", "")
    assert new.value.path == "when"
    deep = proto_sample.Sample()
    deep.inner_by_name["x"].title = "fine"
    deep.json_by_name["j"].number_value = 1.0
    deep.took.seconds = 10**12  # outside Duration's range
    with pytest.raises(ConversionError) as old:
        old_message_to_dict(deep)
    with pytest.raises(ConversionError) as new:
        message_to_dict(deep)
    assert str(new.value) == str(old.value)


@pytest.fixture
def proto_sample(tmp_path_factory):
    return _sample_classes(str(tmp_path_factory.mktemp("sample_proto")))


NULLS = {
    "f_null_int": None,
    "f_null_char": None,
    "f_null_decimal": None,
    "f_null_bool": None,
    "f_null_datetime": None,
    "f_null_date": None,
    "f_null_json": None,
    "editor": None,
}


@pytest.mark.parametrize("overrides", [{}, NULLS], ids=["values", "nulls"])
def test_everything_rows_read_the_same(serializer_class, make_row, overrides):  # noqa: F811
    message = serializer_class.to_message(make_row(**overrides))
    result = assert_same(type(message).FromString(message.SerializeToString()))
    assert isinstance(result["f_decimal"], str)  # Decimal as text (its digits: the database's)
    assert result["f_datetime"] == dt.datetime(
        2024, 2, 29, 23, 59, 59, 999999, tzinfo=dt.timezone.utc
    )
    assert (result["f_null_int"] is None) == bool(overrides)


def test_a_struct_message_itself_reads_the_same():
    struct = struct_pb2.Struct()
    json_to_value(JSON, struct.fields["a"])
    assert assert_same(struct) == {"fields": {"a": JSON}}


def test_field_names_that_are_keywords_or_the_readers_own_names_read_the_same():
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    file = descriptor_pb2.FileDescriptorProto(
        name="reader_names.proto", package="reader_names", syntax="proto3"
    )
    odd = file.message_type.add(name="Odd")
    names = ("from", "class", "message", "has", "fallback", "convert_0", "read")
    for number, name in enumerate(names, start=1):
        odd.field.add(name=name, number=number, type=FD.TYPE_INT32, label=FD.LABEL_OPTIONAL)
    odd.field.add(name="lambda", number=20, type=FD.TYPE_STRING, label=FD.LABEL_REPEATED)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    odd_class = message_factory.GetMessageClass(pool.FindMessageTypeByName("reader_names.Odd"))
    message = odd_class()
    for number, name in enumerate(names, start=1):
        setattr(message, name, number)
    getattr(message, "lambda").extend(["x", "y"])
    assert assert_same(message) == {
        **dict(zip(names, range(1, 8), strict=True)),
        "lambda": ["x", "y"],
    }
    assert assert_same(odd_class()) == {**dict.fromkeys(names, 0), "lambda": []}
