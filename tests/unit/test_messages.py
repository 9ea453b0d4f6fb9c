"""django_grpc_bus.conversion.messages: Python values <-> protobuf messages, by the module's rules.

The compiled test project (``generated_grpc``) gives real generated messages; a small proto of
our own (compiled here with grpc_tools into the default descriptor pool) gives what the
generated ones lack: enums, maps, oneofs, nested and repeated messages, every wrapper type.
"""

from __future__ import annotations

import datetime as dt
import functools
import importlib
import types
import uuid
from decimal import Decimal
from importlib import resources

import pytest
from django.test import override_settings
from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    duration_pb2,
    empty_pb2,
    field_mask_pb2,
    message_factory,
    struct_pb2,
    timestamp_pb2,
    wrappers_pb2,
)

from django_grpc_bus.conversion import messages
from django_grpc_bus.conversion.messages import (
    ConversionError,
    build_message,
    fill_message,
    message_to_dict,
    plan_for,
    present_fields,
)

UTC = dt.timezone.utc
INT64_MAX = 2**63 - 1

SAMPLE_PROTO = """
syntax = "proto3";

package grpcbus_tests.messages;

import "google/protobuf/duration.proto";
import "google/protobuf/empty.proto";
import "google/protobuf/field_mask.proto";
import "google/protobuf/struct.proto";
import "google/protobuf/timestamp.proto";
import "google/protobuf/wrappers.proto";

enum Color {
  COLOR_UNSPECIFIED = 0;
  RED = 1;
  GREEN = 2;
}

message Inner {
  string title = 1;
  int32 count = 2;
  optional string note = 3;
}

message Leaf {
  int32 age = 1;
  int32 child_age = 2;
}

message Parent {
  Leaf child = 1;
  Leaf kid = 2;
}

message Deep {
  Parent parent = 1;
}

message Sample {
  int32 i32 = 1;
  int64 i64 = 2;
  uint64 u64 = 3;
  sint64 s64 = 4;
  fixed64 f64 = 5;
  sfixed32 sf32 = 6;
  double dbl = 7;
  float flt = 8;
  bool flag = 9;
  string text = 10;
  bytes blob = 11;
  optional int32 maybe_int = 12;
  optional string maybe_text = 13;
  optional bool maybe_flag = 14;
  optional bytes maybe_blob = 15;
  Color color = 16;
  optional Color maybe_color = 17;
  repeated Color colors = 18;
  repeated int64 numbers = 19;
  repeated string words = 20;
  repeated bytes blobs = 21;
  Inner inner = 22;
  repeated Inner inners = 23;
  map<string, int64> counts = 24;
  map<string, Inner> inner_by_name = 25;
  map<string, Color> color_by_name = 26;
  map<int32, string> names_by_id = 27;
  map<string, google.protobuf.Value> json_by_name = 28;
  google.protobuf.Timestamp when = 29;
  google.protobuf.Duration took = 30;
  google.protobuf.Value json = 31;
  google.protobuf.Struct object = 32;
  google.protobuf.ListValue array = 33;
  google.protobuf.FieldMask mask = 34;
  google.protobuf.DoubleValue w_double = 35;
  google.protobuf.FloatValue w_float = 36;
  google.protobuf.Int64Value w_int64 = 37;
  google.protobuf.UInt64Value w_uint64 = 38;
  google.protobuf.Int32Value w_int32 = 39;
  google.protobuf.UInt32Value w_uint32 = 40;
  google.protobuf.BoolValue w_bool = 41;
  google.protobuf.StringValue w_string = 42;
  google.protobuf.BytesValue w_bytes = 43;
  google.protobuf.Empty nothing = 44;
  repeated google.protobuf.Timestamp moments = 45;
  oneof choice {
    string choice_text = 46;
    int32 choice_number = 47;
  }
}
"""
SAMPLE_FILE = "grpcbus_tests/messages_test.proto"


@functools.cache
def _sample_classes(tmp_dir: str) -> types.SimpleNamespace:
    from pathlib import Path

    from grpc_tools import protoc

    # The well-known types must be in the default pool before our file that imports them.
    for module in (duration_pb2, empty_pb2, field_mask_pb2, struct_pb2, timestamp_pb2):
        assert module.DESCRIPTOR is not None
    assert wrappers_pb2.DESCRIPTOR is not None

    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(SAMPLE_FILE)
    except KeyError:
        source = Path(tmp_dir) / SAMPLE_FILE
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_text(SAMPLE_PROTO)
        out = Path(tmp_dir) / "sample.pb"
        include = str(resources.files("grpc_tools") / "_proto")
        code = protoc.main(
            ["protoc", f"-I{include}", f"-I{tmp_dir}", f"--descriptor_set_out={out}", SAMPLE_FILE]
        )
        assert code == 0, "protoc failed on the test proto"
        file_set = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
        (file_proto,) = file_set.file
        pool.Add(file_proto)
    names = ("Inner", "Leaf", "Parent", "Deep", "Sample")
    classes = {
        name: message_factory.GetMessageClass(
            pool.FindMessageTypeByName(f"grpcbus_tests.messages.{name}")
        )
        for name in names
    }
    color = pool.FindEnumTypeByName("grpcbus_tests.messages.Color")
    return types.SimpleNamespace(**classes, Color=color)


