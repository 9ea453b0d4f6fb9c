"""Relay the outbox to JetStream: every watched model's events, in commit order, once.

One relay thread per server process (started when the first server of the process binds its
services, ended when every server of the process drains). Each round, per watched model, it asks
the stream for the subject's last message: its ``Grpc-Bus-Cursor`` header is the outbox position
everything up to which is published (with no message yet, the outbox's start). It reads the
outbox after that position (:func:`~django_grpc_bus.watch.reading.read_after`: never past a
transaction still running) and publishes each event, waiting for JetStream's acknowledgement
before sending the next, with ``Nats-Msg-Id`` = the event's id.

So several relays (``--workers``, replicas) may run at once: each publishes in order, the first
copy of an event is stored and the others are dropped as duplicates (within the stream's
duplicate window, 2 minutes; and since each round starts from the stream's last message, a relay
that fell behind catches up from there rather than publishing old events again). A publish that
fails leaves the rest of the round for the next one: nothing is skipped, and the outbox keeps
every event for ``WATCH_RETENTION`` while NATS is away.
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import Any

from django.apps import apps
from django.db import close_old_connections, connections

from django_grpc_bus.watch import cursor as cursors
from django_grpc_bus.watch.nats.bridge import Bridge, NatsUnavailable, bridge_for
from django_grpc_bus.watch.nats.config import NatsConfig, nats_config
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

IDLE_RECHECK = 5.0  # seconds: a round even without a wake-up
HELD_BACK_RETRY = 0.1  # seconds: events wait behind a transaction still running
RETRY_AFTER = 1.0  # seconds, after NATS or the database failed


def subject_of(config: NatsConfig, label: str) -> str:
    model = apps.get_model(label)
    return config.subject(model._meta.app_label, model._meta.object_name or model.__name__)


class Relay:
    def __init__(self, config: NatsConfig) -> None:
        self.config = config
        self.bridge: Bridge = bridge_for(config)
        self._servers: weakref.WeakSet[Any] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.published = 0  # events this relay stored (duplicates not counted)

    def serve_for(self, traffic: Any) -> None:
        """Run while `traffic`'s server (or another tracked one) serves."""
        with self._lock:
            self._servers.add(traffic)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="grpc-bus-nats-relay", daemon=True
                )
                self._thread.start()

    def _serving(self) -> bool:
        with self._lock:
            if any(not traffic.draining for traffic in list(self._servers)):
                return True
            self._thread = None  # a server bound from now on starts another relay thread
            return False

    def _run(self) -> None:
        alias = database_alias()
        labels = [label_of(model) for model in watched_models()]
        wake = Waiter()
        for label in labels:
            notifier.add(label, alias, wake)
        try:
            while self._serving():
                wake.event.clear()
                pause = IDLE_RECHECK
                for label in labels:
                    try:
                        more, held_back = self.relay_once(alias, label)
                    except NatsUnavailable as exc:
                        logger.warning("Watch relay: %s; trying again in %g s", exc, RETRY_AFTER)
                        pause = RETRY_AFTER
                        break
                    except Exception:
                        logger.exception("Watch relay failed; trying again in %g s", RETRY_AFTER)
                        _close_connections()
                        pause = RETRY_AFTER
                        break
                    if more:
                        pause = 0.0
                    elif held_back:
                        pause = min(pause, HELD_BACK_RETRY)
                if pause:
                    close_old_connections()
                    wake.event.wait(pause)
        finally:
            for label in labels:
                notifier.remove(label, wake)
            _close_connections()

    def relay_once(self, alias: str, label: str) -> tuple[bool, bool]:
        """Publish the events of `label` not yet in the stream: (a full batch was published, so
        more may be waiting; events are held back behind a running transaction)."""
        subject = subject_of(self.config, label)
        published = self.bridge.call(self._last_cursor(subject))
        position = _start(alias) if published is None else _decoded(published, alias)
        read = read_after(alias, label, position)
        if read.rows:
            oldest = now_ms() - retention().total_seconds() * 1000
            # Events older than the retention are past the stream's max_age: not sent again.
            rows = [row for row in read.rows if row.time.timestamp() * 1000 >= oldest]
            if rows:
                self.published += self.bridge.call(self._publish(subject, label, rows))
        return len(read.rows) == BATCH, read.held_back

    async def _last_cursor(self, subject: str) -> str | None:
        from nats.js.errors import NotFoundError

        js = await self.bridge.jetstream()
        try:
            message = await js.get_last_msg(self.config.stream, subject)
        except NotFoundError:
            return None
        except Exception as exc:  # a timeout, a lost connection
            raise NatsUnavailable(
                f"NATS: reading the stream's last message failed ({exc})"
            ) from None
        headers = message.headers or {}
        return headers.get(CURSOR)

    async def _publish(self, subject: str, label: str, rows: list[Row]) -> int:
        js = await self.bridge.jetstream()
        stored = 0
        for row in rows:
            body, headers = encode(row, label)
            try:
                ack = await js.publish(
                    subject, body, headers=headers, stream=self.config.stream, timeout=5.0
                )
            except Exception as exc:
                raise NatsUnavailable(f"NATS: publishing to {subject} failed ({exc})") from None
            stored += 0 if ack.duplicate else 1
        return stored


def _start(alias: str) -> Position:
    """The outbox's start: before every event kept."""
    return Position(0, 0, 0, now_ms()) if is_postgresql(alias) else Position(0, 1, 0, now_ms())


def _decoded(text: str, alias: str) -> Position:
    try:
        return cursors.decode(text)
    except cursors.BadCursor:
        logger.warning("Watch relay: the stream's last message has no outbox cursor; from start")
        return _start(alias)


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
    """With ``WATCH_BACKEND`` NATS and a watched model: relay while `traffic`'s server serves."""
    config = nats_config()
    if config is None or not watched_models():
        return None
    relay = relay_for(config)
    relay.serve_for(traffic)
    return relay
