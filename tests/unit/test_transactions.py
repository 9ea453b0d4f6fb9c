"""write_transaction on SQLite: writers of one process queue on a lock, for as long as asked."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import OperationalError, connection

from django_grpc_bus import transactions

pytestmark = pytest.mark.skipif(
    connection.vendor != "sqlite", reason="the per-process write lock is SQLite's"
)


@pytest.fixture
def held_lock():
    """This process's write lock for the default database, held by another thread."""
    lock = transactions._process_lock(connection.alias)
    release = threading.Event()
    holding = threading.Event()

    def hold() -> None:
        with lock:
            holding.set()
            release.wait(10)

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert holding.wait(5)
    yield release
    release.set()
    thread.join(5)


@pytest.mark.django_db(transaction=True)
def test_a_writer_gives_up_after_its_wait(held_lock):
    began = time.monotonic()
    with pytest.raises(OperationalError, match="database is locked"):
        with transactions.write_transaction(wait=0.2):
            pass
    assert time.monotonic() - began < 2


@pytest.mark.django_db(transaction=True)
def test_a_writer_queues_until_the_lock_is_free_within_its_wait(held_lock):
    threading.Timer(0.3, held_lock.set).start()
    with transactions.write_transaction(wait=5):
        assert connection.in_atomic_block


@pytest.mark.django_db(transaction=True)
def test_inside_an_atomic_block_no_lock_is_taken(held_lock):
    from django.db import transaction

    with transaction.atomic(), transactions.write_transaction(wait=0):
        assert connection.in_atomic_block
