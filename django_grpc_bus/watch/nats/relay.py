"""Relay the outbox to JetStream: every watched model's events, in commit order, once.

One relay thread per server process, from when the first server of the process binds its
services until every server of the process has stopped (it relays while a server drains: the
calls still in flight may write). Each round, per watched model whose events may have changed,
it asks the stream for the subject's last message: its ``Grpc-Bus-Cursor`` header is the
outbox position up to which everything is published (with no message yet, the outbox's start).
It reads the outbox after that position (:func:`~django_grpc_bus.watch.reading.read_after`:
never past a transaction still running) and publishes each event in order, each expecting the
subject's last sequence to be the previous one's (``Nats-Expected-Last-Subject-Sequence``) and
carrying the event's id as ``Nats-Msg-Id``.

So several relays (``--workers``, replicas) may run at once: the first to publish an event
stores it; another's copy is refused (a wrong last sequence: its round ends, and the next one
starts from the stream's last message) or dropped as a duplicate (within the duplicate window).
Nothing is stored twice or out of order, however long a relay stalled. A publish that fails
leaves the rest for the next round: nothing is skipped, and the outbox keeps every event for
``WATCH_RETENTION`` while NATS is away. An event too big for NATS (its ``max_payload``, 1 MB by
default) is published without its row (``"data": null``): ``Watch`` reads the row from the
database then.
"""

from __future__ import annotations

import logging
import threading
import weakref
from dataclasses import dataclass
from typing import Any

from django.apps import apps
from django.db import close_old_connections, connections

from django_grpc_bus.watch import cursor as cursors
from django_grpc_bus.watch.nats.backend import NatsConfig, nats_config
from django_grpc_bus.watch.nats.bridge import Bridge, NatsUnavailable, bridge_for
from django_grpc_bus.watch.nats.payload import CURSOR, encode
from django_grpc_bus.watch.notifier import Waiter, notifier
from django_grpc_bus.watch.reading import (
    BATCH,
    Position,
    Row,
    database_alias,
    is_postgresql,
    now_ms,
    read_after,
)
from django_grpc_bus.watch.recording import label_of, watched_models
from django_grpc_bus.watch.settings import retention

logger = logging.getLogger("django_grpc_bus.watch")

IDLE_RECHECK = 5.0  # seconds: a round of every model even without a wake-up
HELD_BACK_RETRY = 0.1  # seconds: events wait behind a transaction still running
RETRY_AFTER = 1.0  # seconds, after NATS or the database failed
PUBLISH_TIMEOUT = 5.0  # seconds, per event
WRONG_LAST_SEQUENCE = 10071  # JetStream: another relay published first
STREAM_NOT_FOUND = 10059
FOREIGN_LOOKBACK = 1000  # messages: how far back a foreign last message is looked past


def subject_of(config: NatsConfig, label: str) -> str:
    model = apps.get_model(label)
    return config.subject(model._meta.app_label, model._meta.object_name or model.__name__)


@dataclass
class Last:
    """The subject's last message in the stream: its sequence and outbox cursor (None: none)."""

    sequence: int
    cursor: str | None


class Held(Exception):
    """A stranger's message is last on the subject and none of ours is found: not relayed."""


@dataclass
class Outcome:
    more: bool = False  # a full batch: more may be waiting
    held_back: bool = False  # events wait behind a transaction still running


