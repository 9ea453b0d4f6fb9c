"""The ``Watch`` RPC served from JetStream (``WATCH_BACKEND`` NATS).

Each call reads its model's subject through an ordered push consumer of its own (JetStream
resends what a gap lost; the call opens it again after NATS reconnects), starting after the
cursor it resumes from, and deletes it when the call ends. A snapshot is read from the database
as with the database backend; the stream's last sequence, taken before it, is where the changes
start, and the events that the snapshot already showed (their outbox transaction was visible to
it) are left out: no gap, no duplicate. A call from now leaves out the events committed before
it started in the same way.

A cursor is a stream sequence and the stream's creation time. A resumed call whose next message
the stream no longer holds (older than ``max_age`` = ``WATCH_RETENTION``), or whose stream was
deleted and made again since, is OUT_OF_RANGE. An idle call's BOOKMARKs move to the stream's
last sequence once its consumer has nothing pending, so a quiet model's cursor stays in range.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
from django.db import close_old_connections, connections, transaction

from django_grpc_bus.errors import GrpcError
from django_grpc_bus.watch.nats.backend import NatsConfig
from django_grpc_bus.watch.nats.bridge import (
    Bridge,
    NatsUnavailable,
    StreamConflict,
    bridge_for,
)
from django_grpc_bus.watch.nats.payload import (
    BadMessage,
    StreamPosition,
    decode,
    decode_cursor,
    parse_skip,
    skip_of_ids,
    skip_of_snapshot,
)
from django_grpc_bus.watch.nats.relay import subject_of
from django_grpc_bus.watch.notifier import Waiter, notifier
from django_grpc_bus.watch.reading import Position, Row, current_position, is_postgresql
from django_grpc_bus.watch.streams import (
    BOOKMARK,
    IDLE_RECHECK,
    WatchStream,
    _data_cached,
    _pool,
    _refuse_if_stopping,
    bookmark_interval,
)

MAX_BUFFERED = 2000  # messages a call holds before it stops its consumer (a slow client)
OPEN_TIMEOUT = 10.0  # seconds
CONSUMER_IDLE = 30.0  # seconds: NATS drops a consumer left behind (a process killed)


class Feed:
    """One call's ordered consumer: the messages it pushed and not yet taken."""

    def __init__(self, bridge: Bridge, config: NatsConfig, subject: str, waiter: Waiter) -> None:
        self.bridge = bridge
        self.config = config
        self.subject = subject
        self.waiter = waiter
        self.items: collections.deque[Any] = collections.deque()
        self.full = False  # the consumer was stopped: reopen after the taken messages
        self._subscription: Any = None
        self.generation = -1  # the bridge's reconnection count when the consumer was opened
        self.epoch = 0  # the stream's creation time when it was opened
        self._closing: asyncio.Future[None] | None = None

    async def open(self, start: int) -> None:
        """Deliver the subject's messages from stream sequence `start` on."""
        from nats.js.api import ConsumerConfig, DeliverPolicy

        js = await self.bridge.jetstream()
        self.generation = self.bridge.generation
        self.epoch = self.bridge.stream_epoch
        self.bridge.on_reconnect(self)

        async def arrived(message: Any) -> None:
            if self.full:
                return
            woken = bool(self.items)  # a wake-up is pending while anything is not taken
            self.items.append(message)
            if len(self.items) >= MAX_BUFFERED:
                # A slow client: stop the consumer; the call reopens it after what it took.
                self.full = True
                self._closing = asyncio.ensure_future(self.close())
            if not woken:
                self.waiter.set()

        try:
            self._subscription = await js.subscribe(
                self.subject,
                stream=self.config.stream,
                cb=arrived,
                ordered_consumer=True,
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                config=ConsumerConfig(opt_start_seq=max(start, 1)),
                inactive_threshold=CONSUMER_IDLE,
            )
        except NatsUnavailable:
            raise
        except Exception as exc:
            raise NatsUnavailable(f"NATS: subscribing to {self.subject} failed ({exc})") from None

    def reconnected(self) -> None:
        self.waiter.set()

    def stale(self) -> bool:
        """Whether the consumer must be opened again: stopped (a slow client) with every
        message taken, or NATS reconnected since it was opened."""
        return (self.full and not self.items) or self.generation != self.bridge.generation

    def stream_remade(self) -> bool:
        """Whether the stream was deleted and made again since the consumer was opened."""
        return self.epoch != self.bridge.stream_epoch

    async def reopen(self, start: int) -> None:
        """A new consumer from `start`; what the old one pushed and was not taken is dropped
        (the new one sends it again)."""
        await self.close()
        self.items.clear()
        self.full = False
        await self.open(start)

    async def close(self) -> None:
        subscription, self._subscription = self._subscription, None
        if subscription is None:
            return
        try:
            await subscription.unsubscribe()
            # Not left on the server for CONSUMER_IDLE (its name changes when nats-py resets it).
            await asyncio.wait_for(
                self.bridge._js.delete_consumer(self.config.stream, subscription._consumer), 2.0
            )
        except Exception:  # the connection or the consumer is gone: the server drops it itself
            pass

    async def settled(self, taken: int) -> int | None:
        """The stream's last sequence if the subject has no message after `taken` (the last
        one the call took) up to it, else None. (The stream's last first: a message of the
        subject stored after it is then seen as the subject's last.)"""
        from nats.js.errors import NotFoundError

        js = await self.bridge.jetstream()
        try:
            last = (await js.stream_info(self.config.stream)).state.last_seq
            try:
                subject_last = (await js.get_last_msg(self.config.stream, self.subject)).seq
            except NotFoundError:
                subject_last = 0
        except Exception:
            return None
        return int(last) if subject_last <= taken else None

    def take(self) -> list[Any]:
        taken = []
        while self.items:
            taken.append(self.items.popleft())
        return taken


