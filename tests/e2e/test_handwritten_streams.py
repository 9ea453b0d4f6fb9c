"""A service for a hand-written proto serves all four kinds of RPC, client streams included.

``handwritten.BookActionsService`` (``grpc_module``/``proto_service``, see tests/handwritten.py)
is served by a real ``rungrpcserver --dev --noreload`` process, and called through the registry
(``registry.<servlet>.BookActions.<method>(iterable)`` for a client stream) and, for bytes that
are not a message or a call cancelled midway, through a raw channel. Client streams get the same
treatment as unary calls: the error table, INVALID_ARGUMENT for a message that does not decode,
one transaction for an atomic action, rolled back on an error or a cancellation.
"""

from __future__ import annotations

import os
import re
import threading
import time
import uuid

import grpc
import pytest
from handwritten import compile_proto
from support import (
    TESTS_DIR,
    add_servlets,
    bus_env,
    db_query,
    running_server,
    servlet_entry,
)

from django_grpc_bus.client.exceptions import CallError
from django_grpc_bus.client.registry import registry

TIMEOUT = 10
Code = grpc.StatusCode
BULK_CREATE = "/library.BookActions/BulkCreate"
BULK_CREATE_EACH = "/library.BookActions/BulkCreateEach"
RESOLVE = "/library.BookActions/Resolve"


@pytest.fixture(scope="module")
def actions_server(fresh_database, tmp_path_factory):
    folder = compile_proto(tmp_path_factory.mktemp("handwritten"))
    env = {
        **bus_env(ROOT_HANDLERS_HOOK="handwritten.handler"),
        "PYTHONPATH": f"{folder}{os.pathsep}{TESTS_DIR}",
    }
    # --dev: a log line per call, written once the call (and its transaction) has ended.
    with running_server(fresh_database, "--dev", "--noreload", env=env) as server:
        yield server


@pytest.fixture
def actions(settings, actions_server):
    add_servlets(settings, handwritten=servlet_entry(actions_server.port, timeout=TIMEOUT))
    return registry.handwritten.BookActions


def names(label: str, count: int) -> list[str]:
    return [f"{label} {uuid.uuid4().hex[:8]}" for _ in range(count)]


def stored(database_url: str, wanted: list[str]) -> list[str]:
    """Which of `wanted` are author names in the server's database (read directly)."""
    marks = ", ".join(["%s"] * len(wanted))
    rows = db_query(
        database_url, f"SELECT name FROM catalog_author WHERE name IN ({marks})", tuple(wanted)
    )
    return sorted(name for (name,) in rows)


def encoded(name: str) -> bytes:
    """A ``library.AuthorName`` on the wire (field 1, length-delimited), for raw calls."""
    data = name.encode()
    return b"\x0a" + bytes([len(data)]) + data


def raw(channel: grpc.Channel, method: str, streaming_replies: bool):
    kind = channel.stream_stream if streaming_replies else channel.stream_unary
    return kind(method, request_serializer=bytes, response_deserializer=bytes)


def call_logged(server, method: str, count: int) -> bool:
    return len(re.findall(rf"{re.escape(method)} [A-Z_]+ ", server.output)) >= count


# -- all four kinds ------------------------------------------------------------------------------


def test_every_kind_of_rpc_is_served(actions, actions_server, fresh_database):
    created = names("bulk", 3)
    reply = actions.bulk_create({"name": name} for name in created)  # a generator is fine
    assert reply["count"] == 3 and len(reply["ids"]) == 3
    assert stored(fresh_database, created) == sorted(created)

    assert actions.lookup({"name": created[1]}) == {"count": 1, "ids": [reply["ids"][1]]}
    assert [row["name"] for row in actions.count({"start": 3})] == ["3", "2", "1"]
    resolved = list(actions.resolve([{"name": name} for name in created]))
    expected = zip(range(1, 4), reply["ids"], created, strict=True)
    assert [(row["seen"], row["id"], row["name"]) for row in resolved] == list(expected)


def test_bidi_replies_as_the_requests_arrive(actions_server, actions):
    (name,) = names("bidi", 1)
    actions.bulk_create([{"name": name}])
    sent = threading.Event()

    def requests():
        yield encoded(name)
        sent.wait(TIMEOUT)  # the second request only after the first reply came back
        yield encoded(name)

    with grpc.insecure_channel(actions_server.target) as channel:
        replies = raw(channel, RESOLVE, streaming_replies=True)(requests(), timeout=TIMEOUT)
        first = next(replies)
        sent.set()
        rest = list(replies)
    assert first and len(rest) == 1


