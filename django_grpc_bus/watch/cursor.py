"""The opaque resume position of a Watch stream.

A position says which events were delivered before it. On PostgreSQL events are grouped by the
id of the transaction that wrote them (``txid``): a position ``(lo, hi, last)`` covers every
event with ``txid < lo``, and those with ``lo <= txid < hi`` and ``id <= last``. A reader only
ever delivers events of transactions below the oldest one still running (the snapshot's
``xmin``), so an event whose transaction commits late is never skipped, whatever its sequence
value. Elsewhere (SQLite: one writer at a time, so ids are in commit order) ``txid`` is 0 and the
position is ``(0, 1, last)``: every event with ``id <= last``.

The text also carries when the position was made, so that a position older than
``WATCH_RETENTION`` is refused (OUT_OF_RANGE) rather than resumed with a gap.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

PREFIX = "w1"


class BadCursor(ValueError):
    """A ``since`` that is not a cursor this server made."""


@dataclass(frozen=True)
class Position:
    lo: int
    hi: int
    last: int
    made_ms: int  # when the position was made, in ms since the epoch

    def covers(self, txid: int, event_id: int) -> bool:
        """Whether an event was delivered before this position."""
        return txid < self.lo or (txid < self.hi and event_id <= self.last)

    def encode(self) -> str:
        text = f"{PREFIX}.{self.lo}.{self.hi}.{self.last}.{self.made_ms}"
        return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")

    def key(self) -> tuple[int, int, int]:
        return (self.lo, self.hi, self.last)


def decode(text: str) -> Position:
    """The position `text` encodes, or BadCursor."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise BadCursor("not a cursor of this server") from None
    if raw.startswith("n1."):
        raise BadCursor(
            "a cursor of the NATS backend (WATCH_BACKEND), and this server reads Watch from "
            "its database: watch again with snapshot: true"
        )
    try:
        prefix, *numbers = raw.split(".")
        lo, hi, last, made_ms = (int(n) for n in numbers)
    except ValueError:
        raise BadCursor("not a cursor of this server") from None
    if prefix != PREFIX or min(lo, hi, last, made_ms) < 0 or lo > hi:
        raise BadCursor("not a cursor of this server")
    return Position(lo, hi, last, made_ms)
