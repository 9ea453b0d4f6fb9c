"""The ``Watch`` RPC of a model service: snapshot, then the outbox's events, then wait.

:class:`WatchStream` is one call's state (its model, filter and position) and does the database
work; :func:`watch` drives it on the threaded server (a thread per open stream) and
:func:`awatch` on the asyncio server (no thread while waiting: reads run in a small pool).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future
from typing import Any

import grpc
from django.db import close_old_connections, connections, transaction

from django_grpc_bus.conf import bus_settings
from django_grpc_bus.errors import GrpcError
from django_grpc_bus.models import WatchEvent
from django_grpc_bus.watch import cursor as cursors
from django_grpc_bus.watch.nats.backend import nats_config
from django_grpc_bus.watch.notifier import Waiter, notifier
from django_grpc_bus.watch.reading import (
    Position,
    Read,
    Row,
    current_position,
    database_alias,
    is_postgresql,
    now_ms,
    pruned_after,
    shared_reads,
)
from django_grpc_bus.watch.recording import label_of, watched_models
from django_grpc_bus.watch.settings import retention

SNAPSHOT_COMPLETE = 4
BOOKMARK = 5  # no data: only a cursor to resume from (at the start, then while idle)
HELD_BACK_RETRY = 0.1  # seconds: events wait behind a transaction still running (PostgreSQL)
IDLE_RECHECK = 30.0  # seconds: a wake-up lost anyway (a listener reconnecting) costs this much


class WatchStream:
    """One Watch call: what it watches, from where, and what it has not sent yet."""

    def __init__(self, service: Any, request: Any) -> None:
        self.service = service
        self.request = request
        self.model = service.get_model()
        self.label = label_of(self.model)
        self.alias = database_alias()
        self.event_class = service.response_class
        self.serializer_class = service.get_serializer_class()
        self.position: Position | None = None
        # After a snapshot (PostgreSQL): (xmin, xmax, running) of the snapshot, whose
        # transactions' events the rows already showed.
        self.seen_in_snapshot: tuple[int, int, frozenset[int]] | None = None
        self.queryset: Any = None
        self.filtered = False
        # Whether the stream sends only some rows (a filter, or a service's get_queryset()
        # narrower than every row): each change is then checked against the queryset.
        self.scoped = False
        self.caught_up = False  # the last read was not a full batch: wait for a wake-up

    # -- the first answer ------------------------------------------------------------------

    def start(self) -> list[Any]:
        """Check the request; the snapshot's events (or none); the position to read from."""
        since, snapshot = self.check_request()
        if since:
            self.position = _resumed(since, self.alias)
            return []
        if snapshot:
            return self._snapshot()
        self.position = current_position(self.alias)
        return []

    def check_request(self) -> tuple[str, bool]:
        """Refuse what cannot be watched; set the scope. The request's (since, snapshot)."""
        if self.model not in watched_models():
            raise GrpcError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{self.model._meta.label} is not watched: set `watch: true` on it in "
                "service_meta.yaml (the producer records its changes only then).",
            )
        self.queryset = self.service.filter_queryset(self.service.get_queryset())
        message = self.request.filter if _has(self.request, "filter") else None
        self.filtered = message is not None and bool(message.ListFields())
        self.scoped = self.filtered or _narrower(self.queryset)
        since, snapshot = self.request.since, self.request.snapshot
        if since and snapshot:
            raise GrpcError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "Set either since (resume) or snapshot (start over), not both.",
                [("snapshot", "cannot be set with since")],
            )
        return since, snapshot

    def _snapshot(self) -> list[Any]:
        with transaction.atomic(using=self.alias), connections[self.alias].cursor() as cursor:
            if is_postgresql(self.alias):
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                cursor.execute("SELECT pg_current_snapshot()::text")
                xmin, xmax, running = cursor.fetchone()[0].split(":")
                xip = frozenset(int(x) for x in running.split(",") if x)
                self.seen_in_snapshot = (int(xmin), int(xmax), xip)
                self.position = Position(int(xmin), int(xmin), 0, now_ms())
            else:
                self.position = current_position(self.alias)
            rows = self.serializer_class.to_messages(self.queryset.iterator(chunk_size=500))
        mark = self.position.encode()
        events = [self.event_class(type=WatchEvent.CREATED, data=row, cursor=mark) for row in rows]
        events.append(self.event_class(type=SNAPSHOT_COMPLETE, cursor=mark))
        return events

    # -- then the changes --------------------------------------------------------------------

    def poll(self, version: int) -> tuple[list[Any], bool]:
        """The events after the position (advancing it), and whether some are held back."""
        assert self.position is not None
        read = shared_reads.read(self.alias, self.label, self.position, version)
        return self._take(read)

    def poll_ready(self, version: int) -> tuple[list[Any], bool] | None:
        """:meth:`poll` when another watcher's answer stands and no query is needed, else None.

        (On the asyncio server, this runs on the loop: most watchers need no thread.)
        """
        assert self.position is not None
        if self.scoped:
            return None
        read = shared_reads.peek(self.alias, self.label, self.position, version)
        if read is None or any(_data_cached(self.serializer_class, r) is None for r in read.rows):
            return None
        return self._take(read)

    def shares_events(self) -> bool:
        """Whether this stream sends a read's events as they are (so do its peers)."""
        return not self.scoped and self.seen_in_snapshot is None

    def read_shared(self, version: int) -> Read:
        """The read :meth:`poll` takes, its event messages built for the peers sharing it."""
        assert self.position is not None and self.shares_events()
        read = shared_reads.read(self.alias, self.label, self.position, version)
        self._shared_events(read)
        return read

    def _shared_events(self, read: Read) -> list[Any]:
        # Every caught-up watcher sends the same messages: build them once.
        events = read.events.get(self.event_class)
        if events is None:
            events = read.events[self.event_class] = [self._event(r) for r in read.rows]
        return events

    def _take(self, read: Read) -> tuple[list[Any], bool]:
        self.position = read.position
        self.caught_up = not read.full
        if self.shares_events():
            return self._shared_events(read), read.held_back
        rows = [row for row in read.rows if not self._shown_in_snapshot(row)]
        if self.scoped and rows:
            rows = self._matching(rows)
        return [self._event(row) for row in rows], read.held_back

    def bookmark(self) -> Any:
        """A BOOKMARK event: the position every event before it was sent (or filtered out)."""
        assert self.position is not None
        return self.event_class(type=BOOKMARK, cursor=self.position.encode())

    def _shown_in_snapshot(self, row: Row) -> bool:
        if self.seen_in_snapshot is None:
            return False
        xmin, xmax, running = self.seen_in_snapshot
        return row.txid < xmin or (row.txid < xmax and row.txid not in running)

    def _matching(self, rows: list[Row]) -> list[Row]:
        """The rows the queryset (scope and filter) lets through, checked against the rows as
        they are now.

        A deleted row cannot be checked any more: its DELETED event is sent with the primary
        key alone (its recorded data may be a row this caller may not see).
        """
        pks = [self._pk(row) for row in rows if row.kind != WatchEvent.DELETED]
        found = {str(pk) for pk in self.queryset.filter(pk__in=pks).values_list("pk", flat=True)}
        return [row for row in rows if row.kind == WatchEvent.DELETED or row.object_pk in found]

    def _pk(self, row: Row) -> Any:
        return self.model._meta.pk.to_python(row.object_pk)

    def _pk_only(self, data: Any, row: Row) -> None:
        pk = self.model._meta.pk
        fields = data.DESCRIPTOR.fields_by_name
        field = fields.get(pk.name) or fields.get(pk.attname)
        if field is not None:
            value = self._pk(row)
            setattr(data, field.name, str(value) if field.type == field.TYPE_STRING else value)

    def _event(self, row: Row) -> Any:
        event = self.event_class(type=row.kind, cursor=row.cursor.encode(), id=row.uid)
        if self.scoped and row.kind == WatchEvent.DELETED:
            self._pk_only(event.data, row)
        else:
            event.data.CopyFrom(self._data(row))
        if row.changed is not None:
            event.changed.paths.extend(row.changed)
        event.time.FromDatetime(row.time.astimezone(dt.timezone.utc))
        return event

    def _data(self, row: Row) -> Any:
        found = _data_cached(self.serializer_class, row)
        if found is None:
            found = self.serializer_class.to_message(_instance(self.model, row, self.alias))
            with _messages_lock:
                _messages[(self.serializer_class, row.id)] = found
                while len(_messages) > MESSAGE_CACHE:
                    _messages.popitem(last=False)
        return found