@pytest.fixture(scope="session")
def proto(tmp_path_factory):
    return _sample_classes(str(tmp_path_factory.mktemp("sample_proto")))


@pytest.fixture
def everything(compiled):
    return importlib.import_module("generated_grpc.grpc.Everything_pb2")


@pytest.fixture
def book(compiled):
    return importlib.import_module("generated_grpc.grpc.catalog_Book_pb2")


def conversion_error(message_class, data) -> ConversionError:
    with pytest.raises(ConversionError) as info:
        build_message(message_class, data)
    return info.value


# -- reading: scalars, presence, repeated ---------------------------------------------------------


def test_int64_values_stay_exact_ints(everything, proto):
    message = everything.EverythingData(id=INT64_MAX, f_bigint=INT64_MAX, f_posbig=INT64_MAX)
    result = message_to_dict(message)
    for name in ("id", "f_bigint", "f_posbig"):
        assert result[name] == INT64_MAX
        assert type(result[name]) is int

    sample = proto.Sample(u64=2**64 - 1, s64=-(2**63), f64=2**64 - 1, sf32=-(2**31))
    result = message_to_dict(sample)
    assert result["u64"] == 2**64 - 1
    assert result["s64"] == -(2**63)
    assert result["f64"] == 2**64 - 1
    assert result["sf32"] == -(2**31)
    assert all(type(result[name]) is int for name in ("u64", "s64", "f64", "sf32"))


def test_bytes_stay_bytes(everything, proto):
    raw = b"\x00\x01\xff\xfe not utf-8"
    assert message_to_dict(everything.EverythingData(f_binary=raw))["f_binary"] == raw
    result = message_to_dict(proto.Sample(blob=raw, blobs=[b"a", b"\xff"], maybe_blob=b""))
    assert result["blob"] == raw and type(result["blob"]) is bytes
    assert result["blobs"] == [b"a", b"\xff"]
    assert result["maybe_blob"] == b""


def test_fields_without_presence_keep_their_zero_values(everything):
    result = message_to_dict(everything.EverythingData())
    assert result["f_int"] == 0 and type(result["f_int"]) is int
    assert result["f_bigint"] == 0
    assert result["f_float"] == 0.0 and type(result["f_float"]) is float
    assert result["f_bool"] is False
    assert result["f_char"] == ""
    assert result["f_decimal"] == ""
    assert result["author"] == 0
    assert result["tags"] == []


def test_unset_optional_fields_are_none_and_set_zero_is_not(everything):
    unset = message_to_dict(everything.EverythingData())
    for name in ("id", "f_null_int", "f_null_char", "f_null_bool", "f_binary", "editor", "token"):
        assert unset[name] is None, name

    zeros = message_to_dict(
        everything.EverythingData(
            f_null_int=0, f_null_char="", f_null_bool=False, f_binary=b"", editor=0
        )
    )
    assert zeros["f_null_int"] == 0 and zeros["f_null_int"] is not None
    assert zeros["f_null_char"] == ""
    assert zeros["f_null_bool"] is False
    assert zeros["f_binary"] == b""
    assert zeros["editor"] == 0


def test_unset_message_fields_are_none(everything, proto):
    result = message_to_dict(everything.EverythingData())
    for name in ("f_datetime", "f_duration", "f_json", "f_null_datetime", "f_null_json"):
        assert result[name] is None, name

    sample = message_to_dict(proto.Sample())
    for name in ("inner", "when", "took", "json", "object", "array", "mask", "nothing", "w_int64"):
        assert sample[name] is None, name


def test_set_empty_nested_message_is_a_dict_of_its_zero_values(proto):
    message = proto.Sample()
    message.inner.SetInParent()
    assert message_to_dict(message)["inner"] == {"title": "", "count": 0, "note": None}


def test_repeated_fields_are_plain_lists(everything, proto):
    result = message_to_dict(everything.EverythingData(tags=[3, 1, 2]))
    assert result["tags"] == [3, 1, 2]
    assert type(result["tags"]) is list

    sample = message_to_dict(proto.Sample(numbers=[INT64_MAX, -1], words=["a", ""]))
    assert sample["numbers"] == [INT64_MAX, -1] and type(sample["numbers"]) is list
    assert sample["words"] == ["a", ""] and type(sample["words"]) is list


