"""Hostile input: generated requests to every RPC of catalog.Everything on a real server.

Protobuf rules out wrong types, so the inputs are values the types allow but the model does
not: int32/int64 extremes in small or positive integer columns, strings of up to ~1 MB,
malformed dates, times, decimals, UUIDs, e-mail addresses, URLs and IP addresses as text,
NaN and infinities, deeply nested JSON values, Timestamps and Durations at and past their
limits (with impossible nanos), FieldMasks with unknown, duplicate and read-only paths, random
lookup ids and page tokens, and raw bytes that are not a protobuf message at all. List and
Count also get random queries: filter fields of every type set to such values (lists of them for
``in`` and ``range``), ``order_by`` terms valid and not, and search texts; those end OK or
INVALID_ARGUMENT only.

For every call: the status is one of ``ALLOWED`` (never UNKNOWN, never INTERNAL), the details
leak no traceback and no SQL, and the call returns within ``TIMEOUT``; after each property the
server still answers health SERVING. ``TRIED`` counts the inputs per RPC and the statuses they
got; the summary is printed when the module ends.

The rows this module creates are destroyed when it ends (the database is shared with other
modules). HOSTILE_INPUT_SCALE multiplies the number of inputs for a longer hunt.

Dedicated tests cover what the properties found: a request the server cannot decode (not
protobuf, invalid UTF-8, nesting past protobuf's depth limit) is INVALID_ARGUMENT; a validation
message that echoes a huge value is clipped so its status survives the client's metadata limit;
JSON too deep for a List response to parse is refused at Create; and List batches by size as
well as by count, so rows that each fit MAX_MESSAGE_SIZE can be listed together.
"""

from __future__ import annotations

import base64
import math
import os
import time
import uuid
from collections import Counter, defaultdict
from typing import Any

import grpc
import pytest
from catalog.models import Everything
from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2
from grpc_health.v1 import health_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import bus_env, health_status, running_server

from django_grpc_bus.conversion.messages import repeated
from django_grpc_bus.pagination import encode_page_token
from django_grpc_bus.testing import stub_for

TIMEOUT = 10  # seconds, for every call
Code = grpc.StatusCode
ALLOWED = frozenset(
    {
        Code.OK,
        Code.INVALID_ARGUMENT,
        Code.NOT_FOUND,
        Code.ALREADY_EXISTS,
        Code.FAILED_PRECONDITION,
        Code.RESOURCE_EXHAUSTED,
    }
)
LEAKS = ("Traceback", "SELECT", "INSERT", "UPDATE ")
DEFAULT_MAX_MESSAGE = 4 * 1024 * 1024
SERVICE = "catalog.Everything"
RPCS = ("List", "Count", "Create", "Retrieve", "Update", "PartialUpdate", "Destroy")
QUERY_CODES = frozenset({Code.OK, Code.INVALID_ARGUMENT})  # what a List or Count query ends with

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
TIMESTAMP_MIN, TIMESTAMP_MAX = -62135596800, 253402300799  # 0001-01-01 .. 9999-12-31T23:59:59
DURATION_MAX = 315576000000  # +-10,000 years, protobuf's documented range

# Inputs tried per RPC ("raw Create" for undecodable bytes) and the statuses they ended with.
TRIED: dict[str, Counter] = defaultdict(Counter)
STARTED = time.monotonic()


# HOSTILE_INPUT_SCALE=10 tries ten times as many inputs (a longer hunt than CI's).
SCALE = float(os.environ.get("HOSTILE_INPUT_SCALE", "1"))


def examples(count: int) -> settings:
    """Hypothesis settings for `count` inputs (sized so that the module runs well under 60 s)."""
    return settings(
        max_examples=max(1, int(count * SCALE)),
        deadline=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
            HealthCheck.function_scoped_fixture,
        ],
    )


# -- calls and checks ----------------------------------------------------------------------------


def check_call(
    rpc: str, invoke: Any, payload: bytes, message_class: type, limit: int = DEFAULT_MAX_MESSAGE
) -> tuple[Code, Any]:
    """Run `invoke()` (one call with TIMEOUT), record its status, check the rules; return
    (code, result). RESOURCE_EXHAUSTED is right only for a request over `limit` bytes."""
    started = time.monotonic()
    result = None
    try:
        result = invoke()
        code, details = Code.OK, ""
    except grpc.RpcError as exc:
        code, details = exc.code(), exc.details() or ""
    elapsed = time.monotonic() - started
    label = code.name
    TRIED[rpc][label] += 1
    assert elapsed < TIMEOUT, f"{rpc} took {elapsed:.1f}s"
    assert code in ALLOWED, (rpc, code, details[:500])
    assert "metadata size exceeds" not in details, (rpc, details[:500])
    for word in LEAKS:
        if word in details:
            # Only a leak when the server did not just echo what the request itself said.
            assert word.encode() in payload, (rpc, word, details[:2000])
    if code is Code.RESOURCE_EXHAUSTED:
        assert len(payload) > limit, (rpc, len(payload), details[:500])
    return code, result