# Events' data messages, shared by the watchers of a process (many send the same event).
MESSAGE_CACHE = 4096
_messages: OrderedDict[tuple[Any, int], Any] = OrderedDict()
_messages_lock = threading.Lock()


def _data_cached(serializer_class: Any, row: Row) -> Any:
    with _messages_lock:
        return _messages.get((serializer_class, row.id))


def _instance(model: Any, row: Row, alias: str) -> Any:
    """The row as recorded, as a model instance (not read from the database)."""
    values = {}
    for field in model._meta.concrete_fields:
        if field.attname in row.data:
            value = row.data[field.attname]
            values[field.attname] = None if value is None else field.to_python(value)
    instance = model(**values)
    instance._state.adding = False
    instance._state.db = alias
    return instance


def _narrower(queryset: Any) -> bool:
    """Whether `queryset` may leave out some rows of its model (a condition, a slice, the
    empty set): a service's get_queryset() that scopes what a caller may see."""
    query = queryset.query
    return bool(query.where) or query.is_sliced or bool(query.distinct)


def bookmark_interval() -> float:
    """Seconds between BOOKMARK events of an idle stream (``WATCH_BOOKMARK_INTERVAL``)."""
    value = bus_settings.WATCH_BOOKMARK_INTERVAL
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 30.0  # the checks report the setting (E003)
    return max(float(value), 0.05)  # below: E011