async def _bounds(bridge: Bridge, config: NatsConfig) -> tuple[int, int, int]:
    """The stream's (first, last) sequence and creation time."""
    js = await bridge.jetstream()
    try:
        info = await js.stream_info(config.stream)
    except Exception as exc:
        raise NatsUnavailable(f"NATS: reading stream {config.stream} failed ({exc})") from None
    return info.state.first_seq, info.state.last_seq, bridge.stream_epoch


class NatsWatchStream(WatchStream):
    """A Watch call whose changes come from the stream."""

    def __init__(self, service: Any, request: Any, config: NatsConfig) -> None:
        super().__init__(service, request)
        self.config = config
        self.bridge = bridge_for(config)
        self.subject = subject_of(config, self.label)
        self.sequence = 0  # every message up to it is delivered
        self.epoch = 0
        # SQLite: outbox events the call must not send (committed before it started, or shown
        # by its snapshot); PostgreSQL uses seen_in_snapshot (the snapshot's transactions).
        self.before: Position | None = None
        self.skip = ""  # the same, as carried in cursors (payload.StreamPosition)

    def start(self) -> list[Any]:
        since, snapshot = self.check_request()
        first, last, self.epoch = self.bridge.call(_bounds(self.bridge, self.config))
        if since:
            self._resume(since, first, last)
            return []
        self.sequence = last
        if not snapshot:
            self._exclude_committed()
            return []
        events = self._snapshot()  # PostgreSQL: seen_in_snapshot says what it showed
        if not is_postgresql(self.alias):
            self.before = self.position
        self._note_skip()
        mark = self.cursor()
        for event in events:
            event.cursor = mark
        return events

    def _resume(self, since: str, first: int, last: int) -> None:
        try:
            position = decode_cursor(since)
        except ValueError as exc:
            raise GrpcError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"since is {exc}: pass the cursor of an event this server sent, or leave it empty.",
                [("since", str(exc))],
            ) from None
        self.sequence = position.sequence
        if position.skip:  # what the first call of this watch left out, left out again
            last_id, seen = parse_skip(position.skip)
            if last_id is not None:
                self.before = Position(0, 1, last_id, 0)
            else:
                self.seen_in_snapshot = seen
            self.skip = position.skip
        if position.epoch and self.epoch and position.epoch != self.epoch:
            why = "the stream was deleted and made again since"
        elif self.sequence + 1 < first:
            why = "the stream no longer holds the events after it (WATCH_RETENTION)"
        elif self.sequence > last:
            why = "the stream was reset since (it ends before it)"
        else:
            return
        raise GrpcError(
            grpc.StatusCode.OUT_OF_RANGE,
            f"since is out of range: {why}. Watch again with snapshot: true.",
            [("since", why)],
        )

    def _exclude_committed(self) -> None:
        """From now: leave out events committed before now that a relay publishes later."""
        if not is_postgresql(self.alias):
            self.before = current_position(self.alias)
        else:
            with (
                transaction.atomic(using=self.alias),
                connections[self.alias].cursor() as cursor,
            ):
                cursor.execute("SELECT pg_current_snapshot()::text")
                xmin, xmax, running = cursor.fetchone()[0].split(":")
            xip = frozenset(int(x) for x in running.split(",") if x)
            self.seen_in_snapshot = (int(xmin), int(xmax), xip)
        self._note_skip()

    def _note_skip(self) -> None:
        """Carry what this call leaves out in its cursors, for the calls that resume it."""
        if self.before is not None:
            self.skip = skip_of_ids(self.before.last)
        elif self.seen_in_snapshot is not None:
            self.skip = skip_of_snapshot(*self.seen_in_snapshot)

    def cursor(self) -> str:
        return StreamPosition(self.sequence, self.epoch, self.skip).encode()

    def _shown_in_snapshot(self, row: Row) -> bool:
        """Whether the row's event committed before the call started (from now) or was shown
        by its snapshot."""
        if self.before is not None and self.before.covers(row.txid, row.id):
            return True
        return super()._shown_in_snapshot(row)

    def rows(self, messages: list[Any]) -> list[Row]:
        rows = []
        for message in messages:
            sequence = message.metadata.sequence.stream
            self.sequence = max(self.sequence, sequence)
            try:
                rows.append(decode(message.data, sequence, self.epoch, self.skip))
            except BadMessage:
                continue  # not ours (someone published on our subject): not an event
        return rows

    def events(self, rows: list[Row]) -> list[Any]:
        rows = [row for row in rows if not self._shown_in_snapshot(row)]
        if self.scoped and rows:
            rows = self._matching(rows)
        return [self._event(row) for row in rows]

    def ready(self, rows: list[Row]) -> bool:
        """Whether :meth:`events` needs no database (it may run on the loop)."""
        return not self.scoped and all(
            row.data is not None and _data_cached(self.serializer_class, row) for row in rows
        )

    def _data(self, row: Row) -> Any:
        if row.data is not None:
            return super()._data(row)
        # Published without its row (too big for NATS): the row as it is now, or its key.
        instance = self.model._default_manager.using(self.alias).filter(pk=self._pk(row)).first()
        if instance is not None:
            return self.serializer_class.to_message(instance)
        data = self.event_class().data
        self._pk_only(data, row)
        return data

    def bookmark(self) -> Any:
        return self.event_class(type=BOOKMARK, cursor=self.cursor())

    def refuse_if_remade(self, feed: Feed) -> None:
        if feed.stream_remade():
            raise GrpcError(
                grpc.StatusCode.UNAVAILABLE,
                f"The JetStream stream {self.config.stream} was deleted and made again; "
                "watch again from your last cursor (it is then OUT_OF_RANGE: watch again with "
                "snapshot: true).",
            )