def unary(
    channel: grpc.Channel,
    rpc: str,
    message: Any,
    response_class: type,
    limit: int = DEFAULT_MAX_MESSAGE,
    label: str | None = None,
) -> tuple[Code, Any]:
    payload = message.SerializeToString()
    call = channel.unary_unary(
        f"/{SERVICE}/{rpc}",
        request_serializer=lambda data: data,
        response_deserializer=response_class.FromString,
    )
    invoke = lambda: call(payload, timeout=TIMEOUT)  # noqa: E731
    return check_call(label or rpc, invoke, payload, type(message), limit)


def listing(channel: grpc.Channel, message: Any, response_class: type) -> tuple[Code, Any]:
    payload = message.SerializeToString()
    call = channel.unary_stream(
        f"/{SERVICE}/List",
        request_serializer=lambda data: data,
        response_deserializer=response_class.FromString,
    )
    return check_call("List", lambda: list(call(payload, timeout=TIMEOUT)), payload, type(message))


def assert_serving(channel: grpc.Channel) -> None:
    status = health_status(channel, SERVICE, timeout=TIMEOUT)
    assert status == health_pb2.HealthCheckResponse.SERVING


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def summary(request):
    """Print what was tried per RPC, and the statuses seen, when the module ends."""
    yield
    lines = [f"hostile input summary ({time.monotonic() - STARTED:.1f}s):"]
    for rpc in sorted(TRIED):
        counts = TRIED[rpc]
        statuses = ", ".join(f"{name} {count}" for name, count in counts.most_common())
        lines.append(f"  {rpc:<16} {sum(counts.values()):>5} inputs: {statuses}")
    capture = request.config.pluginmanager.getplugin("capturemanager")
    if capture is not None:
        with capture.global_and_fixture_disabled():
            print("\n" + "\n".join(lines))
    else:
        print("\n".join(lines))


@pytest.fixture(scope="module")
def pb(compiled):
    from generated_grpc.grpc import Author_pb2, Everything_pb2

    return Everything_pb2, Author_pb2


@pytest.fixture(scope="module")
def seed(channel, pb, filepath):
    """An author and a few rows of this module's own (others' rows are never written), and
    the rows the module creates; all are destroyed when the module ends."""
    everything_pb2, author_pb2 = pb
    author = stub_for(Everything._meta.get_field("author").related_model, channel)
    author_id = author.Create(author_pb2.AuthorData(name="hostile"), timeout=TIMEOUT).id
    base = valid_fields(author_id, filepath)
    stub = stub_for(Everything, channel)
    ids = [stub.Create(everything_pb2.EverythingData(**base), timeout=TIMEOUT).id for _ in range(3)]
    seed = {"author": author_id, "base": base, "ids": ids, "created": []}
    yield seed
    # The database is shared with other modules: take this module's hostile rows away (rows
    # with megabytes of text or deeply nested JSON would break their Lists).
    for pk in {*seed["ids"], *seed["created"]}:
        try:
            stub.Destroy(everything_pb2.EverythingLookupRequest(id=pk), timeout=TIMEOUT)
        except grpc.RpcError as exc:
            assert exc.code() is Code.NOT_FOUND, exc.details()


def valid_fields(author: int, filepath: str) -> dict[str, Any]:
    """Every required field of a Create, valid: the base the strategies spoil a few fields of."""
    return dict(
        f_int=1,
        f_bigint=2,
        f_smallint=3,
        f_posint=4,
        f_possmall=5,
        f_posbig=6,
        f_float=1.5,
        f_decimal="1.5",
        f_bool=True,
        f_char="hostile",
        f_text="t",
        f_slug="s",
        f_email="h@example.com",
        f_url="https://example.com/",
        f_uuid=str(uuid.uuid4()),
        f_ip="10.0.0.1",
        f_filepath=filepath,
        f_file="files/h.txt",
        f_image="images/h.png",
        f_date="2001-01-01",
        f_datetime=timestamp_pb2.Timestamp(seconds=978307200),
        f_time="00:00:00",
        f_duration=duration_pb2.Duration(seconds=1),
        f_json=struct_pb2.Value(string_value="{}"),
        f_choice_int=1,
        f_choice_str="a",
        f_custom="c",
        author=author,
    )


