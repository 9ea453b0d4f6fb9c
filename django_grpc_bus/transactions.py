"""Write transactions that are correct on every database with the settings a new project has.

On PostgreSQL (and any database but SQLite) a write transaction is ``transaction.atomic()``.

SQLite lets one connection write at a time, and Django's default transactions (``BEGIN``,
"deferred") take the write lock only at the first write: two transactions that both read
first (a unique check, a ``get_object()``) then both try to write deadlock, and SQLite fails
one of them at once with "database is locked", whatever the busy timeout. So on SQLite a write
transaction here

- first takes a lock of this process, so the threads of one server never compete inside
  SQLite (they queue on a Python lock, which hands over in microseconds, instead of sleeping
  in SQLite's busy handler, which backs off in steps of up to 100 ms), and
- then begins with ``BEGIN IMMEDIATE``, which takes SQLite's write lock at once, so writers in
  other processes (``--workers``, a management command, a shell) wait for it through the busy
  timeout instead of deadlocking.

Neither changes a setting: a project's own ``atomic()`` blocks keep Django's behaviour (set
``OPTIONS["transaction_mode"] = "IMMEDIATE"`` on Django 5.1+ to give them the second half too).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

from django.db import DEFAULT_DB_ALIAS, OperationalError, transaction
from django.db.backends.base.base import BaseDatabaseWrapper

# What Python's sqlite3 waits for a lock by default, and Django passes on unless OPTIONS has
# "timeout": the same wait applies to our own lock.
SQLITE_DEFAULT_TIMEOUT = 5.0

_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def _process_lock(alias: str) -> threading.Lock:
    lock = _locks.get(alias)
    if lock is None:
        with _locks_guard:
            lock = _locks.setdefault(alias, threading.Lock())
    return lock


def _timeout(connection: BaseDatabaseWrapper) -> float:
    value = connection.settings_dict.get("OPTIONS", {}).get("timeout", SQLITE_DEFAULT_TIMEOUT)
    try:
        return float(value)
    except (TypeError, ValueError):
        return SQLITE_DEFAULT_TIMEOUT


@contextlib.contextmanager
def write_transaction(using: str | None = None, wait: float | None = None) -> Iterator[None]:
    """``transaction.atomic(using)`` for a write; on SQLite, one that cannot deadlock.

    Inside an atomic block already (a test's transaction, a caller's own), this is a savepoint
    as ``atomic()`` would make, and nothing more: the outer transaction decides. On SQLite,
    `wait` is how long to queue behind this process's other writers (a call passes what its
    deadline leaves); by default, the database's busy timeout. Once in front, ``BEGIN
    IMMEDIATE`` waits for other processes' writers through SQLite's busy timeout as usual.
    """
    connection = transaction.get_connection(using or DEFAULT_DB_ALIAS)
    if connection.vendor != "sqlite" or connection.in_atomic_block:
        with transaction.atomic(using=connection.alias):
            yield
        return
    lock = _process_lock(connection.alias)
    waited_from = time.monotonic()
    if not lock.acquire(timeout=_timeout(connection) if wait is None else max(wait, 0.0)):
        raise OperationalError(
            f"database is locked: waited {time.monotonic() - waited_from:.1f}s for the other "
            "writers of this process"
        )
    try:
        with _begin_immediate(connection), transaction.atomic(using=connection.alias):
            yield
    finally:
        lock.release()


@contextlib.contextmanager
def _begin_immediate(connection: Any) -> Iterator[None]:
    """Make the next ``atomic()`` on `connection` begin with ``BEGIN IMMEDIATE``.

    Django begins a SQLite transaction by calling the connection's
    ``_start_transaction_under_autocommit()`` (Django 4.2 to 6.x); an instance attribute of
    the same name stands in for it until the block is entered. A ``transaction_mode`` the
    project set (Django 5.1+: IMMEDIATE or EXCLUSIVE) is kept as it is.
    """
    if (getattr(connection, "transaction_mode", None) or "DEFERRED").upper() != "DEFERRED":
        yield
        return

    def begin_immediate() -> None:
        connection.cursor().execute("BEGIN IMMEDIATE")

    connection._start_transaction_under_autocommit = begin_immediate
    try:
        yield
    finally:
        del connection._start_transaction_under_autocommit