def test_a_method_the_service_lacks_is_unimplemented(actions):
    with pytest.raises(CallError) as refused:
        actions.forget([{"name": "x"}])
    assert refused.value.code() == Code.UNIMPLEMENTED
    assert "BookActionsService" in refused.value.details()


# -- errors mid-stream ---------------------------------------------------------------------------


def test_an_error_mid_stream_goes_through_the_error_table_and_rolls_back(actions, fresh_database):
    written = names("atomic", 2)
    with pytest.raises(CallError) as refused:
        actions.bulk_create([{"name": written[0]}, {"name": written[1]}, {"name": ""}])
    assert refused.value.code() == Code.INVALID_ARGUMENT
    assert [field for field, _ in refused.value.violations] == ["name"]
    assert stored(fresh_database, written) == []  # atomic: the first two are gone too


def test_without_atomic_the_writes_before_the_error_stay(actions, fresh_database):
    written = names("each", 2)
    with pytest.raises(CallError) as refused:
        actions.bulk_create_each([{"name": written[0]}, {"name": written[1]}, {"name": ""}])
    assert refused.value.code() == Code.INVALID_ARGUMENT
    assert stored(fresh_database, written) == sorted(written)


def test_a_bidi_error_after_some_replies_goes_through_the_error_table(actions):
    (known,) = names("known", 1)
    actions.bulk_create([{"name": known}])
    replies = actions.resolve([{"name": known}, {"name": f"nobody {uuid.uuid4().hex}"}])
    assert next(replies)["name"] == known
    with pytest.raises(CallError) as refused:
        next(replies)
    assert refused.value.code() == Code.NOT_FOUND


def test_a_message_that_does_not_decode_is_invalid_argument(actions_server, fresh_database):
    (name,) = names("before garbage", 1)
    with grpc.insecure_channel(actions_server.target) as channel:
        with pytest.raises(grpc.RpcError) as refused:
            raw(channel, BULK_CREATE, streaming_replies=False)(
                iter([encoded(name), b"\xff\xff\xff"]), timeout=TIMEOUT
            )
    assert refused.value.code() == Code.INVALID_ARGUMENT
    assert "not a valid library.AuthorName message" in refused.value.details()
    assert stored(fresh_database, [name]) == []  # atomic: the first message's row is gone


def test_a_bidi_message_that_does_not_decode_is_invalid_argument(actions_server, actions):
    (name,) = names("known", 1)
    actions.bulk_create([{"name": name}])
    with grpc.insecure_channel(actions_server.target) as channel:
        replies = raw(channel, RESOLVE, streaming_replies=True)(
            iter([encoded(name), b"\xff\xff\xff"]), timeout=TIMEOUT
        )
        with pytest.raises(grpc.RpcError) as refused:
            list(replies)
    assert refused.value.code() == Code.INVALID_ARGUMENT
    assert "not a valid library.AuthorName message" in refused.value.details()


@pytest.mark.parametrize(
    "method, kept", [(BULK_CREATE, False), (BULK_CREATE_EACH, True)], ids=["atomic", "not-atomic"]
)
def test_a_cancelled_client_stream_leaves_nothing_when_atomic(
    actions_server, fresh_database, method, kept
):
    written = names("cancelled", 2)
    release = threading.Event()
    logged = len(re.findall(rf"{re.escape(method)} ", actions_server.output))

    def requests():
        yield from (encoded(name) for name in written)
        release.wait(TIMEOUT)  # the call stays open, its two rows written, until cancelled

    with grpc.insecure_channel(actions_server.target) as channel:
        future = raw(channel, method, streaming_replies=False).future(requests(), timeout=TIMEOUT)
        time.sleep(1.0)  # the server has read both messages and written both rows
        assert not future.done()
        future.cancel()
        release.set()
        deadline = time.monotonic() + TIMEOUT
        while not call_logged(actions_server, method, logged + 1):
            assert time.monotonic() < deadline, actions_server.output[-2000:]
            time.sleep(0.05)
    # Not atomic, the rows stay: they were written before the cancellation, which the atomic
    # call's rollback then undid.
    assert stored(fresh_database, written) == (sorted(written) if kept else [])