def test_nested_and_repeated_messages_are_dicts(everything, proto):
    request = everything.EverythingPartialUpdateRequest(
        data=everything.EverythingData(id=5, f_char="x", f_null_int=3),
        update_mask=field_mask_pb2.FieldMask(paths=["f_char", "f_null_int"]),
    )
    result = message_to_dict(request)
    assert type(result["data"]) is dict
    assert result["data"]["id"] == 5
    assert result["data"]["f_char"] == "x"
    assert result["data"]["f_null_int"] == 3
    assert result["data"]["f_null_char"] is None
    assert result["update_mask"] == ["f_char", "f_null_int"]

    response = everything.EverythingListResponse(
        results=[everything.EverythingData(f_int=1), everything.EverythingData(f_int=2)],
        next_page_token="abc",
    )
    result = message_to_dict(response)
    assert [type(row) for row in result["results"]] == [dict, dict]
    assert [row["f_int"] for row in result["results"]] == [1, 2]
    assert result["next_page_token"] == "abc"

    sample = proto.Sample(inners=[proto.Inner(title="a", note="n"), proto.Inner(count=2)])
    assert message_to_dict(sample)["inners"] == [
        {"title": "a", "count": 0, "note": "n"},
        {"title": "", "count": 2, "note": None},
    ]


def test_message_to_dict_with_fields_reads_only_those(everything):
    message = everything.EverythingData(f_int=4, f_char="c")
    assert message_to_dict(message, ("f_char", "f_int")) == {"f_char": "c", "f_int": 4}


# -- enums -----------------------------------------------------------------------------------------


def test_enums_read_as_their_names(proto):
    value = struct_pb2.Value(null_value=struct_pb2.NULL_VALUE)
    assert message_to_dict(value)["null_value"] == "NULL_VALUE"

    field = descriptor_pb2.FieldDescriptorProto(
        type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING
    )
    result = message_to_dict(field)
    assert result["type"] == "TYPE_STRING"
    assert result["label"] is None  # proto2 optional enum, unset

    red, green = (
        proto.Color.values_by_name["RED"].number,
        proto.Color.values_by_name["GREEN"].number,
    )
    sample = proto.Sample(colors=[green, red], color_by_name={"x": red}, maybe_color=0)
    result = message_to_dict(sample)
    assert result["color"] == "COLOR_UNSPECIFIED"
    assert result["maybe_color"] == "COLOR_UNSPECIFIED"
    assert result["colors"] == ["GREEN", "RED"]
    assert result["color_by_name"] == {"x": "RED"}


def test_an_unknown_enum_number_reads_as_the_number(proto):
    # proto3 enums are open: a newer peer may send a value this side does not know.
    assert message_to_dict(proto.Sample(color=7))["color"] == 7


def test_enums_written_by_name_or_number(proto):
    red = proto.Color.values_by_name["RED"].number
    green = proto.Color.values_by_name["GREEN"].number
    message = build_message(
        proto.Sample,
        {
            "color": "RED",
            "maybe_color": green,
            "colors": ["GREEN", red],
            "color_by_name": {"k": "GREEN"},
        },
    )
    assert message.color == red
    assert message.HasField("maybe_color") and message.maybe_color == green
    assert list(message.colors) == [green, red]
    assert dict(message.color_by_name) == {"k": green}

    field = build_message(descriptor_pb2.FieldDescriptorProto, {"type": "TYPE_STRING"})
    assert field.type == descriptor_pb2.FieldDescriptorProto.TYPE_STRING

    value = build_message(struct_pb2.Value, {"null_value": "NULL_VALUE"})
    assert value.WhichOneof("kind") == "null_value"


def test_an_unknown_enum_name_is_an_error_listing_the_names(proto):
    error = conversion_error(proto.Sample, {"color": "BLUE"})
    assert error.path == "color"
    for name in ("BLUE", "COLOR_UNSPECIFIED", "RED", "GREEN"):
        assert name in str(error)


@pytest.mark.parametrize("value", [True, 1.0, ["RED"]], ids=["bool", "float", "list"])
def test_enum_rejects_other_types(proto, value):
    assert conversion_error(proto.Sample, {"color": value}).path == "color"


# -- maps ----------------------------------------------------------------------------------------


