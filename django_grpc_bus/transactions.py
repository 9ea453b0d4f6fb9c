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

On PostgreSQL, Django's foreign keys are ``DEFERRABLE INITIALLY DEFERRED``: checked at COMMIT,
where waiting on a lock could outlast a call's deadline unnoticed. A write checks them once its
work is done (:meth:`Write.check_deferred_constraints`, ``SET CONSTRAINTS ALL IMMEDIATE``), and
only when a check can be pending: the transaction noted which tables its statements wrote, and
none of them has a deferrable constraint of its own (a foreign key, a deferrable unique
constraint) or, for an UPDATE or DELETE, one that refers to it. A statement it cannot read
(raw SQL of another shape) counts as one that may have left a check pending.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

from django.apps import apps
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


class Write:
    """One write transaction: what its statements wrote, so far as deferred checks go."""

    __slots__ = ("connection", "pending")

    def __init__(self, connection: BaseDatabaseWrapper, *, pending: bool) -> None:
        self.connection = connection
        self.pending = pending  # a deferred constraint check may be waiting for COMMIT

    def __call__(self, execute: Any, sql: Any, params: Any, many: bool, context: Any) -> Any:
        """``connection.execute_wrapper``: note what each statement writes, then run it."""
        if not self.pending:
            self.pending = may_defer_checks(sql)
        return execute(sql, params, many, context)

    def check_deferred_constraints(self) -> None:
        """Check now, not at COMMIT, the deferred constraints the writes so far left (PostgreSQL:
        foreign keys); nothing when none can be pending. Nothing follows in the transaction,
        so they need not be deferred again (Django's check_constraints() would, a second
        round trip)."""
        if self.pending and self.connection.vendor == "postgresql":
            with self.connection.cursor() as cursor:
                cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
            self.pending = False


# A write as the ORM (and this package's outbox) spells it: the verb, then the quoted table.
_WRITE = re.compile(r'\b(INSERT\s+INTO|UPDATE|DELETE\s+FROM)\s+"([^"]+)"', re.IGNORECASE)
_VERB = re.compile(r"\b(?:INSERT|UPDATE|DELETE)\b", re.IGNORECASE)
_ROW_LOCK = re.compile(r"\bFOR\s+(?:NO\s+KEY\s+)?UPDATE\b", re.IGNORECASE)
_CONTROL = ("SAVEPOINT", "RELEASE", "ROLLBACK", "SET CONSTRAINTS")
_STATEMENTS = ("SELECT", "INSERT", "UPDATE", "DELETE", "WITH")


def may_defer_checks(sql: Any) -> bool:
    """Whether the statement `sql` can leave a deferred constraint check pending: it writes a
    table with a deferrable constraint (or, updating or deleting, one a foreign key refers
    to), or a table this cannot tell, or it is not a statement this reads. (A function a
    SELECT calls is taken not to write; COMMIT still checks what it would leave.)"""
    if not isinstance(sql, str):
        return True  # a psycopg sql.Composed, say: not read
    head = sql.lstrip()[:15].upper()
    if head.startswith(_CONTROL):
        return False
    if not head.startswith(_STATEMENTS):
        return True
    text = _ROW_LOCK.sub("", sql)
    writes = _WRITE.findall(text)
    if len(writes) != len(_VERB.findall(text)):
        return True  # a write whose table is not read (unquoted, ON CONFLICT DO UPDATE)
    own, referred_to = _deferrable_tables()
    for verb, table in writes:
        if table not in own:
            return True  # no model's table: not known
        if own[table] or (not verb.upper().startswith("INSERT") and table in referred_to):
            return True
    return False


_tables: tuple[dict[str, bool], frozenset[str]] | None = None


def _deferrable_tables() -> tuple[dict[str, bool], frozenset[str]]:
    """(table -> whether it has a deferrable constraint of its own, the tables foreign keys
    refer to), over every installed model, auto-created many-to-many tables included."""
    global _tables
    if _tables is None:
        own: dict[str, bool] = {}
        referred_to: set[str] = set()
        for model in apps.get_models(include_auto_created=True):
            table = model._meta.db_table
            deferrable = any(
                getattr(constraint, "deferrable", None) is not None
                for constraint in model._meta.constraints
            )
            for field in model._meta.local_concrete_fields:
                if field.remote_field is not None and getattr(field, "db_constraint", False):
                    deferrable = True
                    referred_to.add(field.remote_field.model._meta.db_table)
            own[table] = own.get(table, False) or deferrable
        _tables = (own, frozenset(referred_to))
    return _tables


@contextlib.contextmanager
def write_transaction(using: str | None = None, wait: float | None = None) -> Iterator[Write]:
    """``transaction.atomic(using)`` for a write; on SQLite, one that cannot deadlock.

    Inside an atomic block already (a test's transaction, a caller's own), this is a savepoint
    as ``atomic()`` would make, and nothing more: the outer transaction decides. On SQLite,
    `wait` is how long to queue behind this process's other writers (a call passes what its
    deadline leaves); by default, the database's busy timeout. Once in front, ``BEGIN
    IMMEDIATE`` waits for other processes' writers through SQLite's busy timeout as usual.
    It gives the :class:`Write`, whose ``check_deferred_constraints()`` ends the work.
    """
    connection = transaction.get_connection(using or DEFAULT_DB_ALIAS)
    if connection.vendor == "postgresql":
        # Inside another transaction, whatever it wrote before may have left checks pending.
        write = Write(connection, pending=connection.in_atomic_block)
        with transaction.atomic(using=connection.alias), connection.execute_wrapper(write):
            yield write
        return
    write = Write(connection, pending=False)
    if connection.vendor != "sqlite" or connection.in_atomic_block:
        with transaction.atomic(using=connection.alias):
            yield write
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
            yield write
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