def _has(message: Any, name: str) -> bool:
    return name in message.DESCRIPTOR.fields_by_name


def _resumed(since: str, alias: str) -> Position:
    try:
        position = cursors.decode(since)
    except cursors.BadCursor as exc:
        raise GrpcError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"since is {exc}: pass the cursor of an event this server sent, or leave it empty.",
            [("since", str(exc))],
        ) from None
    kept = retention()
    # A younger cursor is in range: nothing after it can have been pruned yet.
    if position.made_ms < now_ms() - kept.total_seconds() * 1000 and pruned_after(alias, position):
        raise GrpcError(
            grpc.StatusCode.OUT_OF_RANGE,
            f"since is older than WATCH_RETENTION ({kept}) and events after it were pruned. "
            "Watch again with snapshot: true.",
            [("since", "events after it were pruned (WATCH_RETENTION)")],
        )
    return position


def _refuse_if_stopping() -> None:
    if notifier.stopping():
        raise GrpcError(
            grpc.StatusCode.UNAVAILABLE,
            "The server is shutting down; watch again from your last cursor on another instance.",
        )


# -- the threaded server: a thread per stream ---------------------------------------------------


def watch(service: Any, request: Any, context: Any) -> Iterator[Any]:
    """Serve one Watch call on the calling thread until the client leaves."""
    stream = WatchStream(service, request)
    yield from stream.start()
    every = bookmark_interval()
    if not request.since and not request.snapshot:
        yield stream.bookmark()  # the start position: a reconnect resumes from here
    sent = time.monotonic()
    waiter = Waiter()
    notifier.add(stream.label, stream.alias, waiter)
    context.add_callback(waiter.set)
    try:
        while context.is_active():
            _refuse_if_stopping()
            waiter.event.clear()  # first: a wake-up from now on is kept
            version = notifier.version(stream.label)
            events, held_back = stream.poll(version)
            yield from events
            now = time.monotonic()
            if events:
                sent = now
            elif now - sent >= every:
                yield stream.bookmark()
                sent = now
            if stream.caught_up:
                close_old_connections()  # no connection held while waiting
                waiter.event.wait(_pause(held_back, sent + every - now))
    finally:
        notifier.remove(stream.label, waiter)


# -- the asyncio server: no thread while waiting ------------------------------------------------


async def awatch(service: Any, request: Any, context: Any) -> AsyncIterator[Any]:
    """Serve one Watch call on the loop; its database work runs in the watch pool."""
    loop = asyncio.get_running_loop()
    stream = WatchStream(service, request)
    for event in await _pool.run(stream.start):
        yield event
    every = bookmark_interval()
    if not request.since and not request.snapshot:
        yield stream.bookmark()  # the start position: a reconnect resumes from here
    sent = time.monotonic()
    waiter = Waiter(loop)
    notifier.add(stream.label, stream.alias, waiter)
    try:
        while True:
            _refuse_if_stopping()
            waiter.event.clear()  # first: a wake-up from now on is kept
            version = notifier.version(stream.label)
            events, held_back = stream.poll_ready(version) or await _apoll(stream, version)
            for event in events:
                yield event
            now = time.monotonic()
            if events:
                sent = now
            elif now - sent >= every:
                yield stream.bookmark()
                sent = now
            if stream.caught_up:
                # (A timer, not wait_for(): that makes a task per wait, for every watcher.)
                timer = loop.call_later(_pause(held_back, sent + every - now), waiter.event.set)
                try:
                    await waiter.event.wait()
                finally:
                    timer.cancel()
    finally:
        notifier.remove(stream.label, waiter)