class Relay:
    def __init__(self, config: NatsConfig) -> None:
        self.config = config
        self.bridge: Bridge = bridge_for(config)
        self._servers: weakref.WeakSet[Any] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._wake: Waiter | None = None
        # Per model: (the stream's last cursor, the position past events too old to send that
        # followed it), so that a round does not read them again.
        self._floors: dict[str, tuple[str | None, Position]] = {}
        # Per subject: (the stream's creation, sequence, cursor) of the last event this relay
        # stored: where a look past a stranger's message starts.
        self._mine: dict[str, tuple[int, int, str]] = {}
        self._held: set[tuple[str, int]] = set()  # (subject, sequence) of strangers reported

    def serve_for(self, traffic: Any) -> None:
        """Run until `traffic`'s server (and every other one it serves for) has stopped."""
        with self._lock:
            self._servers.add(traffic)
            if self._thread is None or not self._thread.is_alive():
                wake = self._wake = Waiter()
                self._thread = threading.Thread(
                    target=self._run, args=(wake,), name="grpc-bus-nats-relay", daemon=True
                )
                self._thread.start()

    def stopped(self, traffic: Any, timeout: float = 5.0) -> None:
        """`traffic`'s server stopped: end the thread (and wait for it) if it was the last."""
        with self._lock:
            self._servers.discard(traffic)
            thread, wake = self._thread, self._wake
            if self._servers or thread is None:
                return
        if wake is not None:
            wake.set()
        if thread is not threading.current_thread():
            thread.join(timeout)

    def _serving(self) -> bool:
        with self._lock:
            if len(self._servers):
                return True
            self._thread = None  # a server bound from now on starts another relay thread
            return False

    def _run(self, wake: Waiter) -> None:
        alias = database_alias()
        labels = [label_of(model) for model in watched_models()]
        for label in labels:
            notifier.add(label, alias, wake)
        told = ""  # the last NATS failure logged
        seen: dict[str, int] = {}  # the notifier's version of each model at its last round
        due = set(labels)  # models to relay in the next round
        try:
            while True:
                wake.event.clear()  # first: a stop from now on is seen below or wakes the wait
                if not self._serving():
                    break
                pause = IDLE_RECHECK
                for label in labels:
                    if notifier.version(label) != seen.get(label):
                        due.add(label)
                for label in sorted(due):
                    seen[label] = notifier.version(label)
                    try:
                        outcome = self.relay_once(alias, label)
                    except NatsUnavailable as exc:
                        if str(exc) != told:  # once per kind of failure, not every second
                            told = str(exc)
                            logger.warning(
                                "Watch relay: %s; trying again every %g s", exc, RETRY_AFTER
                            )
                        pause = RETRY_AFTER
                        break  # NATS is away: every model waits
                    except Exception:
                        logger.exception(
                            "Watch relay of %s failed; trying again in %g s", label, RETRY_AFTER
                        )
                        _close_connections()
                        pause = min(pause, RETRY_AFTER)
                        continue  # the other models go on
                    told = ""
                    due.discard(label)
                    if outcome.more:
                        due.add(label)
                        pause = 0.0
                    elif outcome.held_back:
                        due.add(label)
                        pause = min(pause, HELD_BACK_RETRY)
                if pause:
                    if pause >= IDLE_RECHECK:
                        _close_connections()  # idle: no connection kept (CONN_MAX_AGE or not)
                        if not wake.event.wait(pause):
                            due.update(labels)  # a round of every model now and then
                    else:
                        close_old_connections()
                        wake.event.wait(pause)
        finally:
            for label in labels:
                notifier.remove(label, wake)
            _close_connections()

    def relay_once(self, alias: str, label: str) -> Outcome:
        """Publish the events of `label` not yet in the stream."""
        subject = subject_of(self.config, label)
        try:
            last = self.bridge.call(self._last(subject))
        except Held:
            return Outcome()  # looked at again at the next wake-up or idle round
        position = self._position(alias, label, last)
        read = read_after(alias, label, position)
        oldest = now_ms() - retention().total_seconds() * 1000
        # Events older than the retention are past the stream's max_age: not sent (they would
        # be removed at once); the position past them is kept for the next rounds.
        rows = [row for row in read.rows if row.time.timestamp() * 1000 >= oldest]
        if read.rows and not rows:
            self._floors[label] = (last.cursor, read.position)
            return Outcome(more=len(read.rows) == BATCH, held_back=read.held_back)
        if rows:
            timeout = 10.0 + PUBLISH_TIMEOUT * len(rows)
            if not self.bridge.call(self._publish(subject, label, rows, last.sequence), timeout):
                # Another relay published first: again shortly, from its last message.
                return Outcome(held_back=True)
        return Outcome(more=len(read.rows) == BATCH, held_back=read.held_back)

    def _position(self, alias: str, label: str, last: Last) -> Position:
        text = last.cursor
        floor = self._floors.get(label)
        if floor is not None and floor[0] == text:
            return floor[1]
        return _start(alias) if text is None else cursors.decode(text)

    async def _last(self, subject: str) -> Last:
        """The subject's last message, and the outbox cursor of the last one of ours: a
        message published by someone else (no readable cursor) is looked past."""
        from nats.js.errors import NotFoundError

        js = await self.bridge.jetstream()
        try:
            message = await js.get_last_msg(self.config.stream, subject)
        except NotFoundError as exc:
            if getattr(exc, "err_code", None) == STREAM_NOT_FOUND:
                self.bridge.stream_lost()
                raise NatsUnavailable(f"NATS: the stream {self.config.stream} is gone") from None
            return Last(0, None)
        except Exception as exc:  # a timeout, a lost connection
            raise NatsUnavailable(
                f"NATS: reading the stream's last message failed ({exc})"
            ) from None
        cursor = _our_cursor(message)
        if cursor is None:
            cursor = await self._last_of_ours(js, subject, message.seq)
            if cursor is None:
                if (subject, message.seq) not in self._held:
                    self._held.add((subject, message.seq))
                    logger.error(
                        "Watch relay: the last message on %s (sequence %d) is not an event of "
                        "django-grpc-bus, and none of ours is found before it: its events are "
                        "held (not relayed) until one of ours is last again or it is removed. "
                        "Publish nothing else on these subjects.",
                        subject,
                        message.seq,
                    )
                raise Held(subject)
        return Last(message.seq, cursor)

    async def _last_of_ours(self, js: Any, subject: str, last: int) -> str | None:
        """The outbox cursor of the last message of ours on `subject` up to sequence `last`:
        from the last one this relay stored, forward over the subject's messages; else back
        over the stream's last FOREIGN_LOOKBACK messages."""
        from nats.js.errors import NotFoundError

        mine = self._mine.get(subject)
        if mine is not None and mine[0] == self.bridge.stream_epoch and mine[1] <= last:
            found, sequence = mine[2], mine[1]
            for _ in range(FOREIGN_LOOKBACK):
                try:
                    message = await js.get_msg(
                        self.config.stream, seq=sequence + 1, subject=subject, next=True
                    )
                except NotFoundError:
                    return found
                except Exception as exc:
                    raise NatsUnavailable(f"NATS: reading the stream failed ({exc})") from None
                if message.seq > last:
                    return found
                found = _our_cursor(message) or found
                sequence = message.seq
        for sequence in range(last - 1, max(last - FOREIGN_LOOKBACK, 0), -1):
            try:
                message = await js.get_msg(self.config.stream, seq=sequence)
            except NotFoundError:
                continue  # removed (max_age, deleted)
            except Exception as exc:
                raise NatsUnavailable(f"NATS: reading the stream failed ({exc})") from None
            if message.subject == subject:
                cursor = _our_cursor(message)
                if cursor is not None:
                    return cursor
        return None

    async def _publish(self, subject: str, label: str, rows: list[Row], after: int) -> bool:
        """Publish `rows` in order, the first expecting `after` as the subject's last
        sequence; stops quietly (False) where another relay published first."""
        from nats.errors import MaxPayloadError
        from nats.js.errors import APIError, NoStreamResponseError

        js = await self.bridge.jetstream()
        for row in rows:
            body, headers = encode(row, label)
            headers["Nats-Expected-Last-Subject-Sequence"] = str(after)
            try:
                try:
                    if _size(body, headers) > self.bridge.max_payload():
                        raise MaxPayloadError  # (nats-py counts the body alone; NATS both)
                    ack = await js.publish(subject, body, headers=headers, timeout=PUBLISH_TIMEOUT)
                except MaxPayloadError:
                    logger.warning(
                        "Watch relay: event %s of %s is bigger than NATS's max_payload; "
                        "published without its row (Watch reads the row from the database)",
                        row.uid,
                        label,
                    )
                    body, _ = encode(row, label, with_data=False)
                    ack = await js.publish(subject, body, headers=headers, timeout=PUBLISH_TIMEOUT)
            except APIError as exc:
                if exc.err_code == WRONG_LAST_SEQUENCE:
                    return False  # another relay is ahead: the next round starts from its message
                if exc.err_code == STREAM_NOT_FOUND:
                    self.bridge.stream_lost()
                raise NatsUnavailable(f"NATS: publishing to {subject} failed ({exc})") from None
            except NoStreamResponseError:
                self.bridge.stream_lost()
                raise NatsUnavailable(
                    f"NATS: no stream answered on {subject} (is {self.config.stream} gone?)"
                ) from None
            except Exception as exc:
                raise NatsUnavailable(f"NATS: publishing to {subject} failed ({exc})") from None
            if ack.duplicate:
                return False  # another relay's copy: it is ahead
            self._mine[subject] = (self.bridge.stream_epoch, ack.seq, headers[CURSOR])
            after = ack.seq
        return True