# -- strategies ----------------------------------------------------------------------------------


def extremes(*values: int) -> st.SearchStrategy[int]:
    return st.sampled_from(values)


INT32 = st.one_of(
    extremes(INT32_MIN, INT32_MAX, -1, 0, 1, 32767, 32768, -32769, 65535, 65536),
    st.integers(INT32_MIN, INT32_MAX),
)
INT64 = st.one_of(
    extremes(INT64_MIN, INT64_MAX, INT32_MAX + 1, INT32_MIN - 1, 2**53 + 1, -1, 0),
    st.integers(INT64_MIN, INT64_MAX),
)
DOUBLE = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 5e-324, 1.7976931348623157e308]),
)
SMALL_TEXT = st.text(max_size=300)


def _huge(unit: str, length: int) -> str:
    return (unit * (length // len(unit) + 1))[:length]


# Up to ~1 MB of characters (up to 4 MB of UTF-8 with the emoji: past MAX_MESSAGE_SIZE too).
HUGE_TEXT = st.builds(
    _huge, st.sampled_from(["x", "é", "ab\x00", "🎉", "'; --", "%s%n"]), st.integers(1, 1_000_000)
)
BAD_TEXT = {
    "date": ["2020-02-30", "0000-01-01", "10000-01-01", "2020-13-01", "-0001-01-01",
             "2020-02-29T25:00", "20200101", "2020-1-1", "\uff11\uff12\uff13\uff14-01-01",
             " 2020-01-01"],
    "time": ["24:00", "23:60", "23:59:60", "12:00:00.1234567", "T12:00", "12", "-01:00",
             "12:00+25:00", "noon"],
    "decimal": ["NaN", "sNaN", "-NaN", "Infinity", "-Infinity", "1e999999999",
                "1e-999999999", "0x10", "1_000", "\uff11\uff12\uff13", "9" * 40, "-0", "1.", ".5",
                "99999999999999999999.99999999999", "1,5", "--1", "+-1", "1e", "e1"],
    "uuid": ["not-a-uuid", "{12345678-1234-5678-1234-567812345678}", "0" * 31, "0" * 33,
             "12345678-1234-5678-1234-56781234567g", "urn:uuid:" + str(uuid.UUID(int=1))],
    "email": ["a@", "@b", "a@b@c", "x" * 300 + "@e.com", "a@[127.0.0.1]", "a b@c.d",
              "a@b..c", "\"quoted\"@x.y", "a@" + "b" * 300 + ".com"],
    "url": ["javascript:alert(1)", "http://", "http://[::1", "ftp://x", "//x",
            "http://" + "a" * 300 + ".com", "http://exa mple.com", "http://ex\x00ample.com"],
    "ip": ["256.0.0.1", "::g", "1.2.3", "::ffff:999.1.1.1", "fe80::1%eth0", "0x7f.1",
           "1.2.3.4/24", "01.02.03.04", "::1::", " 127.0.0.1"],
    "slug": ["a b", "ä", "a/b", "-", "\x00"],
    "path": ["../../etc/passwd", "/etc/passwd", "/tmp/../etc/passwd", "/tmp", "/tmp/",
             "\x00", "files/../../x"],
    "choice": ["c", "A", "", "a ", "aa"],
}  # fmt: skip
GENERIC_BAD = ["", " ", "\x00", "\u202e", "\ufeff", "null", "None", "0", "-1", "true", "{}"]


def text_for(kind: str | None) -> st.SearchStrategy[str]:
    options = [SMALL_TEXT, st.sampled_from(GENERIC_BAD), HUGE_TEXT]
    if kind is not None:
        options.insert(0, st.sampled_from(BAD_TEXT[kind]))
    return st.one_of(*options)


TIMESTAMP = st.builds(
    lambda seconds, nanos: timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos),
    st.one_of(
        extremes(TIMESTAMP_MIN, TIMESTAMP_MIN - 1, TIMESTAMP_MAX, TIMESTAMP_MAX + 1, 0, -1),
        INT64,
    ),
    st.one_of(extremes(0, -1, 999_999_999, 1_000_000_000), INT32),
)
DURATION = st.builds(
    lambda seconds, nanos: duration_pb2.Duration(seconds=seconds, nanos=nanos),
    st.one_of(
        extremes(DURATION_MAX, DURATION_MAX + 1, -DURATION_MAX, -DURATION_MAX - 1, 0, -1, 1),
        INT64,
    ),
    st.one_of(extremes(0, -1, 1, 999_999_999, -999_999_999, 1_000_000_000), INT32),
)

JSON_LEAF = st.one_of(st.none(), st.booleans(), DOUBLE, SMALL_TEXT)
JSON = st.recursive(
    JSON_LEAF,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(SMALL_TEXT, children, max_size=4)
    ),
    max_leaves=25,
)


