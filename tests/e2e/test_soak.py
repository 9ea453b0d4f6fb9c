"""Soak: 50 concurrent clients, mixed reads and writes, against one `rungrpcserver` process.

For DJANGO_GRPC_BUS_SOAK_SECONDS (default 180): no call may fail, the server's resident memory
must not grow by 10% or more between the end of a 15% warm-up and the end, and on PostgreSQL
the server's connections stay bounded by its worker threads (+1; on the asyncio server, plus
its streams' own). At the end every
acknowledged write must be in the database. On SQLite the server runs with a new project's
database settings (no OPTIONS). Skipped unless DJANGO_GRPC_BUS_SOAK=1 (CI sets it on both
runs); a local run can shorten it, e.g. DJANGO_GRPC_BUS_SOAK=1 DJANGO_GRPC_BUS_SOAK_SECONDS=20.
"""

from __future__ import annotations

import os
import random
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import grpc
import pytest
from catalog.models import Author
from google.protobuf import field_mask_pb2
from support import (
    DATABASE_URL,
    ON_POSTGRES,
    db_query,
    pg_connect,
    pg_connection_count,
    start_server,
)

from django_grpc_bus.conf import DEFAULTS, bus_settings
from django_grpc_bus.testing import stub_for

SOAK_ENV = "DJANGO_GRPC_BUS_SOAK"
SECONDS = float(os.environ.get("DJANGO_GRPC_BUS_SOAK_SECONDS", "180"))
CLIENTS = 50
CLIENTS_PER_CHANNEL = 5  # 10 channels, each shared by 5 threads
WARM_UP = 0.15  # of SECONDS
MAX_RSS_GROWTH = 0.10
MAX_WORKERS = DEFAULTS["MAX_WORKERS"]
CALL_TIMEOUT = 30
KEEP_ROWS = 20  # rows each client keeps; older ones are destroyed

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get(SOAK_ENV) != "1",
        reason=f"a {SECONDS:g}s soak: set {SOAK_ENV}=1 to run it (CI does, on SQLite and "
        "PostgreSQL); DJANGO_GRPC_BUS_SOAK_SECONDS shortens it",
    ),
]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def connection_counter(database_url: str):
    """A function counting connections to the server's database, from the admin database."""
    monitor = pg_connect(DATABASE_URL)

    def count() -> int:
        return pg_connection_count(monitor, database_url)

    return count, monitor


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self.errors: list[str] = []
        self.kept: dict[int, str] = {}  # id -> name, of every row a client still holds
        self.destroyed: set[int] = set()  # ids whose Destroy was acknowledged
        self.listing = 0  # List calls in flight
        self.most_listing = 0  # the most at once

    def list_started(self) -> None:
        with self.lock:
            self.listing += 1
            self.most_listing = max(self.most_listing, self.listing)

    def list_ended(self) -> None:
        with self.lock:
            self.listing -= 1

    def ok(self, kind: str) -> None:
        with self.lock:
            self.calls[kind] += 1

    def error(self, kind: str, text: str) -> None:
        with self.lock:
            self.calls[kind] += 1
            self.errors.append(f"{kind}: {text}")


def client(stub, pb, index: int, deadline: float, tally: Tally) -> None:
    """Mixed reads and writes on rows of its own, until `deadline`; every result is checked."""
    rng = random.Random(index)
    tag = uuid.uuid4().hex[:6]
    mine: list[tuple[int, str]] = []  # (id, current name)
    for number in range(1_000_000):  # bounded; the deadline ends it long before
        if time.monotonic() >= deadline:
            break
        roll = rng.random()
        if not mine or roll < 0.2:
            kind = "Create"
        elif roll < 0.5:
            kind = "Retrieve"
        elif roll < 0.65:
            kind = "PartialUpdate"
        elif roll < 0.75:
            kind = "Update"
        elif roll < 0.9:
            kind = "List"
        else:
            kind = "Destroy"
        try:
            if kind == "Create":
                name = f"soak-{tag}-{index}-{number}"
                reply = stub.Create(pb.AuthorData(name=name), timeout=CALL_TIMEOUT)
                assert reply.name == name and reply.id > 0, reply
                mine.append((reply.id, name))
                if len(mine) > KEEP_ROWS:
                    row_id, _ = mine.pop(0)
                    stub.Destroy(pb.AuthorLookupRequest(id=row_id), timeout=CALL_TIMEOUT)
                    tally.destroyed.add(row_id)
            elif kind == "Retrieve":
                row_id, name = rng.choice(mine)
                reply = stub.Retrieve(pb.AuthorLookupRequest(id=row_id), timeout=CALL_TIMEOUT)
                assert (reply.id, reply.name) == (row_id, name), reply
            elif kind in ("PartialUpdate", "Update"):
                position = rng.randrange(len(mine))
                row_id, _ = mine[position]
                name = f"soak-{tag}-{index}-{number}-{kind[0]}"
                data = pb.AuthorData(id=row_id, name=name)
                if kind == "Update":
                    reply = stub.Update(data, timeout=CALL_TIMEOUT)
                else:
                    mask = field_mask_pb2.FieldMask(paths=["name"])
                    reply = stub.PartialUpdate(
                        pb.AuthorPartialUpdateRequest(data=data, update_mask=mask),
                        timeout=CALL_TIMEOUT,
                    )
                assert (reply.id, reply.name) == (row_id, name), reply
                mine[position] = (row_id, name)
            elif kind == "List":
                tally.list_started()
                try:
                    request = pb.AuthorListRequest(page_size=20)
                    batches = list(stub.List(request, timeout=CALL_TIMEOUT))
                finally:
                    tally.list_ended()
                assert len(batches) == 1 and len(batches[0].results) <= 20, batches
            else:
                row_id, _ = mine.pop(rng.randrange(len(mine)))
                stub.Destroy(pb.AuthorLookupRequest(id=row_id), timeout=CALL_TIMEOUT)
                tally.destroyed.add(row_id)
        except grpc.RpcError as exc:
            tally.error(kind, f"{exc.code().name} {exc.details()}")
        except AssertionError as exc:
            tally.error(kind, f"wrong result: {exc}")
        else:
            tally.ok(kind)
    with tally.lock:
        tally.kept.update(mine)


