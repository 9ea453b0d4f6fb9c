"""Database connections of their own for streams on the asyncio server.

Django keeps a connection per thread. The threaded server runs a whole call in one thread, so a
call uses that thread's connection from start to end. The asyncio server runs a stream step by
step (each message it yields, between writes that wait for the client), each step in whichever
pool thread is free; the stream's database cursor must not move to another thread's connection,
nor may another call use the connection it is open on. So a server or bidi stream gets
connections of its own (:class:`OwnConnections`, one per database alias), installed in the
thread running each of its steps and removed after it; unary and client-streaming calls, which
run in one pool thread from start to end, use that thread's connections, as on the threaded
server.

The sets are reused: once a stream ends (its ``close_old_connections()`` done, as for any call),
its set goes back to :class:`ConnectionSets`, which keeps up to `keep` idle sets for the next
streams and closes the others, so with ``CONN_MAX_AGE`` a List does not connect anew each time.
"""

from __future__ import annotations

import threading
from typing import Any

from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper


class ConnectionSets:
    """Idle connection sets (alias -> wrapper) of one server's streams, up to `keep` of them."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self._idle: list[dict[str, BaseDatabaseWrapper]] = []
        self._lock = threading.Lock()

    def take(self) -> dict[str, BaseDatabaseWrapper]:
        """An idle set, or a new one (not connected until used)."""
        with self._lock:
            if self._idle:
                return self._idle.pop()
        wrappers = {}
        for alias in connections:
            wrapper = connections.create_connection(alias)
            wrapper.inc_thread_sharing()  # used from whichever pool thread runs the step
            wrappers[alias] = wrapper
        return wrappers

    def give_back(self, wrappers: dict[str, BaseDatabaseWrapper]) -> None:
        """Keep `wrappers` for another stream, or close them (in a thread without a loop)."""
        with self._lock:
            if len(self._idle) < self.keep:
                self._idle.append(wrappers)
                return
        _close(wrappers)

    def close_all(self) -> None:
        """Close every idle set (when the server stops; in a thread without a loop)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for wrappers in idle:
            _close(wrappers)


def _close(wrappers: dict[str, BaseDatabaseWrapper]) -> None:
    for wrapper in wrappers.values():
        try:
            wrapper.close()
        except Exception:  # a broken connection: nothing more to release
            pass


class OwnConnections:
    """One stream's connections, as ``with own:`` around each of its steps, in any thread.

    Entering installs them as the thread's connections (taking a set on first use); leaving
    puts back whatever the thread had. ``release()`` returns the set once the stream is over.
    """

    __slots__ = ("_saved", "_sets", "_wrappers")

    def __init__(self, sets: ConnectionSets) -> None:
        self._sets = sets
        self._wrappers: dict[str, BaseDatabaseWrapper] | None = None
        self._saved: dict[str, Any] = {}

    def __enter__(self) -> OwnConnections:
        if self._wrappers is None:
            self._wrappers = self._sets.take()
        self._saved = {wrapper.alias: wrapper for wrapper in connections.all(initialized_only=True)}
        for alias, wrapper in self._wrappers.items():
            connections[alias] = wrapper
        return self

    def __exit__(self, *exc_info: Any) -> None:
        saved = self._saved
        self._saved = {}
        for alias in self._wrappers or ():
            if alias in saved:
                connections[alias] = saved[alias]
            else:
                del connections[alias]

    def release(self) -> None:
        """The stream is over: its set goes back to be reused (or is closed)."""
        wrappers, self._wrappers = self._wrappers, None
        if wrappers is not None:
            self._sets.give_back(wrappers)
