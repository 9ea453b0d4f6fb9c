"""The benchmark's SQLite databases: the schema from ``migrate``, rows by raw ``executemany``.

Row ``i`` is a pure function of ``i``, so every run, and every machine, reads the same data.
The small database is built afresh on every run (the create workload adds rows to it); the
larger ones (100,000 and 1,000,000 rows) take a few seconds more and are kept between runs,
rebuilt when ``DATA_VERSION`` changes or a build was interrupted.

The files stay in SQLite's default rollback-journal mode (``journal_mode=DELETE``), as a new
project's database is: the journal mode is the one pragma stored in the file (WAL persists), so
the build sets none. ``synchronous=OFF`` while loading rows lasts only for the loading
connection; the servers' connections have SQLite's default (FULL).
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

# Bump when row(), the model or the file's format changes: cached databases are rebuilt.
# 2: rollback-journal mode (1 was built in WAL mode). 3: an index on price (migration 0002).
DATA_VERSION = 3
EPOCH = dt.datetime(2020, 1, 1)
FIRST_PUBLISHED = dt.date(1990, 1, 1)
INSERT = (
    "INSERT INTO shop_book (id, title, pages, price, published, added, in_print, rating) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)


def row(i: int) -> tuple:
    """Row ``i`` (1-based) as Django stores it in SQLite (datetimes as naive UTC text)."""
    added = EPOCH + dt.timedelta(seconds=i * 37, microseconds=(i * 7919) % 1_000_000)
    return (
        i,
        f"Book number {i:07d}",
        50 + (i * 13) % 950,
        f"{(i * 7) % 10_000 / 100 + 1:.2f}",
        (FIRST_PUBLISHED + dt.timedelta(days=i % 12_000)).isoformat(),
        added.isoformat(sep=" "),
        int(i % 3 != 0),
        (i % 50) / 10 + 0.25,
    )


def price_below(share: float) -> str:
    """A ``price__lt`` that exactly `share` of the rows match, in any table of a multiple of
    10,000 rows: row i's price is ``(7 i mod 10,000) / 100 + 1``, and 7 i mod 10,000 takes
    every value once in each 10,000 consecutive ids (7 and 10,000 are coprime)."""
    return f"{10_000 * share / 100 + 1:.2f}"


def rows(count: int) -> Iterator[tuple]:
    return (row(i) for i in range(1, count + 1))


def is_current(path: Path, count: int) -> bool:
    if not path.exists():
        return False
    try:
        with sqlite3.connect(path) as connection:
            (version,) = connection.execute("PRAGMA user_version").fetchone()
            (mode,) = connection.execute("PRAGMA journal_mode").fetchone()
            (found,) = connection.execute("SELECT count(*) FROM shop_book").fetchone()
    except sqlite3.Error:
        return False
    return version == DATA_VERSION and mode == "delete" and found == count


def build(path: Path, count: int, manage: list[str], project: Path, env: dict[str, str]) -> None:
    """Create `path` with the migrated schema and `count` rows; marks it complete at the end."""
    for stale in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        stale.unlink(missing_ok=True)
    subprocess.run(
        [*manage, "migrate", "-v0"],
        cwd=project,
        env={**env, "BENCH_DATABASE": str(path)},
        check=True,
        timeout=120,
    )
    connection = sqlite3.connect(path)
    try:
        connection.execute("PRAGMA synchronous=OFF")  # this connection only: not stored
        connection.executemany(INSERT, rows(count))
        connection.commit()
        connection.execute(f"PRAGMA user_version = {DATA_VERSION}")
        connection.commit()
    finally:
        connection.close()


def ensure(path: Path, count: int, manage: list[str], project: Path, env: dict[str, str]) -> bool:
    """Build `path` unless a complete copy is there; True when it was built."""
    if is_current(path, count):
        return False
    build(path, count, manage, project, env)
    return True