def fill_value(target: struct_pb2.Value, value: Any) -> None:
    """Write a JSON-ish value into `target` in place (no copies: no depth check on the way)."""
    if isinstance(value, Deep):
        for _ in range(value.depth):
            if value.kind == "list":
                target = target.list_value.values.add()
            else:
                target = target.struct_value.fields["k"]
        target.string_value = "bottom"
    elif value is Unset:
        target.Clear()  # a Value with no kind at all
    elif value is None:
        target.null_value = struct_pb2.NULL_VALUE
    elif isinstance(value, bool):
        target.bool_value = value
    elif isinstance(value, float):
        target.number_value = value
    elif isinstance(value, str):
        target.string_value = value
    elif isinstance(value, list):
        target.list_value.SetInParent()
        for item in value:
            fill_value(target.list_value.values.add(), item)
    else:
        target.struct_value.SetInParent()
        for key, item in value.items():
            fill_value(target.struct_value.fields[key], item)


class Deep:
    """A list or object nested `depth` levels deep (protobuf parses up to ~100 levels)."""

    def __init__(self, kind: str, depth: int) -> None:
        self.kind, self.depth = kind, depth

    def __repr__(self) -> str:
        return f"Deep({self.kind!r}, {self.depth})"


Unset = object()
VALUE = st.one_of(
    JSON,
    st.builds(Deep, st.sampled_from(["list", "object"]), st.integers(1, 300)),
    st.just(Unset),
)

STRING_FIELDS = {
    "f_decimal": "decimal", "f_char": None, "f_text": None, "f_slug": "slug",
    "f_email": "email", "f_url": "url", "f_uuid": "uuid", "f_ip": "ip", "f_filepath": "path",
    "f_file": "path", "f_image": "path", "f_date": "date", "f_time": "time",
    "f_choice_str": "choice", "f_custom": None, "f_null_char": None, "f_null_decimal": "decimal",
    "f_null_date": "date", "f_blank_char": None, "token": "uuid",
}  # fmt: skip
INT32_FIELDS = ("f_int", "f_smallint", "f_posint", "f_possmall", "f_choice_int", "f_null_int",
                "f_default_int", "author", "editor")  # fmt: skip
INT64_FIELDS = ("f_bigint", "f_posbig", "f_generated")
FIELD_STRATEGIES: dict[str, st.SearchStrategy] = {
    **{name: text_for(kind) for name, kind in STRING_FIELDS.items()},
    **{name: INT32 for name in INT32_FIELDS},
    **{name: INT64 for name in INT64_FIELDS},
    "f_float": DOUBLE,
    "f_bool": st.booleans(),
    "f_null_bool": st.booleans(),
    "f_binary": st.binary(max_size=1000),
    "f_datetime": TIMESTAMP,
    "f_null_datetime": TIMESTAMP,
    "f_auto_now": TIMESTAMP,
    "f_duration": DURATION,
    "f_json": VALUE,
    "f_null_json": VALUE,
    "tags": st.lists(INT32, max_size=5),
}
ALL_FIELDS = (*FIELD_STRATEGIES, "id")
READ_ONLY = ("id", "f_binary", "f_auto_now", "f_generated")

# A few fields spoiled at a time (the rest valid, so the bad value reaches the database), and
# sometimes some fields left out.
SPOILED = st.dictionaries(
    st.sampled_from(sorted(FIELD_STRATEGIES)), st.none(), min_size=1, max_size=4
).flatmap(lambda chosen: st.fixed_dictionaries({name: FIELD_STRATEGIES[name] for name in chosen}))
LEFT_OUT = st.sets(st.sampled_from(sorted(FIELD_STRATEGIES)), max_size=3)


def build_data(message_class: type, base: dict[str, Any], spoiled: dict, left_out: set) -> Any:
    message = message_class(**{k: v for k, v in base.items() if k not in left_out})
    known = message_class.DESCRIPTOR.fields_by_name
    for name, value in spoiled.items():
        if name not in known:
            continue  # e.g. f_generated, which Django 4.2 models do not have
        field = getattr(message, name) if name in {"tags", "f_json", "f_null_json"} else None
        if name == "tags":
            del field[:]
            field.extend(value)
        elif name in ("f_json", "f_null_json"):
            field.Clear()
            fill_value(field, value)
            if value is Unset:
                field.SetInParent()  # present, but with no kind
        elif isinstance(value, (timestamp_pb2.Timestamp, duration_pb2.Duration)):
            getattr(message, name).CopyFrom(value)
        else:
            setattr(message, name, value)
    return message


