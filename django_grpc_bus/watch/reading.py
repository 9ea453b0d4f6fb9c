"""Read the outbox: the events of one model after a position, in commit order.

On PostgreSQL a read first takes the oldest transaction still running (``xmin`` of the current
snapshot), then reads only events of transactions below it: those have all ended, so any of
them that committed is visible, and no event can later appear below a position handed out (see
:mod:`.cursor`). A read's events are in id order (two concurrent transactions' events may
interleave; one row's changes keep their commit order, which its row lock gives).
Elsewhere the database lets one transaction write at a time (SQLite), so ids are in commit
order and a read is ``id > last``.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from django.db import connections, router

from django_grpc_bus.models import WatchEvent, WatchPruned
from django_grpc_bus.watch.cursor import Position

BATCH = 500


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class Row:
    """One outbox row as read."""

    id: int
    uid: str
    kind: int
    object_pk: str
    data: Any
    changed: list[str] | None
    txid: int
    time: Any
    cursor: Position  # the position right after this event


@dataclass(frozen=True)
class Read:
    rows: tuple[Row, ...]
    position: Position  # after the last row (or where the reader was, if none)
    held_back: bool  # committed events wait behind an older transaction still running
    full: bool = False  # as many rows as asked for: more may follow at once (else caught up)
    # The rows as event messages, by message class: built once for the watchers sharing them.
    events: dict[Any, list[Any]] = dataclasses.field(default_factory=dict, compare=False)


def database_alias() -> str:
    return router.db_for_read(WatchEvent)


def is_postgresql(alias: str) -> bool:
    return connections[alias].vendor == "postgresql"


def _xmin(cursor: Any) -> int:
    cursor.execute("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
    return int(cursor.fetchone()[0])


def current_position(alias: str) -> Position:
    """The position after every event committed so far ("from now")."""
    with connections[alias].cursor() as cursor:
        if is_postgresql(alias):
            w = _xmin(cursor)
            return Position(w, w, 0, now_ms())
        table = connections[alias].ops.quote_name(WatchEvent._meta.db_table)
        cursor.execute(f"SELECT MAX(id) FROM {table}")
        return Position(0, 1, cursor.fetchone()[0] or 0, now_ms())


def pruned_after(alias: str, position: Position) -> bool:
    """Whether pruning removed events after `position` (which it would then have missed).

    :func:`~.recording.prune_events` records the outermost ``(txid, id)`` of what it removed
    (:class:`WatchPruned`), in the transaction of the delete; the events a position has not
    covered are every event at or past one of its corners, so the answer is exact: an old
    cursor whose later events are all kept resumes.
    """
    connection = connections[alias]
    table = connection.ops.quote_name(WatchPruned._meta.db_table)
    with connection.cursor() as cursor:
        # Not covered (see Position.covers): txid >= hi, or txid >= lo and id > last.
        cursor.execute(
            f"SELECT EXISTS (SELECT 1 FROM {table} WHERE txid >= %s "
            "OR (txid >= %s AND event_id > %s))",
            [position.hi, position.lo, position.last],
        )
        return bool(cursor.fetchone()[0])


def _decode_json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def read_after(alias: str, label: str, position: Position, limit: int = BATCH) -> Read:
    """Up to `limit` events of model `label` after `position`, in order."""
    connection = connections[alias]
    table = connection.ops.quote_name(WatchEvent._meta.db_table)
    select = f"SELECT id, uid, kind, object_pk, data, changed, txid, time FROM {table} "
    made = now_ms()
    with connection.cursor() as cursor:
        if connection.vendor != "postgresql":
            # txid is always 0 here: with it the (model, txid, id) index gives the range in
            # order (without it SQLite scans every event of the model, then sorts).
            cursor.execute(
                select + "WHERE model = %s AND txid = 0 AND id > %s ORDER BY id LIMIT %s",
                [label, position.last, limit],
            )
            rows = [_row(r, Position(0, 1, r[0], made), connection) for r in cursor.fetchall()]
            # Nothing new: the same place, known complete up to now (a BOOKMARK says so).
            after = rows[-1].cursor if rows else dataclasses.replace(position, made_ms=made)
            return Read(tuple(rows), after, False, len(rows) >= limit)
        w = _xmin(cursor)  # before the read: every transaction below it has ended
        lo, hi = position.lo, position.hi
        cursor.execute(
            select + "WHERE model = %s AND ((txid >= %s AND txid < %s AND id > %s) "
            "OR (txid >= %s AND txid < %s)) ORDER BY txid >= %s, id LIMIT %s",
            [label, lo, hi, position.last, hi, w, hi, limit],
        )
        found = cursor.fetchall()
        rows = [
            _row(r, Position(lo, hi, r[0], made) if r[6] < hi else Position(hi, w, r[0], made))
            for r in found
        ]
        if len(rows) < limit:
            # Everything below w is delivered: the last event's position can say so.
            after = Position(w, w, 0, made)
            if rows:
                last = rows[-1]
                rows[-1] = dataclasses.replace(last, cursor=after)
            cursor.execute(
                f"SELECT EXISTS (SELECT 1 FROM {table} WHERE model = %s AND txid >= %s)",
                [label, w],
            )
            held_back = bool(cursor.fetchone()[0])
        else:
            after, held_back = rows[-1].cursor, False
        return Read(tuple(rows), after, held_back, len(rows) >= limit)


def _row(record: tuple, cursor: Position, connection: Any = None) -> Row:
    id_, uid, kind, object_pk, data, changed, txid, when = record
    if isinstance(when, str):  # SQLite's text
        when = connection.ops.convert_datetimefield_value(when, None, connection)
    data, changed = _decode_json(data), _decode_json(changed)
    uid = str(uuid.UUID(str(uid)))  # SQLite keeps it as 32 hex digits
    return Row(id_, uid, kind, object_pk, data, changed, txid, when, cursor)


class SharedReads:
    """One read per (model, position, wake-up count) in a process, however many ask for it.

    Watchers that are caught up sit at the same position, so after a wake-up they all ask the
    same question: the first asks the database, the others take its answer. An answer stands
    until the next wake-up of its model (which changes the key), for at most ``KEEP`` seconds;
    one with events held back, ``HELD`` seconds (it must be asked again soon).
    """

    KEEP = 1.0
    HELD = 0.05

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reads: dict[tuple[Any, ...], tuple[float, Future[Read]]] = {}

    def _stands(self, made: float, future: Future[Read], now: float) -> bool:
        if not future.done():
            return True
        if future.exception() is not None:
            return False
        return now - made < (self.HELD if future.result().held_back else self.KEEP)

    def peek(self, alias: str, label: str, position: Position, version: int) -> Read | None:
        """The standing answer to this question if one is ready, without a database query."""
        key = (alias, label, position.key(), version)
        with self._lock:
            found = self._reads.get(key)
            if found is None or not found[1].done() or not self._stands(*found, time.monotonic()):
                return None
        return found[1].result()

    def read(self, alias: str, label: str, position: Position, version: int) -> Read:
        key = (alias, label, position.key(), version)
        now = time.monotonic()
        with self._lock:
            found = self._reads.get(key)
            if found is not None and self._stands(*found, now):
                mine, future = False, found[1]
            else:
                for old in [k for k, (t, f) in self._reads.items() if f.done() and now - t > 2]:
                    del self._reads[old]
                mine, future = True, Future()
                self._reads[key] = (now, future)
        if mine:
            try:
                future.set_result(read_after(alias, label, position))
            except BaseException as exc:
                future.set_exception(exc)
        return future.result()


shared_reads = SharedReads()