# The pool trips under way, by question, with the futures of the watchers waiting for the
# answer: the watchers of a model that wake together ask the same question, and wait for its
# answer on the loop rather than each in a pool thread. (Not asyncio.shield() on one task: a
# thousand shields of one task cost more than the read.)
_trips: dict[tuple[Any, ...], list[asyncio.Future[Read]]] = {}


async def _apoll(stream: WatchStream, version: int) -> tuple[list[Any], bool]:
    """:meth:`WatchStream.poll` in the pool, one trip for the watchers sharing its answer."""
    if not stream.shares_events():
        return await _pool.run(stream.poll, version)
    assert stream.position is not None
    loop = asyncio.get_running_loop()
    key = (loop, stream.alias, stream.label, stream.position.key(), version, stream.event_class)
    answer: asyncio.Future[Read] = loop.create_future()
    waiting = _trips.get(key)
    if waiting is None:
        waiting = _trips[key] = []
        trip = _pool.submit(stream.read_shared, version)
        trip.add_done_callback(lambda done: _answer_soon(loop, key, done))
    waiting.append(answer)
    return stream._take(await answer)


def _answer_soon(loop: asyncio.AbstractEventLoop, key: tuple[Any, ...], done: Future[Read]) -> None:
    try:
        loop.call_soon_threadsafe(_answer, key, done)
    except RuntimeError:  # its loop is closed
        pass


def _answer(key: tuple[Any, ...], done: Future[Read]) -> None:
    """On the loop: a pool trip's answer to each watcher still waiting for it."""
    error = done.exception()
    for answer in _trips.pop(key):
        if answer.done():  # its call ended meanwhile
            continue
        if error is None:
            answer.set_result(done.result())
        else:
            answer.set_exception(error)


def _pause(held_back: bool, until_bookmark: float) -> float:
    """How long an idle stream waits for a wake-up."""
    return max(min(HELD_BACK_RETRY if held_back else IDLE_RECHECK, until_bookmark), 0.01)


class WatchPool:
    """A few threads for the asyncio server's watch reads; an idle one closes its connections.

    (So that no connection outlives the reads, and a test database can be dropped.)
    """

    SIZE = 4
    IDLE = 1.0  # seconds

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Future[Any], Callable[..., Any], tuple]] = (
            queue.SimpleQueue()
        )
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    async def run(self, function: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.wrap_future(self.submit(function, *args))

    def submit(self, function: Callable[..., Any], *args: Any) -> Future[Any]:
        self._ensure_threads()
        future: Future[Any] = Future()
        self._jobs.put((future, function, args))
        return future

    def _ensure_threads(self) -> None:
        if len(self._threads) >= self.SIZE:
            return
        with self._lock:
            while len(self._threads) < self.SIZE:
                thread = threading.Thread(target=self._work, name="grpc-bus-watch", daemon=True)
                thread.start()
                self._threads.append(thread)

    def _work(self) -> None:
        opened = False
        while True:
            try:
                future, function, args = self._jobs.get(timeout=self.IDLE)
            except queue.Empty:
                if opened:
                    connections.close_all()
                    opened = False
                continue
            if not future.set_running_or_notify_cancel():
                continue
            opened = True
            try:
                future.set_result(function(*args))
            except BaseException as exc:
                connections.close_all()  # a broken connection is not kept
                future.set_exception(exc)


_pool = WatchPool()


class WatchModelMixin:
    """Serve ``Watch`` (generated for a model with ``watch: true``): its committed changes."""

    def watch(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        config = nats_config()
        if config is not None:
            from django_grpc_bus.watch.nats import feeds as nats_streams

            return nats_streams.watch(self, request, context, config)
        return watch(self, request, context)

    async def awatch(self, request: Any, context: Any) -> AsyncIterator[Any]:
        config = nats_config()
        if config is not None:
            from django_grpc_bus.watch.nats import feeds as nats_streams

            async for event in nats_streams.awatch(self, request, context, config):
                yield event
            return
        async for event in awatch(self, request, context):
            yield event