def ids_strategy(seed: dict) -> st.SearchStrategy[int]:
    """The module's own rows, or ids no row has (int64 extremes, negatives, huge ones)."""
    mine = seed["ids"] + seed["created"]
    return st.one_of(
        st.sampled_from(mine),
        extremes(INT64_MIN, INT64_MAX, 0, -1, 2**53),
        st.integers(INT64_MIN, -1),
        st.integers(2**40, INT64_MAX),
    )


PATHS = st.lists(
    st.one_of(
        st.sampled_from([*ALL_FIELDS, *READ_ONLY]),
        st.sampled_from(["", "*", "data.f_int", "f_int.x", "F_INT", "tags[0]", "f_json.a",
                         "author_id", "pk", " f_int", "f_int,f_text"]),
        SMALL_TEXT,
    ),
    max_size=8,
)  # fmt: skip
PAGE_TOKEN = st.one_of(
    SMALL_TEXT,
    st.binary(max_size=60).map(lambda raw: base64.urlsafe_b64encode(raw).decode()),
    st.builds(
        lambda kind, number: (
            base64.urlsafe_b64encode(f"{kind}:{number}".encode()).decode().rstrip("=")
        ),
        st.sampled_from(["o", "O", "", "x", "o:o"]),
        st.one_of(INT64, st.integers(-(2**80), 2**80), SMALL_TEXT),
    ),
    HUGE_TEXT,
)


# Payloads protobuf cannot parse as EverythingData.
MALFORMED = [
    b"\xff\xff\xff",  # field number 0 / bad tag
    b"\x0a\x05ab",  # length-delimited field running past the end
    b"\x5a\x02\xff\xfe",  # f_char (11) with invalid UTF-8
    b"\x08" + b"\xff" * 11,  # a varint longer than 10 bytes
    b"\x0f",  # wire type 7 does not exist
    b"\x0b",  # a group start never closed
    b"\xb2\x01\x02\x08\xff",  # f_datetime whose seconds varint runs past the sub-message
    b"\xd2\x01\x02\x2a\x05",  # f_json whose string_value runs past the sub-message
]


def remember_created(seed: dict, code: Code, result: Any) -> None:
    if code is Code.OK and result is not None:
        seed["created"].append(result.id)


# -- properties ----------------------------------------------------------------------------------


def test_list_with_hostile_page_sizes_and_tokens(channel, pb, seed):
    everything_pb2, _ = pb

    @examples(120)
    @given(
        page_size=st.one_of(extremes(INT32_MIN, INT32_MAX, -1, 0, 1), INT32),
        page_token=st.one_of(st.just(""), PAGE_TOKEN),
    )
    def run(page_size, page_token):
        request = everything_pb2.EverythingListRequest(page_size=page_size, page_token=page_token)
        listing(channel, request, everything_pb2.EverythingListResponse)

    run()
    assert_serving(channel)


# The kind of text each string filter field reads (by the model field it filters), first match.
FILTER_TEXT_KINDS = (
    ("f_datetime_date", "date"), ("f_null_decimal", "decimal"), ("f_decimal", "decimal"),
    ("f_null_date", "date"), ("f_date", "date"), ("f_time", "time"), ("f_uuid", "uuid"),
    ("token", "uuid"), ("f_email", "email"), ("f_url", "url"), ("f_ip", "ip"),
    ("f_slug", "slug"), ("f_filepath", "path"), ("f_choice_str", "choice"),
)  # fmt: skip
ORDER_TERMS = ("id", "f_int", "f_decimal", "f_char", "f_datetime")  # EverythingService's
SEARCH_WORDS = ("hostile", "a", "%", "_", "\\", "'", '"', "O'Neil", "é", "'quoted phrase'", ",")


def filter_strategy(field: Any) -> st.SearchStrategy:
    """Hostile values for one field of EverythingFilter, by its type."""
    if field.message_type is not None:
        one = TIMESTAMP if field.message_type.name == "Timestamp" else DURATION
    elif field.type == field.TYPE_BOOL:
        one = st.booleans()
    elif field.type == field.TYPE_DOUBLE:
        one = DOUBLE
    elif field.type == field.TYPE_INT32:
        one = INT32
    elif field.type == field.TYPE_INT64:
        one = INT64
    else:
        kind = next((k for prefix, k in FILTER_TEXT_KINDS if field.name.startswith(prefix)), None)
        one = text_for(kind)
    return st.lists(one, max_size=4) if repeated(field) else one