def _size(body: bytes, headers: dict[str, str]) -> int:
    """What NATS counts against max_payload: the headers as sent, and the body."""
    head = len("NATS/1.0\r\n\r\n") + sum(len(k) + len(v) + 4 for k, v in headers.items())
    return head + len(body)


def _our_cursor(message: Any) -> str | None:
    """The outbox cursor a message of ours carries; None for someone else's."""
    text = (message.headers or {}).get(CURSOR)
    if text is None:
        return None
    try:
        cursors.decode(text)
    except cursors.BadCursor:
        return None
    return str(text)


def _start(alias: str) -> Position:
    """The outbox's start: before every event kept."""
    return Position(0, 0, 0, now_ms()) if is_postgresql(alias) else Position(0, 1, 0, now_ms())


def _close_connections() -> None:
    try:
        connections.close_all()
    except Exception:  # a database still down: closed again next time
        logger.debug("Closing the relay's connections failed", exc_info=True)


_relays: dict[NatsConfig, Relay] = {}
_relays_lock = threading.Lock()


def relay_for(config: NatsConfig) -> Relay:
    with _relays_lock:
        found = _relays.get(config)
        if found is None:
            found = _relays[config] = Relay(config)
        return found


def start_relay(traffic: Any) -> Relay | None:
    """With ``WATCH_BACKEND`` NATS and a watched model: relay until `traffic`'s server stops."""
    config = nats_config()
    if config is None or not watched_models():
        return None
    relay = relay_for(config)
    relay.serve_for(traffic)
    return relay


def stop_relay(traffic: Any) -> None:
    """`traffic`'s server stopped: the relay ends with the process's last server."""
    with _relays_lock:
        relays = list(_relays.values())
    for relay in relays:
        relay.stopped(traffic)
