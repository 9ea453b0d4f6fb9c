"""Many slow streams on one asyncio server process: they stay open, retrieves keep answering.

A ``rungrpcserver --asyncio`` process with MAX_WORKERS threads serves List calls whose clients
read one batch and then nothing (their HTTP/2 windows fill, the server's writes wait), far more
of them than it has threads, while Retrieves run. The threaded server would hold a thread per
open stream and answer nothing else once MAX_WORKERS of them are open; the asyncio server holds
none. The test prints Retrieve's p50 and p99 on the idle server and with the streams open
(issue 14 asks for p99 within 2x of the idle server's on 1,000 streams) and asserts no timing:
every Retrieve succeeds, every stream is still open, and a sample of them then reads to its end.

``DJANGO_GRPC_BUS_AIO_LOAD_STREAMS`` (default 100) sets the number of streams; 1,000 is the
issue's load, e.g. ``DJANGO_GRPC_BUS_AIO_LOAD_STREAMS=1000 pytest -s tests/e2e/test_aio_load.py``.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from pathlib import Path

import grpc
import pytest
from catalog.models import Author
from support import ON_POSTGRES, SMALL_WINDOW, bus_env, ensure_authors, running_server

from django_grpc_bus.testing import stub_for

STREAMS = int(os.environ.get("DJANGO_GRPC_BUS_AIO_LOAD_STREAMS", "100"))
STREAMS_PER_CHANNEL = 100
ROWS = 20_000  # far more than a stream's windows hold: an unread stream stays open
BATCH = 50  # LIST_BATCH_SIZE
RETRIEVERS = 4  # concurrent Retrieve loops
READ_TO_THE_END = 10  # streams read to their end afterwards
MEASURE_SECONDS = 4.0
QUIET_INTERVAL, QUIET_SHARE = 0.5, 0.05  # idle: under 5% of a core over half a second
TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")
TIMEOUT = 120

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        ON_POSTGRES,
        reason="each open List holds a database connection of its own: more streams than "
        "PostgreSQL's max_connections (docs/asyncio.md)",
    ),
]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def retrieve_latencies(stub, pb, author_id: int) -> list[float]:
    """Retrieves back to back from RETRIEVERS tasks for MEASURE_SECONDS; each one's ms."""
    latencies: list[float] = []
    deadline = time.monotonic() + MEASURE_SECONDS

    async def loop() -> None:
        while time.monotonic() < deadline:
            began = time.perf_counter()
            reply = await stub.Retrieve(pb.AuthorLookupRequest(id=author_id), timeout=TIMEOUT)
            latencies.append((time.perf_counter() - began) * 1e3)
            assert reply.id == author_id

    await asyncio.gather(*(loop() for _ in range(RETRIEVERS)))
    return latencies


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


async def until_quiet(pid: int, timeout: float = 120.0) -> float:
    """Wait until the server process is nearly idle: its streams wait for their clients.

    Each new stream keeps writing until its client's windows are full; the Retrieves are
    measured after that, with the streams open and waiting. Returns the seconds waited.
    """
    began = time.monotonic()
    ticks = cpu_ticks(pid)
    while time.monotonic() - began < timeout:
        await asyncio.sleep(QUIET_INTERVAL)
        now = cpu_ticks(pid)
        if (now - ticks) / TICKS_PER_SECOND < QUIET_INTERVAL * QUIET_SHARE:
            return time.monotonic() - began
        ticks = now
    raise AssertionError(f"the server was still busy {timeout:g}s after the streams opened")


async def load(target: str, author_id: int, pid: int) -> dict[str, float]:
    from generated_grpc.grpc import Author_pb2 as pb

    channels = [
        grpc.aio.insecure_channel(target, options=SMALL_WINDOW)
        for _ in range(-(-STREAMS // STREAMS_PER_CHANNEL))
    ]
    probe_channel = grpc.aio.insecure_channel(target)
    try:
        probe = stub_for(Author, probe_channel)
        await retrieve_latencies(probe, pb, author_id)  # warm-up
        idle = await retrieve_latencies(probe, pb, author_id)

        began = time.monotonic()
        streams = [
            stub_for(Author, channels[i // STREAMS_PER_CHANNEL]).List(
                pb.AuthorListRequest(), timeout=TIMEOUT
            )
            for i in range(STREAMS)
        ]
        # Each stream has started: its first batch arrived. Then nobody reads.
        firsts = await asyncio.gather(*(stream.read() for stream in streams))
        opened_s = time.monotonic() - began
        assert all(len(first.results) == BATCH for first in firsts)
        quiet_s = await until_quiet(pid)

        busy = await retrieve_latencies(probe, pb, author_id)
        assert not any(stream.done() for stream in streams), "a stream ended unread"

        # Some streams then read to their end (all the rows: nothing lost while they waited);
        # the others are cancelled.
        async def rest(stream) -> int:
            count = BATCH
            while (batch := await stream.read()) is not grpc.aio.EOF:
                count += len(batch.results)
            return count

        sample = streams[:: max(1, STREAMS // READ_TO_THE_END)]
        for stream in streams:
            if stream not in sample:
                stream.cancel()
        counts = await asyncio.gather(*(rest(stream) for stream in sample))
        assert set(counts) == {ROWS}, sorted(set(counts))
        return {
            "idle_p50": statistics.median(idle),
            "idle_p99": percentile(idle, 0.99),
            "busy_p50": statistics.median(busy),
            "busy_p99": percentile(busy, 0.99),
            "idle_calls": len(idle),
            "busy_calls": len(busy),
            "opened_s": opened_s,
            "quiet_s": quiet_s,
        }
    finally:
        for channel in [*channels, probe_channel]:
            await channel.close()


def test_many_slow_streams_stay_open_while_retrieves_answer(fresh_database):
    ensure_authors(fresh_database, ROWS, "load {}")
    env = bus_env(ASYNCIO=True, LIST_BATCH_SIZE=BATCH)
    with running_server(fresh_database, "--no-access-log", env=env) as server:
        assert "; asyncio, sync code in 10 threads" in server.output, server.output
        assert server.process is not None
        figures = asyncio.run(load(server.target, author_id=1, pid=server.process.pid))
    print(
        f"\n{STREAMS} open List streams on one asyncio process (10 threads), {RETRIEVERS} "
        f"concurrent Retrieve loops for {MEASURE_SECONDS:g}s each: idle p50 "
        f"{figures['idle_p50']:.2f} ms, p99 {figures['idle_p99']:.2f} ms "
        f"({figures['idle_calls']} calls); with the streams open p50 {figures['busy_p50']:.2f} "
        f"ms, p99 {figures['busy_p99']:.2f} ms ({figures['busy_calls']} calls); p99 ratio "
        f"{figures['busy_p99'] / figures['idle_p99']:.2f}x; streams opened in "
        f"{figures['opened_s']:.1f}s, all waiting for their clients {figures['quiet_s']:.1f}s "
        "later"
    )