def hostile_query(everything_pb2: Any, data: Any) -> Any:
    """A List request with some filter fields set to hostile values, order_by and search."""
    request = everything_pb2.EverythingListRequest()
    fields = list(everything_pb2.EverythingFilter.DESCRIPTOR.fields)
    chosen = data.draw(st.lists(st.sampled_from(fields), max_size=4, unique=True), label="filters")
    for field in chosen:
        value = data.draw(filter_strategy(field), label=field.name)
        target = getattr(request.filter, field.name)
        if repeated(field):
            target.extend(value)
        elif field.message_type is not None:
            target.CopyFrom(value)
        else:
            setattr(request.filter, field.name, value)
    if data.draw(st.booleans(), label="empty filter") and not chosen:
        request.filter.SetInParent()
    terms = st.one_of(
        st.sampled_from([*ORDER_TERMS, *(f"-{term}" for term in ORDER_TERMS)]),
        st.sampled_from(["", "-", "--id", "id,", ",", " f_int ", "f_text", "pk", "?", "-?"]),
        SMALL_TEXT,
    )
    request.order_by.extend(data.draw(st.lists(terms, max_size=4), label="order_by"))
    request.search = data.draw(
        st.one_of(
            st.just(""),
            st.lists(st.sampled_from(SEARCH_WORDS), max_size=6).map(" ".join),
            st.sampled_from(GENERIC_BAD),
            SMALL_TEXT,
            HUGE_TEXT,
        ),
        label="search",
    )
    request.page_size = data.draw(st.sampled_from([0, 0, 1, 5]), label="page_size")
    return request


def test_list_and_count_with_hostile_queries(channel, pb, seed):
    everything_pb2, _ = pb

    @examples(150)
    @given(data=st.data())
    def run(data):
        request = hostile_query(everything_pb2, data)
        listed, _ = listing(channel, request, everything_pb2.EverythingListResponse)
        counted, _ = unary(channel, "Count", request, everything_pb2.EverythingCountResponse)
        for code in (listed, counted):
            assert code in QUERY_CODES or code is Code.RESOURCE_EXHAUSTED, code
        assert listed is counted  # one validation for both

    run()
    assert_serving(channel)


def test_json_that_create_accepts_can_be_listed(channel, pb, seed):
    everything_pb2, _ = pb
    stub = stub_for(Everything, channel)
    for depth in range(20, 60):
        before = sum(
            len(page.results)
            for page in stub.List(everything_pb2.EverythingListRequest(), timeout=TIMEOUT)
        )
        spoiled = {"f_json": Deep("object", depth)}
        message = build_data(everything_pb2.EverythingData, seed["base"], spoiled, set())
        code, created = unary(channel, "Create", message, everything_pb2.EverythingData)
        if code is not Code.OK:
            break  # refused from here on: every accepted depth was listed
        try:
            request = everything_pb2.EverythingListRequest(
                page_size=1, page_token=encode_page_token(before)
            )
            pages = list(stub.List(request, timeout=TIMEOUT))
            assert [row.id for row in pages[0].results] == [created.id], depth
        finally:
            stub.Destroy(everything_pb2.EverythingLookupRequest(id=created.id), timeout=TIMEOUT)


def test_create_with_hostile_field_values(channel, pb, seed):
    everything_pb2, _ = pb

    @examples(250)
    @given(spoiled=SPOILED, left_out=LEFT_OUT)
    def run(spoiled, left_out):
        message = build_data(everything_pb2.EverythingData, seed["base"], spoiled, left_out)
        code, result = unary(channel, "Create", message, everything_pb2.EverythingData)
        remember_created(seed, code, result)

    run()
    assert_serving(channel)


MESSAGE_FIELDS = (
    "f_datetime",
    "f_null_datetime",
    "f_auto_now",
    "f_duration",
    "f_json",
    "f_null_json",
)


def test_create_with_hostile_timestamps_durations_and_json(channel, pb, seed):
    everything_pb2, _ = pb
    spoiled_messages = st.dictionaries(
        st.sampled_from(MESSAGE_FIELDS), st.none(), min_size=1, max_size=3
    ).flatmap(lambda chosen: st.fixed_dictionaries({n: FIELD_STRATEGIES[n] for n in chosen}))

    @examples(150)
    @given(spoiled=spoiled_messages)
    def run(spoiled):
        message = build_data(everything_pb2.EverythingData, seed["base"], spoiled, set())
        code, result = unary(channel, "Create", message, everything_pb2.EverythingData)
        remember_created(seed, code, result)

    run()
    assert_serving(channel)