def test_maps_are_dicts_both_ways(proto):
    data = {
        "counts": {"a": INT64_MAX, "b": 0},
        "inner_by_name": {"x": {"title": "t", "note": "n"}, "y": {}},
        "names_by_id": {1: "one", -2: "minus two"},
        "json_by_name": {"j": {"list": [1, 2.5, None]}, "n": None, "s": "text"},
    }
    message = build_message(proto.Sample, data)
    assert dict(message.counts) == {"a": INT64_MAX, "b": 0}
    assert message.inner_by_name["x"].title == "t"
    result = message_to_dict(message)
    assert result["counts"] == {"a": INT64_MAX, "b": 0}
    assert type(result["counts"]) is dict
    assert result["inner_by_name"] == {
        "x": {"title": "t", "count": 0, "note": "n"},
        "y": {"title": "", "count": 0, "note": None},
    }
    assert result["names_by_id"] == {1: "one", -2: "minus two"}
    assert result["json_by_name"] == {"j": {"list": [1, 2.5, None]}, "n": None, "s": "text"}
    assert message_to_dict(proto.Sample())["counts"] == {}


def test_struct_fields_map_reads_as_a_dict_of_json_values():
    struct = struct_pb2.Struct()
    struct.update({"a": 1, "b": [True, "x"]})
    assert message_to_dict(struct) == {"fields": {"a": 1, "b": [True, "x"]}}
    built = build_message(struct_pb2.Struct, {"fields": {"k": {"n": 2}}})
    assert built["k"]["n"] == 2


@pytest.mark.parametrize(
    "data",
    [
        {"counts": ["a"]},
        {"counts": {"a": "1"}},
        {"counts": {"a": True}},
        {"names_by_id": {"one": "x"}},
        {"inner_by_name": {"x": 5}},
    ],
    ids=["not-a-dict", "str-value", "bool-value", "str-key-for-int", "scalar-for-message"],
)
def test_map_errors_name_the_map(proto, data):
    (name,) = data
    error = conversion_error(proto.Sample, data)
    assert error.path.split(".")[0] == name
    assert name in str(error)


# -- well-known types ----------------------------------------------------------------------------


def test_timestamp_reads_as_an_aware_utc_datetime(everything):
    moment = dt.datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=UTC)
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    result = message_to_dict(everything.EverythingData(f_datetime=stamp))["f_datetime"]
    assert result == moment
    assert result.utcoffset() == dt.timedelta(0)


def test_timestamp_written_from_aware_datetime_keeps_the_instant(everything):
    tz = dt.timezone(dt.timedelta(hours=5, minutes=30))
    moment = dt.datetime(2030, 6, 1, 8, 0, 0, 1, tzinfo=tz)
    message = build_message(everything.EverythingData, {"f_datetime": moment})
    assert message.HasField("f_datetime")
    assert message.f_datetime.seconds == int(moment.timestamp())
    assert message.f_datetime.nanos == 1000
    assert message_to_dict(message)["f_datetime"] == moment


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-01-02T03:04:05Z", dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2024-01-02T03:04:05.250Z", dt.datetime(2024, 1, 2, 3, 4, 5, 250000, tzinfo=UTC)),
        ("2024-01-02T05:04:05+02:00", dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),
    ],
)
def test_timestamp_written_from_an_iso_string(everything, text, expected):
    message = build_message(everything.EverythingData, {"f_datetime": text})
    assert message_to_dict(message)["f_datetime"] == expected


def test_timestamp_from_a_naive_datetime_is_in_time_zone(everything):
    with (
        override_settings(TIME_ZONE="America/New_York"),
        pytest.warns(RuntimeWarning, match="naive datetime.*America/New_York"),
    ):
        message = build_message(
            everything.EverythingData, {"f_datetime": dt.datetime(2024, 1, 15, 12, 0)}
        )
    assert message_to_dict(message)["f_datetime"] == dt.datetime(2024, 1, 15, 17, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "value", [dt.date(2024, 1, 1), 1700000000, "not a date"], ids=["date", "int", "bad-string"]
)
def test_timestamp_rejects_other_values(everything, value):
    error = conversion_error(everything.EverythingData, {"f_datetime": value})
    assert error.path == "f_datetime"


def test_repeated_timestamps(proto):
    moments = [dt.datetime(2020, 1, 1, tzinfo=UTC), "2021-06-01T00:00:00Z"]
    message = build_message(proto.Sample, {"moments": moments})
    assert message_to_dict(message)["moments"] == [
        dt.datetime(2020, 1, 1, tzinfo=UTC),
        dt.datetime(2021, 6, 1, tzinfo=UTC),
    ]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            dt.timedelta(days=-1, seconds=5, microseconds=7),
            dt.timedelta(days=-1, seconds=5, microseconds=7),
        ),
        (dt.timedelta(days=400, microseconds=1), dt.timedelta(days=400, microseconds=1)),
        (90, dt.timedelta(seconds=90)),
        (1.5, dt.timedelta(seconds=1, microseconds=500000)),
        (-2, dt.timedelta(seconds=-2)),
    ],
    ids=[
        "negative-timedelta",
        "long-timedelta",
        "int-seconds",
        "float-seconds",
        "negative-seconds",
    ],
)
def test_duration_written_from_timedelta_or_seconds(everything, value, expected):
    message = build_message(everything.EverythingData, {"f_duration": value})
    result = message_to_dict(message)["f_duration"]
    assert result == expected
    assert type(result) is dt.timedelta