def _unavailable(exc: NatsUnavailable) -> GrpcError:
    if isinstance(exc, StreamConflict):  # the settings' fault: calling again will not help
        return GrpcError(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
    return GrpcError(grpc.StatusCode.UNAVAILABLE, f"{exc}. Watch again from your last cursor.")


def _pause(sent: float, every: float) -> float:
    return max(min(IDLE_RECHECK, sent + every - time.monotonic()), 0.01)


# -- the threaded server ----------------------------------------------------------------------


def watch(service: Any, request: Any, context: Any, config: NatsConfig) -> Iterator[Any]:
    stream = NatsWatchStream(service, request, config)
    try:
        yield from stream.start()
    except NatsUnavailable as exc:
        raise _unavailable(exc) from None
    every = bookmark_interval()
    if not request.since and not request.snapshot:
        yield stream.bookmark()
    waiter = Waiter()
    feed = Feed(stream.bridge, config, stream.subject, waiter)
    notifier.add(stream.label, stream.alias, waiter)  # a draining server wakes it
    context.add_callback(waiter.set)
    sent = time.monotonic()
    try:
        stream.bridge.call(feed.open(stream.sequence + 1), OPEN_TIMEOUT)
        while context.is_active():
            _refuse_if_stopping()
            waiter.event.clear()
            stream.refuse_if_remade(feed)
            if feed.stale():
                stream.bridge.call(feed.reopen(stream.sequence + 1), OPEN_TIMEOUT)
            events = stream.events(stream.rows(feed.take()))
            yield from events
            now = time.monotonic()
            if events:
                sent = now
            elif now - sent >= every:
                settled = stream.bridge.call(feed.settled(stream.sequence))
                if settled is not None and not feed.items:
                    stream.sequence = max(stream.sequence, settled)
                yield stream.bookmark()
                sent = now
            if not events and not feed.items:
                close_old_connections()
                waiter.event.wait(_pause(sent, every))
    except NatsUnavailable as exc:
        raise _unavailable(exc) from None
    finally:
        notifier.remove(stream.label, waiter)
        stream.bridge.submit(feed.close())


# -- the asyncio server -----------------------------------------------------------------------


async def awatch(
    service: Any, request: Any, context: Any, config: NatsConfig
) -> AsyncIterator[Any]:
    loop = asyncio.get_running_loop()
    stream = NatsWatchStream(service, request, config)
    try:
        for event in await _pool.run(stream.start):
            yield event
    except NatsUnavailable as exc:
        raise _unavailable(exc) from None
    every = bookmark_interval()
    if not request.since and not request.snapshot:
        yield stream.bookmark()
    waiter = Waiter(loop)
    feed = Feed(stream.bridge, config, stream.subject, waiter)
    notifier.add(stream.label, stream.alias, waiter)
    sent = time.monotonic()
    try:
        await stream.bridge.acall(feed.open(stream.sequence + 1), OPEN_TIMEOUT)
        while True:
            _refuse_if_stopping()
            waiter.event.clear()
            stream.refuse_if_remade(feed)
            if feed.stale():
                await stream.bridge.acall(feed.reopen(stream.sequence + 1), OPEN_TIMEOUT)
            rows = stream.rows(feed.take())
            if stream.ready(rows):
                events = stream.events(rows)
            else:
                events = await _pool.run(stream.events, rows)
            for event in events:
                yield event
            now = time.monotonic()
            if events:
                sent = now
            elif now - sent >= every:
                settled = await stream.bridge.acall(feed.settled(stream.sequence))
                if settled is not None and not feed.items:
                    stream.sequence = max(stream.sequence, settled)
                yield stream.bookmark()
                sent = now
            if not events and not feed.items:
                try:
                    await asyncio.wait_for(waiter.event.wait(), _pause(sent, every))
                except asyncio.TimeoutError:
                    pass
    except NatsUnavailable as exc:
        raise _unavailable(exc) from None
    finally:
        notifier.remove(stream.label, waiter)
        stream.bridge.submit(feed.close())
