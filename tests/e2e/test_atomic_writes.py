"""Writes are all or nothing: a call that fails after a partial write leaves no trace of it.

``faults.Entry`` writes a ``Ledger`` row (created on first use, balance moved, ``touches``
counted) and then its own row before it fails on request: a negative amount raises
``ValueError`` from ``Entry.save()``, the note ``fail-on-delete`` from ``Entry.delete()``, and
the note ``fail-in-service`` (``fail-destroy-in-service`` for Destroy) makes
``EntryService.perform_*`` raise ``RuntimeError`` after the model's writes and an extra "audit"
ledger write (see ``tests/faults``). Each failed Create,
Update, PartialUpdate and Destroy must end as INTERNAL with the generic message, and the
server's database, read directly (sqlite3 / psycopg on its URL), must be exactly as before
the call; each successful call's writes must all be there.
"""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import pytest
from faults.models import FAIL_ON_DELETE, Entry, Ledger
from faults.services import AUDIT_LEDGER, FAIL_DESTROY_IN_SERVICE, FAIL_IN_SERVICE, FAIL_UNIQUE
from support import bus_env, db_query, running_server

from django_grpc_bus.testing import stub_for

TIMEOUT = 10  # seconds, for every call
Code = grpc.StatusCode
GENERIC = "Internal server error."
HANDLER = bus_env(ROOT_HANDLERS_HOOK="faults.handlers.handler")


# -- the server's database, directly -------------------------------------------------------------


def snapshot(url: str) -> dict[str, list[tuple]]:
    """Every row of the faults tables, in primary key order."""
    return {
        table: db_query(url, f"SELECT * FROM {table} ORDER BY id")
        for table in (Ledger._meta.db_table, Entry._meta.db_table)
    }


def ledger(url: str, name: str) -> tuple[int, int] | None:
    """(balance, touches) of the ledger `name`, or None when it has no row."""
    found = db_query(
        url, f"SELECT balance, touches FROM {Ledger._meta.db_table} WHERE name = %s", (name,)
    )
    return tuple(found[0]) if found else None


def entry(url: str, pk: int) -> tuple[str, int, str] | None:
    found = db_query(
        url, f"SELECT ledger_name, amount, note FROM {Entry._meta.db_table} WHERE id = %s", (pk,)
    )
    return tuple(found[0]) if found else None


# -- fixtures and calls --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def faults_server(fresh_database):
    with running_server(fresh_database, env=HANDLER) as server:
        yield server


@pytest.fixture(scope="module")
def stub(faults_server):
    with grpc.insecure_channel(faults_server.target) as channel:
        yield stub_for(Entry, channel)


@pytest.fixture(scope="module")
def pb(compiled):
    from generated_grpc.grpc import Entry_pb2

    return Entry_pb2


def unique_ledger() -> str:
    return f"l-{uuid.uuid4().hex[:12]}"


def call(method: Any, request: Any) -> Any:
    return method(request, timeout=TIMEOUT)


def fails_internally(method: Any, request: Any) -> None:
    with pytest.raises(grpc.RpcError) as info:
        call(method, request)
    assert info.value.code() is Code.INTERNAL, (info.value.code(), info.value.details())
    assert info.value.details() == GENERIC


def new_entry(stub: Any, pb: Any, name: str, amount: int = 5, note: str = "") -> Any:
    return call(stub.Create, pb.EntryData(ledger_name=name, amount=amount, note=note))


# -- successful calls write everything -----------------------------------------------------------


def test_a_successful_create_writes_the_ledger_the_entry_and_the_audit(stub, pb, fresh_database):
    audit_before = ledger(fresh_database, AUDIT_LEDGER) or (0, 0)
    name = unique_ledger()

    created = new_entry(stub, pb, name, amount=5, note="ok")

    assert entry(fresh_database, created.id) == (name, 5, "ok")
    assert ledger(fresh_database, name) == (5, 1)
    assert ledger(fresh_database, AUDIT_LEDGER) == (0, audit_before[1] + 1)


def test_successful_update_partial_update_and_destroy_write_everything(stub, pb, fresh_database):
    name = unique_ledger()
    created = new_entry(stub, pb, name, amount=5)

    call(stub.Update, pb.EntryData(id=created.id, ledger_name=name, amount=8, note="u"))
    assert entry(fresh_database, created.id) == (name, 8, "u")
    assert ledger(fresh_database, name) == (8, 2)

    request = pb.EntryPartialUpdateRequest(data=pb.EntryData(id=created.id, amount=11))
    request.update_mask.paths.append("amount")
    assert call(stub.PartialUpdate, request).amount == 11
    assert entry(fresh_database, created.id) == (name, 11, "u")
    assert ledger(fresh_database, name) == (11, 3)

    call(stub.Destroy, pb.EntryLookupRequest(id=created.id))
    assert entry(fresh_database, created.id) is None
    assert ledger(fresh_database, name) == (0, 4)