def test_update_with_hostile_field_values_and_ids(channel, pb, seed):
    everything_pb2, _ = pb

    @examples(150)
    @given(data=st.data(), spoiled=SPOILED, left_out=LEFT_OUT)
    def run(data, spoiled, left_out):
        message = build_data(everything_pb2.EverythingData, seed["base"], spoiled, left_out)
        if "id" not in spoiled:
            message.id = data.draw(ids_strategy(seed), label="id")
        unary(channel, "Update", message, everything_pb2.EverythingData)

    run()
    assert_serving(channel)


def test_partial_update_with_hostile_masks_values_and_ids(channel, pb, seed):
    everything_pb2, _ = pb

    @examples(150)
    @given(data=st.data(), spoiled=SPOILED, left_out=LEFT_OUT, paths=PATHS)
    def run(data, spoiled, left_out, paths):
        request = everything_pb2.EverythingPartialUpdateRequest()
        request.data.CopyFrom(
            build_data(everything_pb2.EverythingData, seed["base"], spoiled, left_out)
        )
        mask = data.draw(st.sampled_from(["spoiled", "random", "both"]), label="mask")
        if mask != "random":
            paths = [*spoiled] if mask == "spoiled" else [*paths, *spoiled]
        request.update_mask.paths.extend(paths)
        request.data.id = data.draw(ids_strategy(seed), label="id")
        unary(channel, "PartialUpdate", request, everything_pb2.EverythingData)

    run()
    assert_serving(channel)


def lookup(everything_pb2: Any, seed: dict, data: Any) -> Any:
    request = everything_pb2.EverythingLookupRequest()
    if data.draw(st.booleans(), label="with id"):
        request.id = data.draw(ids_strategy(seed), label="id")
    if data.draw(st.booleans(), label="with token"):
        request.token = data.draw(text_for("uuid"), label="token")
    return request


def test_retrieve_with_random_lookups(channel, pb, seed):
    everything_pb2, _ = pb

    @examples(120)
    @given(data=st.data())
    def run(data):
        request = lookup(everything_pb2, seed, data)
        unary(channel, "Retrieve", request, everything_pb2.EverythingData)

    run()
    assert_serving(channel)


def test_destroy_with_random_lookups(channel, pb, seed):
    """Destroys only this module's rows (the database is shared with other modules)."""
    everything_pb2, _ = pb
    from google.protobuf import empty_pb2

    @examples(120)
    @given(data=st.data())
    def run(data):
        request = lookup(everything_pb2, seed, data)
        unary(channel, "Destroy", request, empty_pb2.Empty)

    run()
    assert_serving(channel)


def test_raw_bytes_that_are_not_protobuf(channel, pb):
    """Random bytes, and bytes built to break the wire format, sent with a generic call."""
    everything_pb2, _ = pb
    broken = st.one_of(
        st.binary(min_size=1, max_size=2000),
        st.sampled_from(MALFORMED),
        st.binary(max_size=50).map(lambda tail: b"\x0a\x7f" + tail),  # length past the end
    )

    @examples(150)
    @given(payload=broken)
    def run(payload):
        call = channel.unary_unary(
            f"/{SERVICE}/Create", request_serializer=lambda b: b, response_deserializer=lambda b: b
        )
        check_call(
            "Create (raw)",
            lambda: call(payload, timeout=TIMEOUT),
            payload,
            everything_pb2.EverythingData,
        )

    run()
    assert_serving(channel)


def deep_json_request(everything_pb2: Any, depth: int) -> Any:
    message = everything_pb2.EverythingData()
    fill_value(message.f_json, Deep("list", depth))
    return message


# -- limits --------------------------------------------------------------------------------------


SMALL = 65536  # MAX_MESSAGE_SIZE of small_server
SMALL_LABEL = "Create (64 KiB limit)"


@pytest.fixture(scope="module")
def small_server(fresh_database):
    """MAX_MESSAGE_SIZE 64 KiB, on an empty database of its own."""
    with running_server(fresh_database, env=bus_env(MAX_MESSAGE_SIZE=SMALL)) as server:
        yield server