@pytest.mark.parametrize(
    "value", [True, "ninety", dt.datetime(2020, 1, 1)], ids=["bool", "str", "datetime"]
)
def test_duration_rejects_other_values(everything, value):
    assert conversion_error(everything.EverythingData, {"f_duration": value}).path == "f_duration"


JSON_VALUES = [
    {"list": [1, 2.5, None, True, "x"], "nested": {"k": [], "e": {}}, "big": 2**40},
    [1, -7, 2**53, 1.5, {"a": 0}],
    "text",
    0,
    False,
    [],
    {},
]


@pytest.mark.parametrize(
    "value", JSON_VALUES, ids=[type(v).__name__ + str(i) for i, v in enumerate(JSON_VALUES)]
)
def test_value_round_trips_json(everything, value):
    message = build_message(everything.EverythingData, {"f_json": value})
    assert message.HasField("f_json")
    wire = everything.EverythingData.FromString(message.SerializeToString())
    assert message_to_dict(wire)["f_json"] == value


def test_value_integral_numbers_come_back_as_int_and_bools_as_bool(everything):
    data = {"f_json": {"i": 1, "f": 1.0, "neg": -3, "max": 2**53, "frac": 0.5, "t": True}}
    result = message_to_dict(build_message(everything.EverythingData, data))["f_json"]
    assert result == {"i": 1, "f": 1, "neg": -3, "max": 2**53, "frac": 0.5, "t": True}
    assert type(result["i"]) is int
    assert type(result["f"]) is int  # 1.0 is integral
    assert type(result["max"]) is int
    assert type(result["frac"]) is float
    assert type(result["t"]) is bool


def test_value_rejects_non_json(everything):
    error = conversion_error(everything.EverythingData, {"f_json": {"a": object()}})
    assert error.path == "f_json"


def test_struct_and_list_value(proto):
    message = build_message(
        proto.Sample, {"object": {"a": [1, "b"], "n": None}, "array": [1, {"x": 2.5}]}
    )
    result = message_to_dict(message)
    assert result["object"] == {"a": [1, "b"], "n": None}
    assert result["array"] == [1, {"x": 2.5}]
    empty = build_message(proto.Sample, {"object": {}, "array": []})
    assert empty.HasField("object") and empty.HasField("array")
    assert message_to_dict(empty)["object"] == {}
    assert message_to_dict(empty)["array"] == []


@pytest.mark.parametrize(
    ("name", "value"), [("object", [1]), ("object", "x"), ("array", {"a": 1}), ("array", "abc")]
)
def test_struct_and_list_value_reject_the_other_shape(proto, name, value):
    assert conversion_error(proto.Sample, {name: value}).path == name


@pytest.mark.parametrize(
    ("value", "paths"),
    [
        (["f_char", "f_int"], ["f_char", "f_int"]),
        (("a.b",), ["a.b"]),
        ("f_char,f_int", ["f_char", "f_int"]),
        (" f_char , f_int ,", ["f_char", "f_int"]),
        ("f_char", ["f_char"]),
    ],
)
def test_field_mask_from_paths_or_a_comma_string(everything, value, paths):
    message = build_message(everything.EverythingPartialUpdateRequest, {"update_mask": value})
    assert list(message.update_mask.paths) == paths
    assert message_to_dict(message)["update_mask"] == paths


def test_field_mask_instance_is_copied(everything):
    mask = field_mask_pb2.FieldMask(paths=["x"])
    message = build_message(everything.EverythingPartialUpdateRequest, {"update_mask": mask})
    assert list(message.update_mask.paths) == ["x"]


WRAPPER_VALUES = [
    ("w_double", 2.5),
    ("w_double", 0.0),
    ("w_float", 0.5),
    ("w_int64", INT64_MAX),
    ("w_int64", 0),
    ("w_uint64", 2**64 - 1),
    ("w_int32", -(2**31)),
    ("w_uint32", 2**32 - 1),
    ("w_bool", True),
    ("w_bool", False),
    ("w_string", "héllo"),
    ("w_string", ""),
    ("w_bytes", b"\x00\xff"),
    ("w_bytes", b""),
]


@pytest.mark.parametrize(("name", "value"), WRAPPER_VALUES)
def test_wrappers_are_their_value_and_zero_is_not_none(proto, name, value):
    message = build_message(proto.Sample, {name: value})
    assert message.HasField(name)
    result = message_to_dict(message)[name]
    assert result == value
    assert type(result) is type(value)
    assert message_to_dict(proto.Sample())[name] is None


