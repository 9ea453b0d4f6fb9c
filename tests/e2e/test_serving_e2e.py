"""End to end: every RPC of the test project through real `rungrpcserver` processes.

Clients here see exactly what production clients see: generated stubs on a channel to a
server process backed by its own database (SQLite file, or PostgreSQL with DATABASE_URL).
The test process cannot use the ORM on that database, so state is checked through the API,
and rows no RPC can create (tags, tokens, bulk rows) are inserted with raw SQL.

Servers: ``grpc_server`` (conftest's, on the session's server database, which other modules
write too: every test makes its own rows), ``dev_server`` (``--dev``: tracebacks to clients,
a log line per call) on the same database, and
``batch_server`` (``LIST_BATCH_SIZE`` 7, two worker threads) on a fresh database of its own,
so that its tables start empty.

Every call goes through ``Api`` (or records its code by hand): it passes ``timeout=TIMEOUT``
and appends each call's final status code to ``SEEN``, which the last test checks for UNKNOWN.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
import sys
import time
import uuid
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from catalog.models import Author, Book, Everything, Tag
from django.db import models
from google.protobuf import duration_pb2, json_format, struct_pb2, timestamp_pb2
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from support import ON_POSTGRES, bus_env, db_execute, running_server

from django_grpc_bus.testing import stub_for

TIMEOUT = 10  # seconds, for every call
UTC = dt.timezone.utc
Code = grpc.StatusCode

# The final status code of every call made in this module (the last test looks for UNKNOWN).
SEEN: list[grpc.StatusCode] = []

# Edge values for the Everything model.
INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
AWARE = dt.datetime(
    2024, 2, 29, 23, 59, 58, 123456, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30))
)
# SQLite keeps decimals as 8-byte floats (15 significant digits; Django documents this), so the
# 30-digit value is only exact on PostgreSQL. Both have 10 decimal places.
BIG_DECIMAL = "12345678901234567890.0123456789" if ON_POSTGRES else "12345.0123456789"
NEGATIVE_DURATION = dt.timedelta(days=-1, seconds=5, microseconds=7)
NESTED_JSON = {"list": [1, 2.5, None, True, "x"], "nested": {"k": [], "e": {}}, "n": -3}
NULLABLE = (
    "f_null_int",
    "f_null_char",
    "f_null_decimal",
    "f_null_bool",
    "f_null_datetime",
    "f_null_date",
    "f_null_json",
    "editor",
    "token",
)


# GeneratedField exists from Django 5.0; on Django 4.2 the model has no f_generated column.
HAS_GENERATED = hasattr(models, "GeneratedField")
requires_generated = pytest.mark.skipif(not HAS_GENERATED, reason="GeneratedField: Django 5.0+")


def unique(prefix: str = "t") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


# -- calls ---------------------------------------------------------------------------------------


class Api:
    """A generated stub whose every call has a deadline and records its final status code.

    Unary calls return the response; ``List`` (server streaming) returns the list of
    response messages, read to the end.
    """

    def __init__(self, stub: Any) -> None:
        self._stub = stub

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._stub, name)
        streaming = isinstance(method, grpc.UnaryStreamMultiCallable)

        def call(request: Any) -> Any:
            try:
                result = method(request, timeout=TIMEOUT)
                if streaming:
                    result = list(result)
            except grpc.RpcError as exc:
                SEEN.append(exc.code())
                raise
            SEEN.append(Code.OK)
            return result

        return call


def fails(call: Any, request: Any, code: grpc.StatusCode) -> grpc.RpcError:
    """Make the call, expect it to fail with `code`, return the error."""
    with pytest.raises(grpc.RpcError) as info:
        call(request)
    assert info.value.code() == code, (info.value.code(), info.value.details())
    return info.value


def violations(exc: grpc.RpcError) -> dict[str, list[str]]:
    """The google.rpc.BadRequest field violations of a failed call, by field."""
    status = rpc_status.from_call(exc)
    assert status is not None, "no google.rpc.Status in the trailers"
    assert status.message == exc.details()
    result: dict[str, list[str]] = {}
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            for violation in bad_request.field_violations:
                result.setdefault(violation.field, []).append(violation.description)
    return result


def rows(responses: list[Any]) -> list[Any]:
    return [row for response in responses for row in response.results]


def health_status(channel: grpc.Channel, service: str = "") -> int:
    try:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT
        )
    except grpc.RpcError as exc:
        SEEN.append(exc.code())
        raise
    SEEN.append(Code.OK)
    return reply.status


# -- the server's database, directly -------------------------------------------------------------


def insert_tags(url: str, count: int) -> list[int]:
    """New catalog_tag rows (TagService is read-only); returns their primary keys."""
    names = [(unique("tag-"),) for _ in range(count)]
    found = db_execute(url, "INSERT INTO catalog_tag (name) VALUES (%s) RETURNING id", names)
    return [row[0] for row in found]


def insert_token(url: str) -> str:
    """A new catalog_token row (no service serves Token); returns its key as text."""
    key = uuid.uuid4()
    stored = str(key) if url.startswith(("postgres://", "postgresql://")) else key.hex
    db_execute(url, "INSERT INTO catalog_token (key, label) VALUES (%s, %s)", [(stored, "e2e")])
    return str(key)


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pb(compiled):
    from generated_grpc.grpc import Author_pb2, Everything_pb2, Tag_pb2, catalog_Book_pb2

    return SimpleNamespace(
        Author=Author_pb2, Book=catalog_Book_pb2, Everything=Everything_pb2, Tag=Tag_pb2
    )


def apis(channel: grpc.Channel) -> SimpleNamespace:
    """An ``Api`` per service of the test project, on `channel`."""
    return SimpleNamespace(
        everything=Api(stub_for(Everything, channel)),
        authors=Api(stub_for(Author, channel)),
        books=Api(stub_for(Book, channel)),
        tags=Api(stub_for(Tag, channel)),
    )


@pytest.fixture(scope="module")
def api(channel):
    return apis(channel)


@pytest.fixture(scope="module")
def batch_server(fresh_database):
    """LIST_BATCH_SIZE 7 and only two worker threads, on an empty database."""
    with running_server(
        fresh_database, "--max-workers", "2", env=bus_env(LIST_BATCH_SIZE=7)
    ) as server:
        yield server


@pytest.fixture(scope="module")
def batch_channel(batch_server):
    with grpc.insecure_channel(batch_server.target) as channel:
        yield channel


@pytest.fixture(scope="module")
def batch_api(batch_channel):
    return apis(batch_channel)


@pytest.fixture(scope="module")
def dev_server(server_database):
    with running_server(server_database, "--dev", "--noreload") as server:
        yield server


# -- builders ------------------------------------------------------------------------------------


def timestamp(value: dt.datetime) -> timestamp_pb2.Timestamp:
    message = timestamp_pb2.Timestamp()
    message.FromDatetime(value)
    return message


def duration(value: dt.timedelta) -> duration_pb2.Duration:
    message = duration_pb2.Duration()
    message.FromTimedelta(value)
    return message


def json_value(value: Any) -> struct_pb2.Value:
    return json_format.ParseDict(value, struct_pb2.Value())


def new_author(api: Any, pb: Any, name: str | None = None) -> int:
    return api.authors.Create(pb.Author.AuthorData(name=name or unique("author-"))).id


def full_everything(pb: Any, *, author: int, filepath: str, **changes: Any) -> Any:
    """An EverythingData with every writable field set, at edge values where there are edges."""
    fields = dict(
        f_int=INT32_MIN,
        f_bigint=INT64_MAX,
        f_smallint=-32768,
        f_posint=INT32_MAX,
        f_possmall=32767,
        f_posbig=INT64_MAX,
        f_float=sys.float_info.max,
        f_decimal=BIG_DECIMAL,
        f_bool=True,
        f_char="héllo ✓ " + "x" * 92,
        f_text="line 1\nline 2 🎉",
        f_slug="a-slug_1",
        f_email="someone@example.com",
        f_url="https://example.com/x?y=1",
        f_uuid=str(uuid.uuid4()),
        f_ip="2001:db8::1",
        f_filepath=filepath,
        f_file="files/a.txt",
        f_image="images/b.png",
        f_date="2020-02-29",
        f_datetime=timestamp(AWARE),
        f_time="13:14:15.161718",
        f_duration=duration(NEGATIVE_DURATION),
        f_json=json_value(NESTED_JSON),
        f_choice_int=2,
        f_choice_str="b",
        f_custom="lower-case",
        f_null_int=-1,
        f_null_char="n",
        f_null_decimal="-12345678.90",
        f_null_bool=False,
        f_null_datetime=timestamp(dt.datetime(1970, 1, 1, tzinfo=UTC)),
        f_null_date="1970-01-01",
        f_null_json=json_value([1, "two", {"three": 3}]),
        f_default_int=-5,
        f_blank_char="",
        author=author,
    )
    fields.update(changes)
    return pb.Everything.EverythingData(**fields)


def minimal_everything(pb: Any, *, author: int, filepath: str, **changes: Any) -> Any:
    """An EverythingData with only what a Create requires (no field with presence set)."""
    fields = dict(
        f_decimal="1.5",
        f_char="minimal",
        f_text="t",
        f_slug="s",
        f_email="m@example.com",
        f_url="https://example.com/",
        f_uuid=str(uuid.uuid4()),
        f_ip="10.0.0.1",
        f_filepath=filepath,
        f_file="files/m.txt",
        f_image="images/m.png",
        f_date="2001-01-01",
        f_datetime=timestamp(dt.datetime(2001, 1, 1, tzinfo=UTC)),
        f_time="00:00:00",
        f_duration=duration(dt.timedelta(0)),
        f_json=json_value({}),
        f_choice_int=1,
        f_choice_str="a",
        f_custom="c",
        author=author,
    )
    fields.update(changes)
    return pb.Everything.EverythingData(**fields)


def normalized(message: Any) -> Any:
    """A copy with repeated tags sorted (a many-to-many relation has no order)."""
    copy = type(message)()
    copy.CopyFrom(message)
    tags = sorted(copy.tags)
    del copy.tags[:]
    copy.tags.extend(tags)
    return copy


def differences(actual: Any, expected: Any) -> dict[str, tuple[Any, Any]]:
    """The fields whose values differ, as (actual, expected); {} when the messages are equal."""
    left, right = as_dict(normalized(actual)), as_dict(normalized(expected))
    return {
        name: (left.get(name), right.get(name))
        for name in sorted(set(left) | set(right))
        if left.get(name) != right.get(name)
    }


def as_dict(message: Any) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def without(message: Any, *names: str) -> Any:
    copy = type(message)()
    copy.CopyFrom(message)
    for name in names:
        copy.ClearField(name)
    return normalized(copy)


# -- Everything: create, retrieve, list, update, partial update, destroy ------------------------


def test_create_with_every_field_round_trips_through_retrieve_and_list(
    api, pb, server_database, filepath
):
    author, editor = new_author(api, pb), new_author(api, pb)
    tags = insert_tags(server_database, 3)
    token = insert_token(server_database)
    request = full_everything(
        pb, author=author, filepath=filepath, editor=editor, token=token, tags=tags
    )
    before = dt.datetime.now(UTC)
    created = api.everything.Create(request)

    assert created.HasField("id") and created.id > 0
    # Read-only fields come from the server.
    if HAS_GENERATED:
        assert created.f_generated == INT32_MIN + 1
    auto_now = created.f_auto_now.ToDatetime(tzinfo=UTC)
    assert before - dt.timedelta(seconds=5) <= auto_now <= dt.datetime.now(UTC)
    assert created.f_binary == b""
    expected = normalized(request)
    expected.id = created.id
    if HAS_GENERATED:
        expected.f_generated = created.f_generated
    expected.f_auto_now.CopyFrom(created.f_auto_now)
    expected.f_binary = created.f_binary
    assert differences(created, expected) == {}

    retrieved = api.everything.Retrieve(pb.Everything.EverythingLookupRequest(id=created.id))
    assert differences(retrieved, expected) == {}
    # The values, as Python values: exact, and in the same instant.
    assert retrieved.f_bigint == retrieved.f_posbig == INT64_MAX
    assert retrieved.f_smallint == -32768
    assert retrieved.f_decimal == BIG_DECIMAL
    assert retrieved.f_null_decimal == "-12345678.90"
    assert retrieved.f_datetime.ToDatetime(tzinfo=UTC) == AWARE
    assert retrieved.f_time == "13:14:15.161718"
    assert retrieved.f_duration.ToTimedelta() == NEGATIVE_DURATION
    assert json_format.MessageToDict(retrieved.f_json) == NESTED_JSON
    assert sorted(retrieved.tags) == sorted(tags)
    assert retrieved.token == token and retrieved.editor == editor

    listed = {
        row.id: row for row in rows(api.everything.List(pb.Everything.EverythingListRequest()))
    }
    assert normalized(listed[created.id]) == expected


def test_update_replaces_every_field_and_unset_nullables_become_null(
    api, pb, server_database, filepath
):
    author, other_author = new_author(api, pb), new_author(api, pb)
    first_tags, second_tags = insert_tags(server_database, 2), insert_tags(server_database, 1)
    created = api.everything.Create(
        full_everything(
            pb,
            author=author,
            filepath=filepath,
            editor=author,
            token=insert_token(server_database),
            tags=first_tags,
        )
    )
    replacement = minimal_everything(
        pb,
        author=other_author,
        filepath=filepath,
        id=created.id,
        f_int=42,
        f_char="replaced",
        f_decimal="-0.0000000001",
        f_default_int=0,
        tags=second_tags,
    )
    updated = api.everything.Update(replacement)
    retrieved = api.everything.Retrieve(pb.Everything.EverythingLookupRequest(id=created.id))
    # f_generated: see test_update_responses_carry_the_stored_generated_value.
    if HAS_GENERATED:
        updated, retrieved = without(updated, "f_generated"), without(retrieved, "f_generated")
    assert differences(updated, retrieved) == {}
    for name in NULLABLE:
        assert not retrieved.HasField(name), name
    assert retrieved.f_int == 42
    assert retrieved.f_bigint == 0 and retrieved.f_bool is False  # plain scalars: given as 0
    assert retrieved.f_char == "replaced"
    assert retrieved.f_decimal == "-0.0000000001"
    assert retrieved.author == other_author
    assert list(retrieved.tags) == second_tags
    assert retrieved.HasField("f_default_int") and retrieved.f_default_int == 0
    assert retrieved.f_json == json_value({})
    assert retrieved.f_auto_now.ToDatetime() >= created.f_auto_now.ToDatetime()


@requires_generated
def test_update_responses_carry_the_stored_generated_value(api, pb, filepath):
    author = new_author(api, pb)
    created = api.everything.Create(full_everything(pb, author=author, filepath=filepath))
    retrieved = api.everything.Retrieve(pb.Everything.EverythingLookupRequest(id=created.id))
    assert retrieved.f_generated == created.f_int + 1 == INT32_MIN + 1
    _check_generated_after_writes(api, pb, filepath, author, created)


def _check_generated_after_writes(api, pb, filepath, author, created):
    assert created.f_generated == INT32_MIN + 1
    updated = api.everything.Update(
        minimal_everything(pb, author=author, filepath=filepath, id=created.id, f_int=10)
    )
    patched = api.everything.PartialUpdate(
        pb.Everything.EverythingPartialUpdateRequest(
            data=pb.Everything.EverythingData(id=created.id, f_int=20),
            update_mask={"paths": ["f_int"]},
        )
    )
    retrieved = api.everything.Retrieve(pb.Everything.EverythingLookupRequest(id=created.id))
    assert retrieved.f_generated == 21
    assert (updated.f_generated, patched.f_generated) == (11, 21)


def test_update_leaves_an_unset_non_nullable_optional_field_as_it_was(api, pb, filepath):
    # As documented in UpdateModelMixin: unset nullable fields become null, other unset fields
    # with presence (f_default_int, f_blank_char) keep their values, as in a DRF PUT.
    author = new_author(api, pb)
    created = api.everything.Create(
        minimal_everything(pb, author=author, filepath=filepath, f_default_int=-5, f_null_int=3)
    )
    updated = api.everything.Update(
        minimal_everything(pb, author=author, filepath=filepath, id=created.id, f_char="new")
    )
    for message in (
        updated,
        api.everything.Retrieve(pb.Everything.EverythingLookupRequest(id=created.id)),
    ):
        assert message.f_default_int == -5
        assert not message.HasField("f_null_int")
        assert message.f_char == "new"


def test_update_of_a_missing_row_is_not_found(api, pb, filepath):
    author = new_author(api, pb)
    fails(
        api.everything.Update,
        minimal_everything(pb, author=author, filepath=filepath, id=INT64_MAX),
        Code.NOT_FOUND,
    )


def test_partial_update_changes_only_the_masked_fields(api, pb, server_database, filepath):
    author = new_author(api, pb)
    tags = insert_tags(server_database, 2)
    created = api.everything.Create(
        full_everything(pb, author=author, filepath=filepath, tags=tags)
    )
    request = pb.Everything.EverythingPartialUpdateRequest(
        data=pb.Everything.EverythingData(id=created.id, f_char="patched", f_bigint=-1),
        update_mask={"paths": ["f_char", "f_null_int", "f_null_json", "tags"]},
    )
    # f_bigint is set in data but not masked: it must stay as it was.
    patched = api.everything.PartialUpdate(request)
    retrieved = api.everything.Retrieve(pb.Everything.EverythingLookupRequest(id=created.id))
    assert differences(patched, retrieved) == {}
    assert retrieved.f_char == "patched"
    assert not retrieved.HasField("f_null_int")  # masked, nullable, unset: null
    assert not retrieved.HasField("f_null_json")
    assert list(retrieved.tags) == []  # masked repeated field, empty: cleared
    assert retrieved.f_bigint == INT64_MAX
    changed = ("f_char", "f_null_int", "f_null_json", "tags", "f_auto_now")
    assert differences(without(retrieved, *changed), without(created, *changed)) == {}


def test_partial_update_of_an_unset_non_nullable_optional_field_is_invalid(api, pb, filepath):
    created = api.everything.Create(
        full_everything(pb, author=new_author(api, pb), filepath=filepath)
    )
    request = pb.Everything.EverythingPartialUpdateRequest(
        data=pb.Everything.EverythingData(id=created.id, f_char="never written"),
        update_mask={"paths": ["f_char", "f_default_int"]},
    )
    error = fails(api.everything.PartialUpdate, request, Code.INVALID_ARGUMENT)
    assert "f_default_int" in error.details()
    assert set(violations(error)) == {"data.f_default_int"}
    retrieved = api.everything.Retrieve(pb.Everything.EverythingLookupRequest(id=created.id))
    assert differences(retrieved, created) == {}


@pytest.mark.parametrize(
    ("paths", "expected"),
    [
        ([], {"update_mask": ["Name at least one field."]}),
        (["nope"], {"update_mask": ["nope: no such field"]}),
        (["id"], {"update_mask": ["id: read-only"]}),
        (
            ["f_char", "f_auto_now", "f_generated", "nope"],
            {
                "update_mask": [
                    "f_auto_now: read-only",
                    "f_generated: read-only" if HAS_GENERATED else "f_generated: no such field",
                    "nope: no such field",
                ]
            },
        ),
    ],
    ids=["empty", "unknown", "id", "several"],
)
def test_partial_update_with_a_bad_mask_is_invalid_and_changes_nothing(
    api, pb, filepath, paths, expected
):
    created = api.everything.Create(
        full_everything(pb, author=new_author(api, pb), filepath=filepath)
    )
    request = pb.Everything.EverythingPartialUpdateRequest(
        data=pb.Everything.EverythingData(id=created.id, f_char="never written"),
        update_mask={"paths": paths},
    )
    error = fails(api.everything.PartialUpdate, request, Code.INVALID_ARGUMENT)
    assert violations(error) == expected
    for path in paths:
        if path != "f_char":
            assert path in error.details()
    retrieved = api.everything.Retrieve(pb.Everything.EverythingLookupRequest(id=created.id))
    assert differences(retrieved, created) == {}


def test_partial_update_of_a_missing_row_is_not_found(api, pb):
    request = pb.Everything.EverythingPartialUpdateRequest(
        data=pb.Everything.EverythingData(id=INT64_MAX, f_char="x"),
        update_mask={"paths": ["f_char"]},
    )
    fails(api.everything.PartialUpdate, request, Code.NOT_FOUND)


def test_destroy_then_retrieve_and_destroy_again_are_not_found(api, pb, filepath):
    created = api.everything.Create(
        minimal_everything(pb, author=new_author(api, pb), filepath=filepath)
    )
    lookup = pb.Everything.EverythingLookupRequest(id=created.id)
    assert api.everything.Destroy(lookup).ByteSize() == 0  # google.protobuf.Empty
    error = fails(api.everything.Retrieve, lookup, Code.NOT_FOUND)
    assert str(created.id) in error.details()
    fails(api.everything.Destroy, lookup, Code.NOT_FOUND)


def test_retrieve_without_the_lookup_field_is_invalid(api, pb):
    error = fails(api.authors.Retrieve, pb.Author.AuthorLookupRequest(), Code.INVALID_ARGUMENT)
    assert violations(error) == {"id": ["This field is required."]}
    assert error.details() == "id is required to find the row."
    # Everything's token is a unique one-to-one: either one finds the row.
    error = fails(
        api.everything.Retrieve, pb.Everything.EverythingLookupRequest(), Code.INVALID_ARGUMENT
    )
    assert violations(error) == {
        "id": ["Set one of: id, token."],
        "token": ["Set one of: id, token."],
    }
    assert error.details() == "id or token is required to find the row."


def test_destroying_an_author_a_row_protects_is_failed_precondition(api, pb, filepath):
    author, editor = new_author(api, pb), new_author(api, pb)
    created = api.everything.Create(
        minimal_everything(pb, author=author, filepath=filepath, editor=editor)
    )
    fails(api.authors.Destroy, pb.Author.AuthorLookupRequest(id=author), Code.FAILED_PRECONDITION)
    # Nothing was deleted: the author and the row are still there.
    assert api.authors.Retrieve(pb.Author.AuthorLookupRequest(id=author)).id == author
    assert (
        api.everything.Retrieve(pb.Everything.EverythingLookupRequest(id=created.id)).author
        == author
    )
    # editor is SET_NULL: destroying it is allowed and nulls the reference.
    api.authors.Destroy(pb.Author.AuthorLookupRequest(id=editor))
    row = api.everything.Retrieve(pb.Everything.EverythingLookupRequest(id=created.id))
    assert not row.HasField("editor")
    # Once the protecting row is gone, the author can go.
    api.everything.Destroy(pb.Everything.EverythingLookupRequest(id=created.id))
    api.authors.Destroy(pb.Author.AuthorLookupRequest(id=author))
    fails(api.authors.Retrieve, pb.Author.AuthorLookupRequest(id=author), Code.NOT_FOUND)


# -- presence: defaults, nulls, zeros -------------------------------------------------------------


def test_unset_optional_field_with_a_default_gets_the_model_default(api, pb, filepath):
    created = api.everything.Create(
        minimal_everything(pb, author=new_author(api, pb), filepath=filepath)
    )
    retrieved = api.everything.Retrieve(pb.Everything.EverythingLookupRequest(id=created.id))
    for message in (created, retrieved):
        assert message.HasField("f_default_int") and message.f_default_int == 7
        assert message.f_blank_char == ""  # blank=True, unset: the model's "" default
        for name in NULLABLE:
            assert not message.HasField(name), name
        assert list(message.tags) == []


def test_zero_values_stay_zero_and_are_not_null(api, pb, filepath):
    request = minimal_everything(
        pb,
        author=new_author(api, pb),
        filepath=filepath,
        f_default_int=0,
        f_null_int=0,
        f_null_char="0",
        f_null_decimal="0",
        f_null_bool=False,
        f_null_datetime=timestamp(dt.datetime(1970, 1, 1, tzinfo=UTC)),
        f_null_json=json_value(None),
    )
    created = api.everything.Create(request)
    retrieved = api.everything.Retrieve(pb.Everything.EverythingLookupRequest(id=created.id))
    for message in (created, retrieved):
        for name in ("f_default_int", "f_null_int", "f_null_char", "f_null_bool"):
            assert message.HasField(name), name
        assert message.f_default_int == 0 and message.f_null_int == 0
        assert message.f_null_char == "0" and message.f_null_bool is False
        assert message.f_null_decimal == "0.00"
        assert message.f_null_datetime.ToDatetime(tzinfo=UTC) == dt.datetime(1970, 1, 1, tzinfo=UTC)
        # A JSON null in a nullable JSON field is stored as SQL NULL (DRF's choice too).
        assert not message.HasField("f_null_json")


def test_an_empty_string_is_not_taken_for_null(api, pb, filepath):
    # f_null_char is null=True, blank=False: "" is a blank value, refused as DRF does, and
    # not silently stored as NULL.
    request = minimal_everything(pb, author=new_author(api, pb), filepath=filepath, f_null_char="")
    error = fails(api.everything.Create, request, Code.INVALID_ARGUMENT)
    assert violations(error) == {"f_null_char": ["This field may not be blank."]}


# -- validation ------------------------------------------------------------------------------------


def test_every_field_error_of_a_bad_create_is_reported(api, pb, filepath):
    request = full_everything(
        pb,
        author=new_author(api, pb),
        filepath=filepath,
        f_char="forbidden",  # validate_f_char
        f_text="",  # blank
        f_email="not-an-email",
        f_url="not a url",
        f_uuid="not-a-uuid",
        f_decimal="abc",
        f_date="2020-13-01",
        f_time="25:00",
        f_choice_str="z",
        f_choice_int=3,
        f_ip="999.1.1.1",
    )
    error = fails(api.everything.Create, request, Code.INVALID_ARGUMENT)
    bad = {
        "f_char",
        "f_text",
        "f_email",
        "f_url",
        "f_uuid",
        "f_decimal",
        "f_date",
        "f_time",
        "f_choice_str",
        "f_choice_int",
        "f_ip",
    }
    found = violations(error)
    assert set(found) == bad
    assert found["f_char"] == ["This word is not allowed."]
    assert found["f_text"] == ["This field may not be blank."]
    assert any("email" in text for text in found["f_email"])
    assert any("not a valid choice" in text for text in found["f_choice_str"])
    details = error.details()
    for name in bad:
        assert f"{name}: " in details, name
    assert "Traceback" not in details
    assert len(details) < 2000


def test_blank_required_text_is_reported_with_its_field(api, pb, filepath):
    request = full_everything(pb, author=new_author(api, pb), filepath=filepath, f_char="")
    error = fails(api.everything.Create, request, Code.INVALID_ARGUMENT)
    assert violations(error) == {"f_char": ["This field may not be blank."]}
    assert error.details() == "f_char: This field may not be blank."


def test_a_missing_required_message_field_is_reported(api, pb, filepath):
    request = full_everything(pb, author=new_author(api, pb), filepath=filepath)
    request.ClearField("f_datetime")
    request.ClearField("f_json")
    error = fails(api.everything.Create, request, Code.INVALID_ARGUMENT)
    assert set(violations(error)) == {"f_datetime", "f_json"}


def test_a_foreign_key_to_a_missing_author_is_invalid(api, pb, filepath):
    request = pb.Book.BookData(title="t", author=INT32_MAX, isbn=unique()[:13])
    error = fails(api.books.Create, request, Code.INVALID_ARGUMENT)
    assert set(violations(error)) == {"author"}
    assert "author" in error.details() and str(INT32_MAX) in error.details()
    request = minimal_everything(pb, author=INT32_MAX, filepath=filepath, editor=INT32_MAX - 1)
    error = fails(api.everything.Create, request, Code.INVALID_ARGUMENT)
    assert set(violations(error)) == {"author", "editor"}


def test_many_to_many_with_a_missing_tag_is_invalid(api, pb, server_database, filepath):
    [tag] = insert_tags(server_database, 1)
    request = minimal_everything(
        pb, author=new_author(api, pb), filepath=filepath, tags=[tag, 32000]
    )
    error = fails(api.everything.Create, request, Code.INVALID_ARGUMENT)
    assert set(violations(error)) == {"tags"}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("f_datetime", timestamp_pb2.Timestamp(seconds=2**62)),
        ("f_datetime", timestamp_pb2.Timestamp(seconds=-62135596801)),  # year 0
        ("f_null_datetime", timestamp_pb2.Timestamp(seconds=0, nanos=-5)),
        ("f_duration", duration_pb2.Duration(seconds=2**62)),
    ],
    ids=["timestamp-huge", "timestamp-year-0", "timestamp-negative-nanos", "duration-huge"],
)
def test_an_out_of_range_timestamp_or_duration_is_invalid(api, pb, filepath, field, value):
    request = minimal_everything(pb, author=new_author(api, pb), filepath=filepath)
    getattr(request, field).CopyFrom(value)
    error = fails(api.everything.Create, request, Code.INVALID_ARGUMENT)
    assert set(violations(error)) == {field}


# -- Book: uniqueness and a lookup_field other than the primary key -----------------------------


def isbn() -> str:
    return uuid.uuid4().hex[:13]


def test_duplicate_isbn_is_already_exists(api, pb):
    author = new_author(api, pb)
    number = isbn()
    api.books.Create(pb.Book.BookData(title="first", author=author, isbn=number))
    error = fails(
        api.books.Create,
        pb.Book.BookData(title="second", author=author, isbn=number),
        Code.ALREADY_EXISTS,
    )
    assert set(violations(error)) == {"isbn"}
    assert "isbn" in error.details()
    # Only the first one exists.
    found = api.books.Retrieve(pb.Book.BookLookupRequest(isbn=number))
    assert found.title == "first"


def test_book_retrieve_update_partial_update_destroy_by_isbn(api, pb):
    author, other = new_author(api, pb), new_author(api, pb)
    number = isbn()
    created = api.books.Create(pb.Book.BookData(title="draft", author=author, isbn=number))
    lookup = pb.Book.BookLookupRequest(isbn=number)
    assert api.books.Retrieve(lookup) == created

    updated = api.books.Update(pb.Book.BookData(title="final", author=other, isbn=number))
    assert (updated.id, updated.title, updated.author, updated.isbn) == (
        created.id,
        "final",
        other,
        number,
    )
    assert api.books.Retrieve(lookup) == updated

    patched = api.books.PartialUpdate(
        pb.Book.BookPartialUpdateRequest(
            data=pb.Book.BookData(isbn=number, title="patched", author=author),
            update_mask={"paths": ["title"]},
        )
    )
    assert (patched.title, patched.author) == ("patched", other)
    assert api.books.Retrieve(lookup) == patched

    api.books.Destroy(lookup)
    error = fails(api.books.Retrieve, lookup, Code.NOT_FOUND)
    assert "isbn" in error.details() and number in error.details()


def test_unknown_isbn_is_not_found_naming_isbn(api, pb):
    number = isbn()
    for method in (api.books.Retrieve, api.books.Destroy):
        error = fails(method, pb.Book.BookLookupRequest(isbn=number), Code.NOT_FOUND)
        assert "isbn" in error.details() and number in error.details()
    error = fails(
        api.books.Update,
        pb.Book.BookData(title="x", author=new_author(api, pb), isbn=number),
        Code.NOT_FOUND,
    )
    assert "isbn" in error.details()


def test_book_lookup_without_isbn_is_invalid(api, pb):
    author = new_author(api, pb)
    created = api.books.Create(pb.Book.BookData(title="t", author=author, isbn=isbn()))
    # The service looks books up by isbn: the primary key alone does not do.
    for method in (api.books.Retrieve, api.books.Destroy):
        error = fails(method, pb.Book.BookLookupRequest(id=created.id), Code.INVALID_ARGUMENT)
        assert set(violations(error)) == {"isbn"}
        assert "isbn" in error.details()


# -- a read-only service -----------------------------------------------------------------------


def test_read_only_tag_service_lists_and_retrieves_but_refuses_writes(api, pb, server_database):
    [tag] = insert_tags(server_database, 1)
    retrieved = api.tags.Retrieve(pb.Tag.TagLookupRequest(id=tag))
    assert retrieved.id == tag and retrieved.name.startswith("tag-")
    listed = rows(api.tags.List(pb.Tag.TagListRequest()))
    assert retrieved in listed
    fails(api.tags.Retrieve, pb.Tag.TagLookupRequest(id=32001), Code.NOT_FOUND)

    writes = [
        (api.tags.Create, pb.Tag.TagData(name=unique("tag-"))),
        (api.tags.Update, pb.Tag.TagData(id=tag, name="renamed")),
        (
            api.tags.PartialUpdate,
            pb.Tag.TagPartialUpdateRequest(
                data=pb.Tag.TagData(id=tag, name="renamed"), update_mask={"paths": ["name"]}
            ),
        ),
        (api.tags.Destroy, pb.Tag.TagLookupRequest(id=tag)),
    ]
    for method, request in writes:
        error = fails(method, request, Code.UNIMPLEMENTED)
        assert "TagService" in error.details()
    assert api.tags.Retrieve(pb.Tag.TagLookupRequest(id=tag)) == retrieved


# -- unexpected errors -------------------------------------------------------------------------


def test_unexpected_exception_is_internal_with_a_generic_message(api, pb):
    error = fails(api.authors.Create, pb.Author.AuthorData(name="explode"), Code.INTERNAL)
    assert error.details() == "Internal server error."
    status = rpc_status.from_call(error)
    assert status is not None and status.message == "Internal server error."
    assert list(status.details) == []
    leaked = repr(error.trailing_metadata()) + error.debug_error_string()
    for secret in ("secret internal detail", "Traceback", "RuntimeError", "SELECT", "INSERT"):
        assert secret not in leaked
    # The server is fine afterwards.
    assert api.authors.Create(pb.Author.AuthorData(name=unique())).id > 0


# The access log's line (django_grpc_bus.access), which --dev prints as every mode does.
LOG_LINE = re.compile(
    r"(/catalog\.Author/\w+) ([A-Z_]+) (\d+(?:\.\d+)?)ms ipv[46]:\S+\s*$", re.MULTILINE
)


def test_dev_server_returns_tracebacks_and_logs_one_line_per_call(dev_server, pb):
    with grpc.insecure_channel(dev_server.target) as channel:
        authors = Api(stub_for(Author, channel))
        created = authors.Create(pb.Author.AuthorData(name=unique("dev-")))
        fails(authors.Retrieve, pb.Author.AuthorLookupRequest(id=INT32_MAX), Code.NOT_FOUND)
        error = fails(authors.Create, pb.Author.AuthorData(name="explode"), Code.INTERNAL)
        assert error.details().startswith("Internal server error.\nTraceback")
        assert "RuntimeError: secret internal detail" in error.details()
        assert "perform_create" in error.details()
        authors.Destroy(pb.Author.AuthorLookupRequest(id=created.id))

    expected = [
        ("/catalog.Author/Create", "OK"),
        ("/catalog.Author/Retrieve", "NOT_FOUND"),
        ("/catalog.Author/Create", "INTERNAL"),
        ("/catalog.Author/Destroy", "OK"),
    ]
    deadline = time.monotonic() + TIMEOUT
    while len(LOG_LINE.findall(dev_server.output)) < len(expected) and time.monotonic() < deadline:
        time.sleep(0.05)
    logged = LOG_LINE.findall(dev_server.output)
    assert [(method, code) for method, code, _ms in logged] == expected, dev_server.output
    assert all(float(ms) >= 0 for _method, _code, ms in logged)


# -- List: batches, pages, an empty table, cancellation ------------------------------------------


def test_list_of_an_empty_table_is_one_empty_response(batch_api, pb):
    # Nothing in this module creates Everything rows on the batch server's own database.
    responses = batch_api.everything.List(pb.Everything.EverythingListRequest())
    assert responses == [pb.Everything.EverythingListResponse()]
    paged = batch_api.everything.List(pb.Everything.EverythingListRequest(page_size=5))
    assert paged == [pb.Everything.EverythingListResponse()]


def test_list_streams_rows_in_batches_in_primary_key_order(batch_api, pb):
    prefix = unique("batch-")
    ids = [
        batch_api.authors.Create(pb.Author.AuthorData(name=f"{prefix}-{index:02}")).id
        for index in range(50)
    ]
    responses = batch_api.authors.List(pb.Author.AuthorListRequest())
    assert all(len(response.results) <= 7 for response in responses)
    # Full batches but for the last one: rows are not sent one message at a time.
    assert all(len(response.results) == 7 for response in responses[:-1])
    # Every message but the last carries the token of the rows after it (a resume point).
    assert all(response.next_page_token for response in responses[:-1])
    assert responses[-1].next_page_token == ""
    listed = rows(responses)
    all_ids = [row.id for row in listed]
    assert all_ids == sorted(set(all_ids))
    mine = [(row.id, row.name) for row in listed if row.name.startswith(prefix)]
    assert mine == [(pk, f"{prefix}-{index:02}") for index, pk in enumerate(ids)]
    assert len(responses) >= 8  # 50 rows at most 7 a message


@pytest.mark.parametrize("page_size", [10, 7, 3])
def test_pages_return_every_row_exactly_once(batch_api, pb, page_size):
    prefix = unique("page-")
    ids = [
        batch_api.authors.Create(pb.Author.AuthorData(name=f"{prefix}-{index}")).id
        for index in range(23)
    ]
    everything = [row.id for row in rows(batch_api.authors.List(pb.Author.AuthorListRequest()))]
    pages: list[list[int]] = []
    token = ""
    for _ in range(len(everything) + 2):
        responses = batch_api.authors.List(
            pb.Author.AuthorListRequest(page_size=page_size, page_token=token)
        )
        assert all(len(response.results) <= 7 for response in responses)
        # Only the last message of a page carries the token.
        assert all(response.next_page_token == "" for response in responses[:-1])
        pages.append([row.id for row in rows(responses)])
        token = responses[-1].next_page_token
        if not token:
            break
    else:
        pytest.fail("paging never ended")
    assert all(len(page) == page_size for page in pages[:-1])
    assert 0 < len(pages[-1]) <= page_size or everything == []
    flat = [pk for page in pages for pk in page]
    assert flat == everything
    assert set(ids) <= set(flat)


def test_bad_paging_arguments_are_invalid(batch_api, api, pb):
    for list_call in (batch_api.authors.List, api.authors.List):
        error = fails(list_call, pb.Author.AuthorListRequest(page_size=-1), Code.INVALID_ARGUMENT)
        assert set(violations(error)) == {"page_size"}
        for token in ("garbage!!", "bzot", "eDox", "bzotNQ"):  # b"o:-5" is "bzotNQ"
            error = fails(
                list_call, pb.Author.AuthorListRequest(page_token=token), Code.INVALID_ARGUMENT
            )
            assert set(violations(error)) == {"page_token"}, token


@pytest.mark.parametrize("offset", [2**63, 10**30])
def test_a_page_token_with_an_impossible_offset_is_invalid(batch_api, pb, offset):
    token = base64.urlsafe_b64encode(f"o:{offset}".encode()).decode().rstrip("=")
    for page_size in (0, 5):
        error = fails(
            batch_api.authors.List,
            pb.Author.AuthorListRequest(page_size=page_size, page_token=token),
            Code.INVALID_ARGUMENT,
        )
        assert set(violations(error)) == {"page_token"}


def test_a_page_token_past_the_end_is_an_empty_last_page(batch_api, pb):
    everything = rows(batch_api.authors.List(pb.Author.AuthorListRequest()))
    offset = len(everything) + 100
    token = base64.urlsafe_b64encode(f"o:{offset}".encode()).decode().rstrip("=")
    responses = batch_api.authors.List(pb.Author.AuthorListRequest(page_size=5, page_token=token))
    assert responses == [pb.Author.AuthorListResponse()]


def test_cancelled_list_does_not_hurt_the_server(
    batch_server, batch_channel, batch_api, fresh_database, pb
):
    author = batch_api.authors.Create(pb.Author.AuthorData(name=unique("cancel-"))).id
    prefix = uuid.uuid4().hex[:8]
    db_execute(
        fresh_database,
        "INSERT INTO catalog_book (title, author_id, isbn) VALUES (%s, %s, %s)",
        [(f"book {index}", author, f"{prefix}{index:04}") for index in range(3000)],
    )
    stub = stub_for(Book, batch_channel)
    # Three times with two worker threads: a cancelled call must give its thread back.
    for _ in range(3):
        responses = stub.List(pb.Book.BookListRequest(), timeout=TIMEOUT)
        first = next(responses)
        assert len(first.results) == 7
        responses.cancel()
        with pytest.raises(grpc.RpcError) as info:
            for _response in responses:
                pass
        assert info.value.code() == Code.CANCELLED
        SEEN.append(info.value.code())

    # Reads and writes (on the very rows the cancelled calls were reading) still work.
    isbn_0 = f"{prefix}0000"
    assert batch_api.books.Retrieve(pb.Book.BookLookupRequest(isbn=isbn_0)).author == author
    batch_api.books.Destroy(pb.Book.BookLookupRequest(isbn=isbn_0))
    batch_api.authors.Destroy(pb.Author.AuthorLookupRequest(id=author))  # cascades to 2999 books
    assert rows(batch_api.books.List(pb.Book.BookListRequest())) == []
    assert batch_server.process.poll() is None
    assert health_status(batch_channel) == health_pb2.HealthCheckResponse.SERVING


# -- last: nothing ever ended as UNKNOWN ---------------------------------------------------------


def test_no_call_ended_unknown_and_the_server_still_serves(grpc_server, channel):
    assert health_status(channel) == health_pb2.HealthCheckResponse.SERVING
    assert health_status(channel, "catalog.Everything") == health_pb2.HealthCheckResponse.SERVING
    assert grpc_server.process.poll() is None
    assert Code.UNKNOWN not in SEEN, SEEN
    assert len(SEEN) > 1