def test_soak(fresh_database):
    from generated_grpc.grpc import Author_pb2

    env = {"TEST_CONN_MAX_AGE": "60", "TEST_CONN_HEALTH_CHECKS": "1"} if ON_POSTGRES else {}
    server = start_server(fresh_database, env=env)
    pid = server.process.pid
    tally = Tally()
    samples: list[tuple[float, int, int | None]] = []  # (time, RSS KiB, connections)
    stop_sampling = threading.Event()
    count, monitor = connection_counter(fresh_database) if ON_POSTGRES else (None, None)

    def sample() -> None:
        while not stop_sampling.wait(1.0):
            samples.append((time.monotonic(), rss_kib(pid), count() if count else None))

    channels = [grpc.insecure_channel(server.target) for _ in range(CLIENTS // CLIENTS_PER_CHANNEL)]
    began = time.monotonic()
    deadline = began + SECONDS
    threads = [
        threading.Thread(
            target=client,
            args=(
                stub_for(Author, channels[i // CLIENTS_PER_CHANNEL]),
                Author_pb2,
                i,
                deadline,
                tally,
            ),
            daemon=True,
        )
        for i in range(CLIENTS)
    ]
    sampler = threading.Thread(target=sample, daemon=True)
    try:
        sampler.start()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()) + CALL_TIMEOUT + 10)
        ended = time.monotonic()
        rss_end = rss_kib(pid)
        assert server.process.poll() is None, server.output
    finally:
        stop_sampling.set()
        sampler.join(timeout=10)
        for channel in channels:
            channel.close()
        if monitor is not None:
            monitor.close()
        code = server.stop(timeout=30)
    assert not any(thread.is_alive() for thread in threads), "a client did not finish"
    assert code == 0, server.output

    warmed = [s for s in samples if s[0] >= began + WARM_UP * SECONDS]
    assert warmed, samples
    rss_base = warmed[0][1]
    growth = (rss_end - rss_base) / rss_base
    calls = sum(tally.calls.values())
    peak_connections = max((s[2] for s in samples if s[2] is not None), default=None)
    print(
        f"\nsoak: {SECONDS:g}s, {CLIENTS} clients, {calls} calls "
        f"({calls / (ended - began):.0f}/s; {dict(tally.calls)}), {len(tally.errors)} errors; "
        f"server RSS {rss_base / 1024:.1f} MiB after warm-up -> {rss_end / 1024:.1f} MiB at the "
        f"end ({growth:+.1%}; first sample {samples[0][1] / 1024:.1f} MiB); "
        f"connections max {peak_connections}; at most {tally.most_listing} List calls at once"
    )
    assert not tally.errors, f"{len(tally.errors)} errors, e.g. {tally.errors[:10]}"
    # Every acknowledged write is in the database: the rows clients hold, with the names they
    # last set, and none of the rows whose Destroy was acknowledged.
    stored = dict(db_query(fresh_database, "SELECT id, name FROM catalog_author"))
    wrong = {i: (name, stored.get(i)) for i, name in tally.kept.items() if stored.get(i) != name}
    assert not wrong, f"{len(wrong)} acknowledged writes not stored, e.g. {list(wrong.items())[:5]}"
    resurrected = tally.destroyed & stored.keys()
    assert not resurrected, f"destroyed rows still stored: {sorted(resurrected)[:10]}"
    assert calls > CLIENTS * 10, tally.calls
    assert growth < MAX_RSS_GROWTH, f"RSS grew {growth:.1%}: {[s[1] for s in samples]}"
    if ON_POSTGRES:
        # A connection per server thread; on the asyncio server also one per stream open at
        # once, up to MAX_WORKERS kept between streams (docs/asyncio.md).
        streams = max(MAX_WORKERS, tally.most_listing) if bus_settings.ASYNCIO else 0
        assert peak_connections <= MAX_WORKERS + streams + 1, [s[2] for s in samples]
