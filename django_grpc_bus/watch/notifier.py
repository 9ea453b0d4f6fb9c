"""Wake a process's watchers when events of their model commit: one listener per process.

On PostgreSQL one thread holds a connection that LISTENs on the recording's NOTIFY channel
(NOTIFY is sent by the inserting statement and delivered at commit; this needs psycopg 3: a
project on psycopg2 polls, with one warning); elsewhere one thread polls
the outbox's highest id every ``POLL_INTERVAL`` while anyone watches. Either way a write in this
process wakes its watchers at commit (while the listener listens, by its NOTIFY alone: one
wake-up per commit, not two), and each wake-up reaches every waiter of the model: a
``threading.Event`` (threaded server) or an ``asyncio.Event`` set on its loop (asyncio server),
all of a loop's in one call into it.
The same thread prunes events past ``WATCH_RETENTION`` every ``PRUNE_EVERY`` seconds.
"""

from __future__ import annotations

import asyncio
import logging
import select
import threading
import time
import weakref
from collections import defaultdict
from typing import Any

from django.db import close_old_connections, connections

from django_grpc_bus.models import WatchEvent
from django_grpc_bus.watch.recording import CHANNEL, prune_events

logger = logging.getLogger("django_grpc_bus.watch")

POLL_INTERVAL = 0.2  # seconds, SQLite and other databases without LISTEN
PRUNE_EVERY = 300.0  # seconds
LISTENER_NAME = "django-grpc-bus watch listener"  # its application_name in pg_stat_activity
LISTEN_TIMEOUT = 1.0  # seconds: how often the PostgreSQL listener looks up from waiting