# -- failed calls leave nothing ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "note"),
    [(-1, ""), (3, FAIL_IN_SERVICE)],
    ids=["model-raises-after-writing", "service-raises-after-save"],
)
def test_a_failed_create_leaves_nothing(stub, pb, fresh_database, amount, note):
    new_entry(stub, pb, unique_ledger())  # rows from before, which must stay as they are
    name = unique_ledger()
    before = snapshot(fresh_database)

    fails_internally(stub.Create, pb.EntryData(ledger_name=name, amount=amount, note=note))

    assert snapshot(fresh_database) == before
    assert ledger(fresh_database, name) is None


@pytest.mark.parametrize(
    ("amount", "note"),
    [(-7, "changed"), (9, FAIL_IN_SERVICE)],
    ids=["model-raises-after-writing", "service-raises-after-save"],
)
def test_a_failed_update_leaves_the_row_and_its_ledger_as_they_were(
    stub, pb, fresh_database, amount, note
):
    name = unique_ledger()
    created = new_entry(stub, pb, name, amount=5, note="kept")
    before = snapshot(fresh_database)

    request = pb.EntryData(id=created.id, ledger_name=name, amount=amount, note=note)
    fails_internally(stub.Update, request)

    assert snapshot(fresh_database) == before
    assert entry(fresh_database, created.id) == (name, 5, "kept")
    assert ledger(fresh_database, name) == (5, 1)


@pytest.mark.parametrize(
    ("paths", "data"),
    [
        (["amount"], {"amount": -2}),
        (["note"], {"note": FAIL_IN_SERVICE}),
        (["ledger_name", "amount"], {"ledger_name": "moved-elsewhere", "amount": -2}),
    ],
    ids=["model-raises-after-writing", "service-raises-after-save", "new-ledger-then-raise"],
)
def test_a_failed_partial_update_leaves_the_row_and_its_ledger_as_they_were(
    stub, pb, fresh_database, paths, data
):
    name = unique_ledger()
    created = new_entry(stub, pb, name, amount=5, note="kept")
    before = snapshot(fresh_database)

    request = pb.EntryPartialUpdateRequest(data=pb.EntryData(id=created.id, **data))
    request.update_mask.paths.extend(paths)
    fails_internally(stub.PartialUpdate, request)

    assert snapshot(fresh_database) == before
    assert entry(fresh_database, created.id) == (name, 5, "kept")
    assert ledger(fresh_database, "moved-elsewhere") is None


@pytest.mark.parametrize(
    "note",
    [FAIL_ON_DELETE, FAIL_DESTROY_IN_SERVICE],
    ids=["model-raises-after-delete", "service-raises"],
)
def test_a_failed_destroy_keeps_the_row_and_its_ledger(stub, pb, fresh_database, note):
    name = unique_ledger()
    created = new_entry(stub, pb, name, amount=5, note=note)
    before = snapshot(fresh_database)

    fails_internally(stub.Destroy, pb.EntryLookupRequest(id=created.id))

    assert snapshot(fresh_database) == before
    assert entry(fresh_database, created.id) == (name, 5, note)
    assert ledger(fresh_database, name) == (5, 1)
    assert call(stub.Retrieve, pb.EntryLookupRequest(id=created.id)).note == note


def test_a_mapped_database_error_after_partial_writes_rolls_them_back_too(stub, pb, fresh_database):
    """An IntegrityError is not INTERNAL (ALREADY_EXISTS), but is just as all-or-nothing."""
    name = unique_ledger()
    kept = new_entry(stub, pb, name, amount=5)
    before = snapshot(fresh_database)

    with pytest.raises(grpc.RpcError) as info:
        call(stub.Create, pb.EntryData(ledger_name=unique_ledger(), amount=1, note=FAIL_UNIQUE))
    assert info.value.code() is Code.ALREADY_EXISTS, info.value.details()
    request = pb.EntryPartialUpdateRequest(data=pb.EntryData(id=kept.id, note=FAIL_UNIQUE))
    request.update_mask.paths.append("note")
    with pytest.raises(grpc.RpcError) as info:
        call(stub.PartialUpdate, request)
    assert info.value.code() is Code.ALREADY_EXISTS, info.value.details()

    assert snapshot(fresh_database) == before


def test_after_failures_the_server_still_writes_and_reads(stub, pb, fresh_database):
    name = unique_ledger()
    for _ in range(3):
        fails_internally(stub.Create, pb.EntryData(ledger_name=name, amount=-1))
    created = new_entry(stub, pb, name, amount=4)

    assert call(stub.Retrieve, pb.EntryLookupRequest(id=created.id)).amount == 4
    assert ledger(fresh_database, name) == (4, 1)