@pytest.mark.parametrize(
    ("name", "value"),
    [("w_int64", "5"), ("w_int64", True), ("w_int32", 1.5), ("w_string", 5), ("w_bytes", "text")],
)
def test_wrappers_reject_values_of_another_type(proto, name, value):
    error = conversion_error(proto.Sample, {name: value})
    assert error.path == name


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("w_bool", 1, ConversionError),
        ("w_double", True, ConversionError),
        ("w_string", Decimal("1.50"), "1.50"),
        ("w_string", uuid.UUID(int=1), "00000000-0000-0000-0000-000000000001"),
    ],
)
def test_wrappers_coerce_like_plain_fields(proto, name, value, expected):
    if expected is ConversionError:
        assert conversion_error(proto.Sample, {name: value}).path == name
    else:
        assert message_to_dict(build_message(proto.Sample, {name: value}))[name] == expected


def test_empty_is_an_empty_dict(everything, proto):
    message = build_message(proto.Sample, {"nothing": {}})
    assert message.HasField("nothing")
    assert message_to_dict(message)["nothing"] == {}
    assert message_to_dict(proto.Sample())["nothing"] is None
    assert message_to_dict(empty_pb2.Empty()) == {}


def test_empty_rejects_fields(proto):
    assert conversion_error(proto.Sample, {"nothing": {"x": 1}}).path == "nothing"


# -- writing scalars ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (Decimal("12.50"), "12.50"),
        (Decimal("-0.0000000001"), "-0.0000000001"),
        (Decimal("1E+3"), "1000"),
        (Decimal("12345678901234567890.0123456789"), "12345678901234567890.0123456789"),
        (dt.date(1999, 12, 31), "1999-12-31"),
        (dt.time(13, 14, 15, 161718), "13:14:15.161718"),
        (dt.datetime(2024, 2, 29, 23, 59, 59, tzinfo=UTC), "2024-02-29T23:59:59+00:00"),
        (dt.datetime(2024, 2, 29, 23, 59, 59), "2024-02-29T23:59:59"),
        (uuid.UUID("12345678-1234-5678-1234-567812345678"), "12345678-1234-5678-1234-567812345678"),
    ],
    ids=lambda v: type(v).__name__ + ":" + str(v),
)
def test_values_written_to_string_fields_become_canonical_text(everything, value, text):
    message = build_message(everything.EverythingData, {"f_char": value, "f_null_char": value})
    assert message.f_char == text
    assert message.f_null_char == text
    assert build_message(everything.EverythingData, {"f_decimal": value}).f_decimal == text


def test_canonical_text_also_in_repeated_strings(proto):
    message = build_message(proto.Sample, {"words": [Decimal("0.10"), dt.date(2020, 2, 2), "x"]})
    assert list(message.words) == ["0.10", "2020-02-02", "x"]


def test_numbers_are_written_as_numbers(everything, proto):
    message = build_message(
        everything.EverythingData,
        {"f_int": -(2**31), "f_bigint": INT64_MAX, "f_float": 3, "f_bool": True},
    )
    assert (message.f_int, message.f_bigint, message.f_float, message.f_bool) == (
        -(2**31),
        INT64_MAX,
        3.0,
        True,
    )
    assert build_message(proto.Sample, {"dbl": Decimal("0.5")}).dbl == 0.5
    assert build_message(proto.Sample, {"blob": bytearray(b"ab")}).blob == b"ab"
    assert build_message(proto.Sample, {"blob": memoryview(b"cd")}).blob == b"cd"


def test_none_leaves_a_field_unset(everything, proto):
    message = build_message(
        everything.EverythingData,
        {"f_null_int": None, "f_int": None, "f_datetime": None, "f_json": None, "tags": None},
    )
    assert not message.HasField("f_null_int")
    assert not message.HasField("f_datetime")
    assert not message.HasField("f_json")
    assert message.f_int == 0
    assert list(message.tags) == []
    assert message == everything.EverythingData()
    assert build_message(proto.Sample, {"inner": None, "w_int64": None}) == proto.Sample()


def test_set_zero_on_optional_field_has_presence(everything):
    message = build_message(everything.EverythingData, {"f_null_int": 0, "f_null_char": ""})
    assert message.HasField("f_null_int") and message.HasField("f_null_char")
    assert present_fields(message)["f_null_int"] == 0


def test_oneof_member(proto):
    message = build_message(proto.Sample, {"choice_number": 0})
    assert message.WhichOneof("choice") == "choice_number"
    result = message_to_dict(message)
    assert result["choice_number"] == 0
    assert result["choice_text"] is None