class Waiter:
    """One watcher's wake-up: set when its model has news (or its call ends)."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.loop = loop
        self.event: Any = asyncio.Event() if loop is not None else threading.Event()

    def set(self) -> None:
        if self.loop is None:
            self.event.set()
        else:
            try:
                self.loop.call_soon_threadsafe(self.event.set)
            except RuntimeError:  # its loop is closed
                pass


class Notifier:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[str, set[Waiter]] = defaultdict(set)
        self._versions: dict[str, int] = defaultdict(int)
        self._thread: threading.Thread | None = None
        self._alias: str | None = None
        self._someone = threading.Event()  # anyone watching (the poller sleeps otherwise)
        # The servers of this process (their Traffic): when one drains, its watchers end
        # UNAVAILABLE at once, to resume elsewhere, rather than hold the drain to its end.
        # (A list of references: every watcher looks at it on every round, and a WeakSet's
        # iteration costs ten times as much.)
        self._servers: list[weakref.ref[Any]] = []
        self._listening = False  # the PostgreSQL listener's LISTEN is in place
        self._stop_told: weakref.WeakSet[Any] = weakref.WeakSet()  # draining servers woken
        self._no_listen_told = False

    def track(self, traffic: Any) -> None:
        with self._lock:
            self._servers = [*self._traffics_refs(), weakref.ref(traffic)]

    def _traffics_refs(self) -> list[weakref.ref[Any]]:
        return [ref for ref in self._servers if ref() is not None]

    def stopping(self) -> bool:
        """Whether a server of this process is draining with calls still in flight (its Watch
        streams among them). A server that has stopped has none: another one started later in
        the same process (tests' in-process servers) serves Watch as usual."""
        for ref in self._servers:
            traffic = ref()
            if traffic is not None and traffic.draining and traffic.active:
                return True
        return False

    def _tell_stopping(self) -> None:
        """Wake every watcher once per server that starts draining (each server of the
        process, one after another, ends its streams)."""
        servers = [traffic for ref in self._servers if (traffic := ref()) is not None]
        draining = [t for t in servers if t.draining and t not in self._stop_told]
        if draining:
            for traffic in draining:
                self._stop_told.add(traffic)
            self.wake_all()

    def listens(self, alias: str) -> bool:
        """Whether to LISTEN (PostgreSQL with psycopg 3); else poll. A PostgreSQL project on
        psycopg2 polls, with one warning."""
        if connections[alias].vendor != "postgresql":
            return False
        try:
            import psycopg  # noqa: F401
        except ImportError:
            if not self._no_listen_told:
                self._no_listen_told = True
                logger.warning(
                    "Watch: psycopg (3) is not installed, so watchers are woken by polling "
                    "the outbox every %.1f s instead of LISTEN/NOTIFY; install psycopg to be "
                    "woken at commit.",
                    POLL_INTERVAL,
                )
            return False
        return True

    def version(self, label: str) -> int:
        return self._versions[label]

    def add(self, label: str, alias: str, waiter: Waiter) -> None:
        with self._lock:
            self._waiters[label].add(waiter)
            self._someone.set()
            if self._thread is None or not self._thread.is_alive():
                self._alias = alias
                self._thread = threading.Thread(
                    target=self._run, name="grpc-bus-watch-notifier", daemon=True
                )
                self._thread.start()

    def remove(self, label: str, waiter: Waiter) -> None:
        with self._lock:
            self._waiters[label].discard(waiter)
            if not any(self._waiters.values()):
                self._someone.clear()

    def watcher_count(self) -> int:
        with self._lock:
            return sum(len(w) for w in self._waiters.values())

    def wake(self, label: str) -> None:
        """A transaction of this process committed events of `label`: wake its watchers,
        unless the listener listens (the transaction's NOTIFY wakes them then, at the same
        commit; a second wake-up would have every watcher read again for nothing)."""
        if not self._listening:
            self._wake(label)

    def _wake(self, label: str) -> None:
        with self._lock:
            self._versions[label] += 1
            waiters = list(self._waiters.get(label, ()))
        on_loops: dict[asyncio.AbstractEventLoop, list[asyncio.Event]] = defaultdict(list)
        for waiter in waiters:
            if waiter.loop is None:
                waiter.event.set()
            else:
                on_loops[waiter.loop].append(waiter.event)
        for loop, events in on_loops.items():
            try:
                loop.call_soon_threadsafe(_set_all, events)  # one call per loop, not per waiter
            except RuntimeError:  # its loop is closed
                pass

    def wake_all(self) -> None:
        with self._lock:
            labels = list(self._waiters)
        for label in labels:
            self._wake(label)

    # -- the process's one listener thread ---------------------------------------------------

    def _run(self) -> None:
        alias = self._alias or "default"
        last_prune = 0.0
        while True:
            try:
                if self.listens(alias):
                    self._someone.wait()  # no listening connection while no one watches
                    self._listen(alias)
                else:
                    last_prune = self._poll(alias, last_prune)
            except Exception:
                logger.exception("Watch notifier failed; starting again in 1 s")
                try:
                    close_old_connections()
                except Exception:  # the database is still down: the next round tries again
                    logger.debug("Closing the notifier's connections failed", exc_info=True)
                time.sleep(1.0)
                self.wake_all()  # anything may have been missed meanwhile

    def _prune_due(self, last: float) -> float:
        if time.monotonic() - last < PRUNE_EVERY:
            return last
        try:
            prune_events()
        except Exception:
            logger.exception("Pruning watch events failed")
        return time.monotonic()

    def _listen(self, alias: str) -> None:
        import psycopg

        params = connections[alias].get_connection_params()
        params.pop("cursor_factory", None)
        params.pop("context", None)
        # Named, so that an operator (and a test) can tell it in pg_stat_activity.
        params["application_name"] = LISTENER_NAME
        with psycopg.connect(**params, autocommit=True) as listener:
            listener.add_notify_handler(lambda note: self._wake(note.payload))
            listener.execute(f"LISTEN {CHANNEL}")
            self._listening = True
            try:
                self.wake_all()  # events may have come while no one listened
                self._listen_until_idle(alias, listener)
            finally:
                self._listening = False

    def _listen_until_idle(self, alias: str, listener: Any) -> None:
        last_prune = 0.0
        while True:
            # (select + a query delivers notifications on psycopg 3.1 too, which has no
            # notifies(timeout=...))
            readable, _, _ = select.select([listener.fileno()], [], [], LISTEN_TIMEOUT)
            if readable:
                listener.execute("SELECT 1")  # runs the notify handler for each arrival
            self._tell_stopping()
            last_prune = self._prune_due(last_prune)
            connections[alias].close_if_unusable_or_obsolete()
            if not self._someone.is_set():
                # The last watcher left: let go of the database (a test database can then
                # be dropped; a server keeps no idle session); listen again when one comes.
                connections[alias].close()
                return

    def _poll(self, alias: str, last_prune: float) -> float:
        connection = connections[alias]
        table = connection.ops.quote_name(WatchEvent._meta.db_table)
        first, seen = True, None
        while True:
            self._someone.wait(timeout=PRUNE_EVERY)
            with connection.cursor() as cursor:
                cursor.execute(f"SELECT MAX(id) FROM {table}")  # the primary key's end: cheap
                latest = cursor.fetchone()[0]
            if not first and latest != seen:
                self.wake_all()
            first, seen = False, latest
            self._tell_stopping()
            last_prune = self._prune_due(last_prune)
            connection.close_if_unusable_or_obsolete()
            time.sleep(POLL_INTERVAL)


def _set_all(events: list[asyncio.Event]) -> None:
    for event in events:
        event.set()


notifier = Notifier()
