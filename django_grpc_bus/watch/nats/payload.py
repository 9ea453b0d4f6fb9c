"""What the relay publishes, and the cursor of an event read back from the stream.

A message on ``<prefix>.<app_label>.<Model>`` (the documented format, for consumers that
subscribe to NATS directly):

- headers: ``Nats-Msg-Id`` (the event's id: JetStream drops a second copy within the stream's
  duplicate window), ``Grpc-Bus-Cursor`` (the outbox position after the event: where the relay
  resumes);
- body, JSON: ``id`` (the event's id, a UUID), ``type`` (``CREATED``, ``UPDATED``, ``DELETED``),
  ``model`` (``catalog.book``), ``pk`` (the primary key as text), ``data`` (the row's column
  values by attname, as recorded at the change; before a delete, the row as it was), ``changed``
  (the fields an update changed, or null when not known), ``time`` (ISO 8601, UTC) and
  ``outbox`` (``{"id": ..., "txid": ...}``: the event's place in the producer's outbox).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from dataclasses import dataclass

from django_grpc_bus.models import WatchEvent
from django_grpc_bus.watch.reading import Row

MSG_ID = "Nats-Msg-Id"
CURSOR = "Grpc-Bus-Cursor"
TYPES = {
    WatchEvent.CREATED: "CREATED",
    WatchEvent.UPDATED: "UPDATED",
    WatchEvent.DELETED: "DELETED",
}
KINDS = {name: kind for kind, name in TYPES.items()}
PREFIX = "n1"


class BadMessage(ValueError):
    """A message on the stream that the relay did not write."""


def encode(row: Row, label: str, *, with_data: bool = True) -> tuple[bytes, dict[str, str]]:
    """The body and headers of `row`'s message (`with_data` False: ``"data": null``, for an
    event too big for NATS)."""
    body = {
        "id": row.uid,
        "type": TYPES[row.kind],
        "model": label,
        "pk": row.object_pk,
        "data": row.data if with_data else None,
        "changed": row.changed,
        "time": row.time.astimezone(dt.timezone.utc).isoformat(),
        "outbox": {"id": row.id, "txid": row.txid},
    }
    headers = {MSG_ID: row.uid, CURSOR: row.cursor.encode()}
    return json.dumps(body, separators=(",", ":")).encode(), headers


def decode(data: bytes, sequence: int, epoch: int = 0, skip: str = "") -> Row:
    """The event a message at stream sequence `sequence` carries (its cursor: that sequence)."""
    try:
        body = json.loads(data)
        outbox = body["outbox"]
        if body["data"] is not None and not isinstance(body["data"], dict):
            raise TypeError("data is not an object")
        return Row(
            id=int(outbox["id"]),
            uid=str(body["id"]),
            kind=KINDS[body["type"]],
            object_pk=str(body["pk"]),
            data=body["data"],
            changed=body["changed"],
            txid=int(outbox["txid"]),
            time=dt.datetime.fromisoformat(body["time"]),
            cursor=StreamPosition(sequence, epoch, skip),  # type: ignore[arg-type]
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise BadMessage(f"message {sequence} is not a django-grpc-bus event ({exc})") from None


@dataclass(frozen=True)
class StreamPosition:
    """A place in the stream: every message up to stream sequence `sequence` was delivered.
    `epoch`: which making of the stream (a number from its creation time; 0 if not known).
    `skip`: the outbox events committed before the call started (from now, or shown by its
    snapshot), which a relay may publish after `sequence` and a resumed call must leave out
    too: ``i<id>`` (ids up to it; SQLite) or ``p<xmin>-<xmax>-<running, _-separated>`` (a
    PostgreSQL snapshot)."""

    sequence: int
    epoch: int = 0
    skip: str = ""

    def encode(self) -> str:
        text = f"{PREFIX}.{self.sequence}.{self.epoch}"
        if self.skip:
            text += f".{self.skip}"
        return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def skip_of_ids(last: int) -> str:
    return f"i{last}"


MAX_RUNNING = 50  # running transactions a cursor names; with more, it names none


def skip_of_snapshot(xmin: int, xmax: int, running: frozenset[int]) -> str:
    if len(running) > MAX_RUNNING:
        # A short cursor: only what committed below xmin is left out; a resumed call may send
        # again an event the first one left out (at least once).
        return f"p{xmin}-{xmin}-"
    return f"p{xmin}-{xmax}-{'_'.join(str(x) for x in sorted(running))}"


def parse_skip(text: str) -> tuple[int | None, tuple[int, int, frozenset[int]] | None]:
    """(last id, None) or (None, (xmin, xmax, running)); ValueError if `text` is neither."""
    if text.startswith("i") and text[1:].isdigit():
        return int(text[1:]), None
    if text.startswith("p"):
        xmin, xmax, running = text[1:].split("-")
        xip = frozenset(int(x) for x in running.split("_") if x)
        return None, (int(xmin), int(xmax), xip)
    raise ValueError(text)


def decode_cursor(text: str) -> StreamPosition:
    """The stream position `text` encodes; ValueError when it is not one."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ValueError("not a cursor of this server") from None
    prefix, _, rest = raw.partition(".")
    number, _, rest = rest.partition(".")
    epoch, _, skip = rest.partition(".")
    if prefix == "w1":
        raise ValueError(
            "a cursor of the database backend, and this server reads Watch from NATS "
            "(WATCH_BACKEND): watch again with snapshot: true"
        )
    if prefix != PREFIX or not number.isdigit() or not epoch.isdigit():
        raise ValueError("not a cursor of this server")
    if skip:
        try:
            parse_skip(skip)
        except ValueError:
            raise ValueError("not a cursor of this server") from None
    return StreamPosition(int(number), int(epoch), skip)