def test_a_request_over_max_message_size_is_resource_exhausted(small_server, pb, filepath):
    everything_pb2, author_pb2 = pb
    with grpc.insecure_channel(small_server.target) as small:
        author = stub_for(Everything._meta.get_field("author").related_model, small)
        author_id = author.Create(author_pb2.AuthorData(name="small"), timeout=TIMEOUT).id
        base = valid_fields(author_id, filepath)
        message = everything_pb2.EverythingData(**{**base, "f_text": "x" * 100_000})
        started = time.monotonic()
        code, _ = unary(small, "Create", message, everything_pb2.EverythingData, SMALL, SMALL_LABEL)
        assert code is Code.RESOURCE_EXHAUSTED
        assert time.monotonic() - started < 2

        # Just under the limit is served, and the server is unharmed.
        message = everything_pb2.EverythingData(**{**base, "f_text": "x" * 60_000})
        code, created = unary(
            small, "Create", message, everything_pb2.EverythingData, SMALL, SMALL_LABEL
        )
        assert code is Code.OK and len(created.f_text) == 60_000
        assert_serving(small)


def big_rows(channel: grpc.Channel, pb: Any, filepath: str, count: int, size: int) -> list[int]:
    everything_pb2, author_pb2 = pb
    author = stub_for(Everything._meta.get_field("author").related_model, channel)
    author_id = author.Create(author_pb2.AuthorData(name="small"), timeout=TIMEOUT).id
    base = valid_fields(author_id, filepath)
    ids = []
    for _ in range(count):
        message = everything_pb2.EverythingData(**{**base, "f_text": "y" * size})
        code, created = unary(
            channel, "Create", message, everything_pb2.EverythingData, SMALL, SMALL_LABEL
        )
        assert code is Code.OK
        ids.append(created.id)
    return ids


def test_rows_that_each_fit_the_limit_can_be_read_one_by_one(small_server, pb, filepath):
    everything_pb2, _ = pb
    with grpc.insecure_channel(small_server.target) as small:
        ids = big_rows(small, pb, filepath, 2, 40_000)
        stub = stub_for(Everything, small)
        for pk in ids:
            row = stub.Retrieve(everything_pb2.EverythingLookupRequest(id=pk), timeout=TIMEOUT)
            assert len(row.f_text) == 40_000
        pages = list(stub.List(everything_pb2.EverythingListRequest(page_size=1), timeout=TIMEOUT))
        assert len(pages) == 1 and len(pages[0].results) == 1
        assert_serving(small)


def test_rows_that_each_fit_the_limit_can_be_listed_together(small_server, pb, filepath):
    everything_pb2, _ = pb
    with grpc.insecure_channel(small_server.target) as small:
        ids = big_rows(small, pb, filepath, 2, 40_000)
        stub = stub_for(Everything, small)
        started = time.monotonic()
        try:
            pages = list(stub.List(everything_pb2.EverythingListRequest(), timeout=TIMEOUT))
            TRIED["List (64 KiB limit)"]["OK"] += 1
        except grpc.RpcError as exc:
            TRIED["List (64 KiB limit)"][exc.code().name] += 1
            assert exc.code() is Code.RESOURCE_EXHAUSTED, exc.details()  # fails quickly, at least
            assert time.monotonic() - started < 2
            raise
        listed = {row.id for page in pages for row in page.results}
        assert set(ids) <= listed


# -- known bugs ----------------------------------------------------------------------------------


@pytest.mark.parametrize("payload", MALFORMED, ids=lambda payload: payload.hex()[:16])
def test_undecodable_requests_are_invalid_argument(channel, payload):
    call = channel.unary_unary(
        f"/{SERVICE}/Create", request_serializer=lambda b: b, response_deserializer=lambda b: b
    )
    with pytest.raises(grpc.RpcError) as info:
        call(payload, timeout=TIMEOUT)
    assert info.value.code() is Code.INVALID_ARGUMENT, (info.value.code(), info.value.details())


def test_json_nested_past_the_parse_limit_is_invalid_argument(channel, pb):
    everything_pb2, _ = pb
    message = deep_json_request(everything_pb2, 120)
    stub = stub_for(Everything, channel)
    with pytest.raises(grpc.RpcError) as info:
        stub.Create(message, timeout=TIMEOUT)
    assert info.value.code() is Code.INVALID_ARGUMENT, (info.value.code(), info.value.details())


def test_a_huge_value_echoed_in_an_error_keeps_its_status(channel, pb, seed):
    everything_pb2, _ = pb
    message = everything_pb2.EverythingData(**{**seed["base"], "f_choice_str": "z" * 100_000})
    stub = stub_for(Everything, channel)
    with pytest.raises(grpc.RpcError) as info:
        stub.Create(message, timeout=TIMEOUT)
    assert info.value.code() is Code.INVALID_ARGUMENT, (info.value.code(), info.value.details())
    assert len(info.value.details()) < 4096


def test_every_rpc_was_tried():
    tried = {rpc for rpc, counts in TRIED.items() if sum(counts.values())}
    assert set(RPCS) <= tried, sorted(tried)
