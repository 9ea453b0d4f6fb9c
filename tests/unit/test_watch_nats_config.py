"""WATCH_BACKEND parsing, the relayed message's format and the stream cursor (no NATS needed)."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from django_grpc_bus.watch import cursor as db_cursor
from django_grpc_bus.watch.nats import backend as config
from django_grpc_bus.watch.nats import payload
from django_grpc_bus.watch.reading import Position, Row


@pytest.mark.parametrize("value", [None, "database"])
def test_the_database_is_the_default(value):
    assert config.parse(value) is None


def test_a_url_a_list_and_a_dict():
    assert config.parse("nats://127.0.0.1:4222") == config.NatsConfig(
        ("nats://127.0.0.1:4222",), "GRPC_BUS", "grpcbus"
    )
    assert config.parse(["nats://a:4222", "tls://b:4222"]).servers == (
        "nats://a:4222",
        "tls://b:4222",
    )
    found = config.parse({"url": "nats://a:1", "stream": "ORDERS", "subject_prefix": "shop.bus"})
    assert (found.stream, found.subject("catalog", "Book")) == ("ORDERS", "shop.bus.catalog.Book")
    assert found.subjects == "shop.bus.>"


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("redis://127.0.0.1:6379", "not a NATS server URL"),
        ("127.0.0.1:4222", "not a NATS server URL"),
        ({"stream": "X"}, 'needs "url"'),
        ({"url": "nats://a:1", "stream": "a.b"}, "stream 'a.b'"),
        ({"url": "nats://a:1", "stream": ""}, "stream ''"),
        ({"url": "nats://a:1", "subject_prefix": "a.*"}, "subject_prefix"),
        ({"url": "nats://a:1", "subject_prefix": "a..b"}, "subject_prefix"),
        ({"url": "nats://a:1", "port": 1}, "unknown keys ['port']"),
        (42, "got int 42"),
    ],
)
def test_bad_values_say_what_is_wrong(value, words):
    with pytest.raises(config.BackendError, match=None) as raised:
        config.parse(value)
    assert words in str(raised.value)
    assert config.problem(value) == str(raised.value)


def test_the_check_reports_a_bad_backend(settings):
    from django.core.checks import run_checks

    settings.MESSAGE_BUS = {**settings.MESSAGE_BUS, "WATCH_BACKEND": "http://x"}
    errors = [e for e in run_checks() if e.id == "django_grpc_bus.E037"]
    assert len(errors) == 1 and "WATCH_BACKEND" in errors[0].msg and errors[0].hint


def _row(**changes) -> Row:
    values = dict(
        id=7,
        uid="0b0f6a4e-86c2-4b5c-9a8f-0c2b1f1e9d11",
        kind=2,
        object_pk="12",
        data={"id": 12, "title": "Dune", "price": "9.50"},
        changed=["title"],
        txid=0,
        time=dt.datetime(2026, 12, 7, 23, 0, tzinfo=dt.timezone.utc),
        cursor=Position(0, 1, 7, 1),
    )
    values.update(changes)
    return Row(**values)


def test_the_message_is_the_documented_json_and_headers():
    body, headers = payload.encode(_row(), "catalog.book")
    assert headers == {
        "Nats-Msg-Id": "0b0f6a4e-86c2-4b5c-9a8f-0c2b1f1e9d11",
        "Grpc-Bus-Cursor": Position(0, 1, 7, 1).encode(),
    }
    assert json.loads(body) == {
        "id": "0b0f6a4e-86c2-4b5c-9a8f-0c2b1f1e9d11",
        "type": "UPDATED",
        "model": "catalog.book",
        "pk": "12",
        "data": {"id": 12, "title": "Dune", "price": "9.50"},
        "changed": ["title"],
        "time": "2026-12-07T23:00:00+00:00",
        "outbox": {"id": 7, "txid": 0},
    }
    back = payload.decode(body, 40)
    assert back.cursor.encode() == payload.StreamPosition(40).encode()
    assert (back.kind, back.object_pk, back.data, back.changed) == (
        2,
        "12",
        {"id": 12, "title": "Dune", "price": "9.50"},
        ["title"],
    )


@pytest.mark.parametrize("body", [b"not json", b"{}", json.dumps({"type": "MOVED"}).encode()])
def test_a_foreign_message_is_refused(body):
    with pytest.raises(payload.BadMessage, match="message 3"):
        payload.decode(body, 3)


def test_stream_cursors_and_the_other_backends_cursors():
    assert payload.decode_cursor(payload.StreamPosition(41).encode()).sequence == 41
    with pytest.raises(ValueError, match="database backend"):
        payload.decode_cursor(Position(0, 1, 5, 1).encode())
    for text in ("", "garbage", "bjEuLTE", "bjEu"):  # "n1.-1", "n1."
        with pytest.raises(ValueError, match="not a cursor"):
            payload.decode_cursor(text)
    with pytest.raises(db_cursor.BadCursor, match="NATS backend"):
        db_cursor.decode(payload.StreamPosition(3).encode())