# -- messages and message instances -------------------------------------------------------------


def test_build_message_from_a_message_instance_copies_it(everything):
    original = everything.EverythingData(f_int=3, f_null_char="x", tags=[1, 2])
    built = build_message(everything.EverythingData, original)
    assert built == original
    assert built is not original
    built.f_int = 4
    assert original.f_int == 3


def test_message_instances_accepted_for_message_fields(everything, proto):
    stamp = timestamp_pb2.Timestamp(seconds=86400)
    request = build_message(
        everything.EverythingPartialUpdateRequest,
        {
            "data": everything.EverythingData(f_char="x", f_datetime=stamp),
            "update_mask": ["f_char"],
        },
    )
    assert request.data.f_char == "x"
    assert request.data.f_datetime == stamp

    data = build_message(
        everything.EverythingData,
        {
            "f_datetime": stamp,
            "f_duration": duration_pb2.Duration(seconds=5),
            "f_json": struct_pb2.Value(string_value="s"),
        },
    )
    result = message_to_dict(data)
    assert result["f_datetime"] == dt.datetime(1970, 1, 2, tzinfo=UTC)
    assert result["f_duration"] == dt.timedelta(seconds=5)
    assert result["f_json"] == "s"

    sample = build_message(
        proto.Sample,
        {
            "inners": [proto.Inner(title="a"), {"title": "b"}],
            "w_int64": wrappers_pb2.Int64Value(value=9),
        },
    )
    assert [inner.title for inner in sample.inners] == ["a", "b"]
    assert sample.w_int64.value == 9


def test_nested_dicts_fill_nested_messages(book):
    request = build_message(
        book.BookPartialUpdateRequest,
        {"data": {"id": 1, "title": "Dune"}, "update_mask": "title"},
    )
    assert request.data.id == 1
    assert request.data.title == "Dune"
    assert request.HasField("data")


def test_empty_dict_sets_a_nested_message(proto):
    message = build_message(proto.Sample, {"inner": {}})
    assert message.HasField("inner")


def test_build_message_without_data_is_empty(everything):
    assert build_message(everything.EverythingData) == everything.EverythingData()
    assert build_message(everything.EverythingData, None) == everything.EverythingData()
    assert build_message(everything.EverythingData, {}) == everything.EverythingData()


def test_fill_message_fills_in_place_and_returns_the_message(everything):
    message = everything.EverythingData(f_int=1, f_char="keep")
    assert fill_message(message, {"f_int": 2}) is message
    assert message.f_int == 2
    assert message.f_char == "keep"


def test_fill_message_sets_repeated_fields_and_maps(everything, proto):
    message = everything.EverythingData(tags=[1, 2])
    fill_message(message, {"tags": [3]})
    assert list(message.tags) == [3]
    sample = proto.Sample(counts={"old": 1})
    fill_message(sample, {"counts": {"new": 2}})
    assert dict(sample.counts) == {"new": 2}


# -- present_fields ------------------------------------------------------------------------------


def test_present_fields_leaves_out_unset_fields_with_presence(everything):
    message = everything.EverythingData(f_char="x", f_null_int=0)
    result = present_fields(message)
    # plain scalars and repeated fields are always given
    assert result["f_char"] == "x"
    assert result["f_int"] == 0
    assert result["f_bool"] is False
    assert result["tags"] == []
    # set optional fields are given, with their zero
    assert result["f_null_int"] == 0
    # unset optional and message fields are not
    for name in ("id", "f_null_char", "f_datetime", "f_json", "f_binary", "editor", "token"):
        assert name not in result, name


def test_present_fields_of_a_full_message_match_message_to_dict(proto):
    message = build_message(
        proto.Sample,
        {
            "maybe_int": 0,
            "inner": {},
            "when": dt.datetime(2020, 1, 1, tzinfo=UTC),
            "choice_text": "",
        },
    )
    result = present_fields(message)
    everything_read = message_to_dict(message)
    assert {name: everything_read[name] for name in result} == result
    assert result["maybe_int"] == 0
    assert result["inner"] == {"title": "", "count": 0, "note": None}
    assert result["choice_text"] == ""
    assert "choice_number" not in result
    assert "maybe_text" not in result
    assert "took" not in result


# -- errors --------------------------------------------------------------------------------------


def test_conversion_error_is_a_value_error_with_path_and_problem():
    error = ConversionError("a.b", "bad")
    assert isinstance(error, ValueError)
    assert (error.path, error.problem) == ("a.b", "bad")
    assert str(error) == "a.b: bad"


def test_an_unknown_key_names_it_and_lists_the_valid_fields(book):
    error = conversion_error(book.BookData, {"title": "x", "nope": 1})
    assert error.path == "nope"
    assert "'nope'" in str(error)
    assert "catalog.BookData" in str(error)
    for name in ("id", "title", "author", "isbn"):
        assert name in error.problem


def test_an_unknown_nested_key_names_its_path(book):
    error = conversion_error(book.BookPartialUpdateRequest, {"data": {"titel": "x"}})
    assert error.path == "data.titel"
    assert "title" in error.problem


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("f_int", "1"),
        ("f_int", True),
        ("f_int", 1.5),
        ("f_int", [1]),
        ("f_int", 2**31),
        ("f_bigint", 2**63),
        ("f_posint", Decimal(1)),
        ("f_float", True),
        ("f_float", "1.5"),
        ("f_bool", 1),
        ("f_bool", "true"),
        ("f_char", 1),
        ("f_char", b"bytes"),
        ("f_char", ["a"]),
        ("f_decimal", 1.5),
        ("f_binary", "text"),
        ("tags", {"a": 1}),
        ("tags", "12"),
        ("tags", 1),
        ("tags", ["1"]),
        ("tags", [True]),
        ("f_null_int", "x"),
        ("editor", "1"),
    ],
)
def test_wrong_types_raise_conversion_error_naming_the_field(everything, name, value):
    error = conversion_error(everything.EverythingData, {name: value})
    # a bad element of a repeated field is named with its index: tags[0]
    expected = f"{name}[0]" if name == "tags" and isinstance(value, list) else name
    assert error.path == expected
    assert str(error).startswith(f"{expected}: ")


def test_nested_errors_name_the_nested_path(book, everything):
    error = conversion_error(book.BookPartialUpdateRequest, {"data": {"title": 5}})
    assert error.path == "data.title"
    assert str(error).startswith("data.title: ")

    error = conversion_error(everything.EverythingPartialUpdateRequest, {"data": {"f_int": "x"}})
    assert error.path == "data.f_int"


def test_a_non_dict_for_a_nested_message_names_the_field(book):
    error = conversion_error(book.BookPartialUpdateRequest, {"data": "not a dict"})
    assert error.path == "data"
    assert "expected a dict" in error.problem


def test_errors_three_levels_deep_name_the_whole_path(proto):
    error = conversion_error(proto.Deep, {"parent": {"kid": {"age": "old"}}})
    assert error.path == "parent.kid.age"


def test_nested_path_when_a_field_name_starts_with_its_parents(proto):
    error = conversion_error(proto.Parent, {"child": {"child_age": "x"}})
    assert error.path == "child.child_age"


def test_errors_in_repeated_messages_name_the_element(proto):
    error = conversion_error(proto.Sample, {"inners": [{"title": "ok"}, {"title": 5}]})
    assert error.path == "inners[1].title"


def test_a_top_level_non_mapping_is_an_error(everything):
    error = conversion_error(everything.EverythingData, [("f_int", 1)])
    assert error.path == "catalog.EverythingData"
    assert "dict" in error.problem


# -- plans ---------------------------------------------------------------------------------------


def test_plans_are_cached_per_descriptor(everything, proto):
    descriptor = everything.EverythingData.DESCRIPTOR
    plan = plan_for(descriptor)
    assert plan_for(descriptor) is plan
    assert messages._plans[descriptor] is plan
    assert plan.descriptor is descriptor
    assert plan.field_names == tuple(field.name for field in descriptor.fields)
    assert set(plan.readers) == set(plan.writers) == set(plan.field_names)
    assert plan_for(proto.Sample.DESCRIPTOR) is not plan


def test_conversions_use_the_cached_plan(everything, monkeypatch):
    descriptor = everything.EverythingData.DESCRIPTOR
    plan = plan_for(descriptor)
    built = []
    real = messages.MessagePlan

    def counting(desc):
        built.append(desc)
        return real(desc)

    monkeypatch.setattr(messages, "MessagePlan", counting)
    message = build_message(everything.EverythingData, {"f_int": 1})
    message_to_dict(message)
    present_fields(message)
    assert descriptor not in built
    assert plan_for(descriptor) is plan


def test_duration_takes_django_text_forms(everything):
    message = fill_message(everything.EverythingData(), {"f_duration": "1 02:03:04.5"})
    expected = dt.timedelta(days=1, hours=2, minutes=3, seconds=4.5)
    assert message_to_dict(message)["f_duration"] == expected
    message = fill_message(everything.EverythingData(), {"f_duration": "90"})
    assert message_to_dict(message)["f_duration"] == dt.timedelta(seconds=90)


def test_a_duration_outside_protobufs_range_is_a_conversion_error(everything):
    message = everything.EverythingData()
    message.f_duration.seconds = 315_576_000_001
    with pytest.raises(ConversionError) as caught:
        present_fields(message)
    assert caught.value.path == "f_duration"
