"""``make bench``: django-grpc-bus against a hand-written grpcio servicer; prints the table.

Both servers serve the same generated proto from the same SQLite database, each on core 0
(``taskset``); the load generator (``load.py``, one process per measurement) runs on core 1.
The two are measured alternately, A then B, in each of ROUNDS rounds; a cell shows the median
over rounds and [min–max], and a ratio is taken within each round before its median is.
The table also goes to ``bench/results/latest.md``. See bench/README.md for what each row means.

``run.py list`` runs only the 1,000-row list against both servers and prints its row.
Environment: BENCH_ROUNDS (default 3) and BENCH_SECONDS (measured seconds per closed-loop run,
default 5) shorten a trial run; the numbers in the README use the defaults.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROJECT = HERE / "project"
HANDWRITTEN = HERE / "handwritten"
RESULTS = HERE / "results"
SMALL_DB = PROJECT / "books-10k.sqlite3"
MEDIUM_DB = PROJECT / "books-100k.sqlite3"
LARGE_DB = PROJECT / "books-1m.sqlite3"
PYTHON = sys.executable

ROUNDS = max(1, int(os.environ.get("BENCH_ROUNDS", "3")))
# Three busy processes on two cores land differently from run to run: more rounds.
WORKER_ROUNDS = max(ROUNDS, 5) if ROUNDS >= 3 else ROUNDS
SECONDS = float(os.environ.get("BENCH_SECONDS", "5"))
WARMUP = 1.0
MAX_WORKERS = 10  # threads per server process, the same for both servers
SMALL_ROWS, MEDIUM_ROWS, LARGE_ROWS, LIST_ROWS = 10_000, 100_000, 1_000_000, 1000
# The filtered lists: 1,000 rows of the 100,000 (1 %), and 100,000 of the 1,000,000 (10 %).
FILTERED_SHARE, LARGE_FILTERED_SHARE = 0.01, 0.1
SERVER_CPUS, LOAD_CPUS, ALL_CPUS = "0", "1", "0,1"

sys.path.insert(0, str(HERE))
from django_grpc_bus.testing import ServerProcess  # noqa: E402

import databases  # noqa: E402


class BenchError(Exception):
    """A step failed; the message says which and shows its output."""


def taskset(cpus: str) -> list[str]:
    return ["taskset", "-c", cpus]


def project_env(database: Path) -> dict[str, str | None]:
    return {"BENCH_DATABASE": str(database), "DJANGO_SETTINGS_MODULE": None}


def manage(*args: str, database: Path = SMALL_DB) -> None:
    env = {k: v for k, v in {**os.environ, **project_env(database)}.items() if v is not None}
    done = subprocess.run(
        [PYTHON, "manage.py", *args],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode:
        raise BenchError(f"manage.py {' '.join(args)} failed:\n{done.stdout}{done.stderr}")


# -- preparation ----------------------------------------------------------------------------------


def prepare() -> None:
    """Generated code for both servers, the fresh small database, the cached larger ones."""
    manage("generateproto", "-v0")
    manage("generategrpc", "-v0")
    from grpc_tools import protoc

    include = Path(protoc.__file__).parent / "_proto"
    code = protoc.main(
        [
            "protoc",
            f"-I{HANDWRITTEN}",
            f"-I{include}",
            f"--python_out={HANDWRITTEN}",
            f"--grpc_python_out={HANDWRITTEN}",
            str(HANDWRITTEN / "bench.proto"),
        ]
    )
    if code:
        raise BenchError("protoc could not compile bench/handwritten/bench.proto")
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    command = [PYTHON, "manage.py"]
    databases.build(SMALL_DB, SMALL_ROWS, command, PROJECT, env)
    for path, count in ((MEDIUM_DB, MEDIUM_ROWS), (LARGE_DB, LARGE_ROWS)):
        began = time.monotonic()
        if databases.ensure(path, count, command, PROJECT, env):
            print(f"  built {path.name} in {time.monotonic() - began:.1f}s (kept for next runs)")


# -- servers and the load generator ---------------------------------------------------------------


def bus_server(
    database: Path,
    *,
    cpus: str = SERVER_CPUS,
    workers: int = 1,
    wrapper: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    options: tuple[str, ...] = ("--no-access-log",),
) -> ServerProcess:
    """``manage.py rungrpcserver``; a fixed free port when it forks workers sharing it.

    `wrapper` is a script that runs manage.py (the profiler's), `env` extra variables,
    `options` more of rungrpcserver's: by default no access log, which the hand-written
    server has no counterpart of (its cost is a row of its own, see ``observability``).
    """
    address = f"127.0.0.1:{free_port()}" if workers > 1 else "127.0.0.1:0"
    args = ["--max-workers", str(MAX_WORKERS), "--workers", str(workers), *options]
    return ServerProcess(
        [*taskset(cpus), PYTHON, *wrapper, "manage.py"],
        cwd=PROJECT,
        env={**project_env(database), **(env or {})},
        args=args,
        address=address,
    ).start()


def handwritten_server(
    database: Path, *, wrapper: tuple[str, ...] = (), env: dict[str, str] | None = None
) -> ServerProcess:
    """bench/handwritten/server.py, started, awaited and stopped exactly like rungrpcserver."""
    server = ServerProcess(cwd=PROJECT, env={**project_env(database), **(env or {})})
    server.command = [
        *taskset(SERVER_CPUS),
        PYTHON,
        *wrapper,
        str(HANDWRITTEN / "server.py"),
        "127.0.0.1:0",
        "--max-workers",
        str(MAX_WORKERS),
    ]
    return server.start()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def load(mode: str, server: ServerProcess, *options: object, cpus: str = LOAD_CPUS) -> dict:
    """Run load.py once on `cpus` against `server`; its JSON result."""
    command = [
        *taskset(cpus),
        PYTHON,
        str(HERE / "load.py"),
        mode,
        "--target",
        server.target,
        *map(str, options),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if done.returncode:
        raise BenchError(f"load.py {mode} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result.get("errors"):
        print(
            f"  warning: {result['errors']} failed calls in load.py {' '.join(command[4:])}; "
            f"the first: {result.get('first_error') or '?'}"
        )
    return result


def closed_loop(server: ServerProcess, rpc: str, concurrency: int, **extra: object) -> dict:
    cpus = str(extra.pop("cpus", LOAD_CPUS))
    options: list[object] = ["--rpc", rpc, "--concurrency", concurrency]
    options += ["--warmup", WARMUP, "--duration", SECONDS]
    for key, value in extra.items():
        options += [f"--{key.replace('_', '-')}", value]
    return load("closed-loop", server, *options, cpus=cpus)


def memory_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise BenchError(f"/proc/{pid}/status has no {key}")


# -- the workloads --------------------------------------------------------------------------------

Samples = dict[str, list[float]]  # metric name -> one value per round (or per sample)
SIDES = {"bus": "django-grpc-bus", "hand": "hand-written"}


def against_handwritten(samples: Samples, first_errors: dict[str, str]) -> None:
    """Retrieve, create and list-1000, and the client's CPU: A then B in every round.

    `first_errors` gets, per side, the text of the first failed create.
    """
    bus = bus_server(SMALL_DB)
    try:
        hand = handwritten_server(SMALL_DB)
    except BaseException:
        bus.stop(timeout=15)  # never leave a server behind
        raise
    try:
        print(f"  servers: django-grpc-bus pid {bus.process.pid}, hand-written {hand.process.pid}")
        load("verify", bus, "--handwritten", hand.target, "--rows", LIST_ROWS)
        print("  verified: same Retrieve bytes, same list of dicts from both servers")
        for round_number in range(1, ROUNDS + 1):
            began = time.monotonic()
            for side, server in (("bus", bus), ("hand", hand)):
                pid = server.process.pid
                got = closed_loop(server, "retrieve", 8, server_pid=pid)
                samples[f"retrieve.rate.{side}"].append(got["calls_per_s"])
                samples[f"retrieve.p50.{side}"].append(got["p50_ms"])
                samples[f"retrieve.p99.{side}"].append(got["p99_ms"])
                samples[f"retrieve.cpu.{side}"].append(got["server_cpu_us_per_call"])
            for side, server in (("bus", bus), ("hand", hand)):
                got = closed_loop(server, "create", 4, server_pid=server.process.pid)
                samples[f"create.rate.{side}"].append(got["calls_per_s"])
                samples[f"create.p50.{side}"].append(got["p50_ms"])
                samples[f"create.p99.{side}"].append(got["p99_ms"])
                samples[f"create.cpu.{side}"].append(got["server_cpu_us_per_call"])
                samples[f"create.failed.{side}"].append(got["errors"])
                samples[f"create.calls.{side}"].append(got["calls_with_warmup"] + got["errors"])
                if got["errors"] and side not in first_errors:
                    first_errors[side] = got["first_error"]
            for side, server, client in (("bus", bus, "registry"), ("hand", hand, "stub")):
                got = load("list", server, "--client", client, "--rows", LIST_ROWS)
                samples[f"list.ms.{side}"].append(got["ms"])
            for client in ("registry", "stub"):
                got = load("client-cpu", bus, "--client", client, "--calls", 2000)
                samples[f"client.cpu.{client}"].append(got["cpu_us_per_call"])
            print(f"  round {round_number}/{ROUNDS} done in {time.monotonic() - began:.0f}s")
    finally:
        bus.stop(timeout=15)
        hand.stop(timeout=15)


def list_only(samples: Samples) -> None:
    """``run.py list``: only the 1,000-row list, A then B in every round (no table, no file)."""
    bus = bus_server(SMALL_DB)
    try:
        hand = handwritten_server(SMALL_DB)
    except BaseException:
        bus.stop(timeout=15)
        raise
    try:
        load("verify", bus, "--handwritten", hand.target, "--rows", LIST_ROWS)
        for round_number in range(1, ROUNDS + 1):
            for side, server, client in (("bus", bus, "registry"), ("hand", hand, "stub")):
                got = load("list", server, "--client", client, "--rows", LIST_ROWS)
                samples[f"list.ms.{side}"].append(got["ms"])
            bus_ms, hand_ms = samples["list.ms.bus"][-1], samples["list.ms.hand"][-1]
            print(f"  round {round_number}/{ROUNDS}: {bus_ms:.2f} ms against {hand_ms:.2f} ms, "
                  f"{bus_ms / hand_ms:.2f}×")  # fmt: skip
    finally:
        bus.stop(timeout=15)
        hand.stop(timeout=15)


def asyncio_side_by_side(samples: Samples) -> None:
    """Retrieve, create and list-1000 on ``rungrpcserver --asyncio``, the threaded server and
    the hand-written servicer, the three in turn in every round (each on core 0)."""
    servers: dict[str, ServerProcess] = {}
    try:
        servers["aio"] = bus_server(SMALL_DB, options=("--no-access-log", "--asyncio"))
        if "; asyncio, sync code in" not in servers["aio"].output:
            raise BenchError(f"not the asyncio server:\n{servers['aio'].output[-2000:]}")
        servers["thr"] = bus_server(SMALL_DB)
        servers["hand"] = handwritten_server(SMALL_DB)
        load("verify", servers["aio"], "--handwritten", servers["hand"].target, "--rows", LIST_ROWS)
        for _ in range(ROUNDS):
            for side, server in servers.items():
                got = closed_loop(server, "retrieve", 8, server_pid=server.process.pid)
                samples[f"aio.retrieve.rate.{side}"].append(got["calls_per_s"])
                samples[f"aio.retrieve.p99.{side}"].append(got["p99_ms"])
                samples[f"aio.retrieve.cpu.{side}"].append(got["server_cpu_us_per_call"])
            for side, server in servers.items():
                got = closed_loop(server, "create", 4, server_pid=server.process.pid)
                samples[f"aio.create.rate.{side}"].append(got["calls_per_s"])
                samples[f"aio.create.p99.{side}"].append(got["p99_ms"])
            for side, server in servers.items():
                client = "stub" if side == "hand" else "registry"
                got = load("list", server, "--client", client, "--rows", LIST_ROWS)
                samples[f"aio.list.ms.{side}"].append(got["ms"])
        print("  asyncio side by side: done")
    finally:
        for server in servers.values():
            server.stop(timeout=15)


def filtered_list(samples: Samples) -> None:
    """1,000 rows of 100,000 below a price, cheapest first (read off the price index): the
    registry's List with filter and order_by against the hand-written ListCheaper, the same
    ORM query in one unary message."""
    price_lt = databases.price_below(FILTERED_SHARE)
    rows = round(MEDIUM_ROWS * FILTERED_SHARE)
    bus = bus_server(MEDIUM_DB)
    try:
        hand = handwritten_server(MEDIUM_DB)
    except BaseException:
        bus.stop(timeout=15)
        raise
    try:
        query = ("--rows", rows, "--price-lt", price_lt)
        load("verify", bus, "--handwritten", hand.target, *query)
        for _ in range(ROUNDS):
            for side, server, client in (("bus", bus, "registry"), ("hand", hand, "stub")):
                got = load("list", server, "--client", client, *query)
                samples[f"filtered.ms.{side}"].append(got["ms"])
        print(f"  filtered list: {rows:,} of {MEDIUM_ROWS:,} rows below {price_lt}: done")
    finally:
        bus.stop(timeout=15)
        hand.stop(timeout=15)


def workers(samples: Samples) -> None:
    """Retrieve with --workers 2 and --workers 1, server and load free to use both cores.

    A third server, --workers 1 pinned to core 0 with the load on core 1, shows what one
    process does when it does not share its core with the load generator.
    """
    setups: dict[str, tuple[ServerProcess, str]] = {}
    try:
        # Started inside the try: a server that does not start must not leave the others running.
        setups["2"] = (bus_server(SMALL_DB, cpus=ALL_CPUS, workers=2), ALL_CPUS)
        setups["1"] = (bus_server(SMALL_DB, cpus=ALL_CPUS, workers=1), ALL_CPUS)
        setups["1-pinned"] = (bus_server(SMALL_DB, cpus=SERVER_CPUS, workers=1), LOAD_CPUS)
        for _ in range(WORKER_ROUNDS):
            for name, (server, load_cpus) in setups.items():
                # One connection per task: SO_REUSEPORT spreads connections, not calls.
                got = closed_loop(server, "retrieve", 8, channels=8, cpus=load_cpus)
                samples[f"workers.rate.{name}"].append(got["calls_per_s"])
        print("  workers: done")
    finally:
        for server, _cpus in setups.values():
            server.stop(timeout=15)


# rungrpcserver with nothing recorded, as the other rows run it; with the access log it prints
# by default; with tracing (a span per call, or per tenth of the calls, batched, dropped) and
# metrics (--metrics-port).
METRICS = ("--no-access-log", "--metrics-port", "0")
OBSERVED = {
    "off": ({}, ("--no-access-log",)),
    "log": ({}, ()),
    "otel": ({"BENCH_TRACING": "1"}, METRICS),
    "sampled": ({"BENCH_TRACING": "0.1"}, METRICS),
}


def observability(samples: Samples) -> None:
    """Retrieve, c=8: the server recording nothing against the same one recording, at once.

    Each pair runs at the same time, both servers on core 0 and both load generators on core 1,
    so whatever else the machine does falls on both alike; each server gets its share of the
    core, and its CPU per call is its own.
    """
    servers: dict[str, ServerProcess] = {}
    try:
        for name, (env, options) in OBSERVED.items():
            servers[name] = bus_server(SMALL_DB, env=env, options=options)
        if "Metrics (pid" not in servers["otel"].output:
            raise BenchError(f"no metrics endpoint:\n{servers['otel'].output[-2000:]}")
        with ThreadPoolExecutor(2) as pool:
            for _ in range(ROUNDS):
                for name in ("otel", "sampled", "log"):
                    pair = {
                        side: pool.submit(
                            closed_loop, server, "retrieve", 8, server_pid=server.process.pid
                        )
                        for side, server in (("off", servers["off"]), (name, servers[name]))
                    }
                    for side, future in pair.items():
                        got = future.result()
                        key = f"{side}.{name}" if side == "off" else side
                        samples[f"observed.rate.{key}"].append(got["calls_per_s"])
                        samples[f"observed.cpu.{key}"].append(got["server_cpu_us_per_call"])
        print("  observability: done")
    finally:
        for server in servers.values():
            server.stop(timeout=15)


def large_list(samples: Samples) -> None:
    """1,000,000 rows: time to the first row, then the whole stream with the server's peak RSS;
    then the same for the 100,000 of them below a price (a filtered List). On the threaded
    server, then on the asyncio one (keys ``aio.large...``)."""
    for prefix, options in (("", ("--no-access-log",)), ("aio.", ("--no-access-log", "--asyncio"))):
        server = bus_server(LARGE_DB, options=options)
        try:
            pid = server.process.pid
            got = load("first-row", server, "--samples", 5)
            samples[f"{prefix}large.first_row_ms"] = got["first_row_ms"]
            price_lt = databases.price_below(LARGE_FILTERED_SHARE)
            filtered_rows = round(LARGE_ROWS * LARGE_FILTERED_SHARE)
            for key, rows, query in (
                ("large", LARGE_ROWS, ()),
                ("large_filtered", filtered_rows, ("--price-lt", price_lt)),
            ):
                before = memory_kb(pid, "VmRSS")
                Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS
                got = load("first-row", server, "--samples", 1, "--consume-all", *query)
                peak = memory_kb(pid, "VmHWM")
                if got["rows"] != rows:
                    raise BenchError(f"the list of {rows:,} rows ({key}) returned {got['rows']:,}")
                samples[f"{prefix}{key}.rss_rise_mb"] = [(peak - before) / 1024]
                samples[f"{prefix}{key}.whole_s"] = [got["whole_s"]]
                print(
                    f"  list of {rows:,} rows{' (filtered)' if query else ''}"
                    f"{' (--asyncio)' if prefix else ''}: {got['whole_s']:.1f}s, "
                    f"RSS {before // 1024} MB -> peak {peak // 1024} MB"
                )
        finally:
            server.stop(timeout=15)


# -- the table ------------------------------------------------------------------------------------


@dataclass
class Row:
    workload: str
    unit: str
    ours: list[float]
    theirs: list[float] | None = None  # round by round, paired with `ours`
    target: str = "—"
    meets: Callable[[float], bool] | None = None  # on the ratio, or on `ours` without a baseline
    labels: tuple[str, str] = ("", "")  # when the two columns are not bus vs hand-written
    # Counts summed over the rounds, out of these totals (no ratio; `meets` judges `ours`' sum).
    out_of: tuple[list[float], list[float]] | None = None


def number(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def spread(values: list[float], unit: str = "") -> str:
    text = number(statistics.median(values))
    if len(values) > 1:
        text += f" [{number(min(values))}–{number(max(values))}]"
    return f"{text} {unit}".strip()


def count_cells(row: Row) -> list[str]:
    assert row.theirs is not None and row.out_of is not None
    ours, theirs = (
        f"{sum(values):,.0f} of {sum(total):,.0f}"
        for values, total in zip((row.ours, row.theirs), row.out_of, strict=True)
    )
    met = "—" if row.meets is None else ("yes" if row.meets(sum(row.ours)) else "**no**")
    return [row.workload, ours, theirs, "—", row.target, met]


def cells(row: Row) -> list[str]:
    if row.out_of is not None:
        return count_cells(row)
    ours = spread(row.ours, row.unit) + (f" ({row.labels[0]})" if row.labels[0] else "")
    if row.theirs is None:
        theirs, ratio = "n/a", "—"
        judged = statistics.median(row.ours)
    else:
        theirs = spread(row.theirs, row.unit) + (f" ({row.labels[1]})" if row.labels[1] else "")
        ratios = [a / b for a, b in zip(row.ours, row.theirs, strict=True)]
        ratio = spread(ratios) + "×"
        judged = statistics.median(ratios)
    met = "—" if row.meets is None else ("yes" if row.meets(judged) else "**no**")
    return [row.workload, ours, theirs, ratio, row.target, met]


def rows_of(s: Samples) -> list[Row]:
    return [
        Row("retrieve, c=8: calls/s", "/s", s["retrieve.rate.bus"], s["retrieve.rate.hand"],
            "≥ 1.1×", lambda r: r >= 1.1),
        Row("retrieve, c=8: p50 latency", "ms", s["retrieve.p50.bus"], s["retrieve.p50.hand"]),
        Row("retrieve, c=8: p99 latency", "ms", s["retrieve.p99.bus"], s["retrieve.p99.hand"]),
        Row("retrieve, c=8: server CPU per call", "µs", s["retrieve.cpu.bus"],
            s["retrieve.cpu.hand"], "≤ 1.1×", lambda r: r <= 1.1),
        Row("create, c=4: calls/s", "/s", s["create.rate.bus"], s["create.rate.hand"],
            "≥ 0.90×", lambda r: r >= 0.90),
        Row("create, c=4: p50 latency", "ms", s["create.p50.bus"], s["create.p50.hand"]),
        Row("create, c=4: p99 latency", "ms", s["create.p99.bus"], s["create.p99.hand"],
            "≤ 1.5×", lambda r: r <= 1.5),
        Row("create, c=4: failed calls, all rounds", "", s["create.failed.bus"],
            s["create.failed.hand"], "0", lambda v: v == 0,
            out_of=(s["create.calls.bus"], s["create.calls.hand"])),
        Row("create, c=4: server CPU per call", "µs", s["create.cpu.bus"], s["create.cpu.hand"]),
        Row("list 1,000 rows as dicts: time per call", "ms", s["list.ms.bus"], s["list.ms.hand"],
            "≤ 0.67× (1.5× as fast)", lambda r: r <= 1 / 1.5),
        Row("list 1,000 of 100,000 rows, indexed filter: time per call", "ms",
            s["filtered.ms.bus"], s["filtered.ms.hand"], "≤ 1.0×", lambda r: r <= 1.0),
        Row("list 1,000,000 rows: server RSS rise", "MB", s["large.rss_rise_mb"],
            target="< 30 MB", meets=lambda v: v < 30),
        Row("list 1,000,000 rows: time to first row", "ms", s["large.first_row_ms"],
            target="< 50 ms", meets=lambda v: v < 50),
        Row("list 1,000,000 rows: whole stream", "s", s["large.whole_s"]),
        Row("list 100,000 of 1,000,000 rows, filtered: server RSS rise", "MB",
            s["large_filtered.rss_rise_mb"], target="< 30 MB", meets=lambda v: v < 30),
        Row("list 100,000 of 1,000,000 rows, filtered: whole stream", "s",
            s["large_filtered.whole_s"]),
        Row("retrieve, c=8: calls/s, --asyncio", "/s", s["aio.retrieve.rate.aio"],
            s["aio.retrieve.rate.hand"], "≥ 1.0×", lambda r: r >= 1.0, ("--asyncio", "")),
        Row("retrieve, c=8: calls/s, --asyncio against threaded", "/s",
            s["aio.retrieve.rate.aio"], s["aio.retrieve.rate.thr"], "≥ 1.0×",
            lambda r: r >= 1.0, ("--asyncio", "threaded")),
        Row("retrieve, c=8: p99 latency, --asyncio against threaded", "ms",
            s["aio.retrieve.p99.aio"], s["aio.retrieve.p99.thr"], labels=("--asyncio", "threaded")),
        Row("retrieve, c=8: server CPU per call, --asyncio against threaded", "µs",
            s["aio.retrieve.cpu.aio"], s["aio.retrieve.cpu.thr"], labels=("--asyncio", "threaded")),
        Row("create, c=4: calls/s, --asyncio against threaded", "/s", s["aio.create.rate.aio"],
            s["aio.create.rate.thr"], "≥ 1.0×", lambda r: r >= 1.0, ("--asyncio", "threaded")),
        Row("create, c=4: p99 latency, --asyncio against threaded", "ms",
            s["aio.create.p99.aio"], s["aio.create.p99.thr"], labels=("--asyncio", "threaded")),
        Row("list 1,000 rows as dicts: time per call, --asyncio against threaded", "ms",
            s["aio.list.ms.aio"], s["aio.list.ms.thr"], "≤ 1.0×", lambda r: r <= 1.0,
            ("--asyncio", "threaded")),
        Row("list 1,000 rows as dicts: time per call, --asyncio", "ms", s["aio.list.ms.aio"],
            s["aio.list.ms.hand"], labels=("--asyncio", "")),
        Row("list 1,000,000 rows, --asyncio: server RSS rise", "MB", s["aio.large.rss_rise_mb"],
            target="< 30 MB", meets=lambda v: v < 30),
        Row("list 1,000,000 rows, --asyncio: time to first row", "ms",
            s["aio.large.first_row_ms"], target="< 50 ms", meets=lambda v: v < 50),
        Row("list 1,000,000 rows: whole stream, --asyncio against threaded", "s",
            s["aio.large.whole_s"], s["large.whole_s"], labels=("--asyncio", "threaded")),
        Row("retrieve, c=8, 8 connections, both cores: calls/s", "/s", s["workers.rate.2"],
            s["workers.rate.1"], "≥ 1.3×", lambda r: r >= 1.3, ("--workers 2", "--workers 1")),
        Row("retrieve, c=8, 8 connections: calls/s", "/s", s["workers.rate.2"],
            s["workers.rate.1-pinned"], labels=("--workers 2, both cores",
            "--workers 1 on core 0, load on core 1")),
        Row("client CPU per retrieve, 1 thread", "µs", s["client.cpu.registry"],
            s["client.cpu.stub"], "≤ 1.15×", lambda r: r <= 1.15, ("registry", "stub")),
        Row("retrieve, c=8, tracing + metrics: server CPU per call", "µs", s["observed.cpu.otel"],
            s["observed.cpu.off.otel"], "≤ 1.1×", lambda r: r <= 1.1, ("traced", "neither")),
        Row("retrieve, c=8, tracing + metrics: calls/s, sharing core 0", "/s",
            s["observed.rate.otel"], s["observed.rate.off.otel"], labels=("traced", "neither")),
        Row("retrieve, c=8, tracing 10% sampled + metrics: server CPU per call", "µs",
            s["observed.cpu.sampled"], s["observed.cpu.off.sampled"], "≤ 1.1×",
            lambda r: r <= 1.1, ("10% traced", "neither")),
        Row("retrieve, c=8, access log to stderr: server CPU per call", "µs",
            s["observed.cpu.log"], s["observed.cpu.off.log"], labels=("logged", "not logged")),
    ]  # fmt: skip


def table(rows: list[Row]) -> str:
    header = ["workload", "django-grpc-bus", "hand-written", "ratio", "target", "met?"]
    lines = [header, *(cells(row) for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]

    def render(line: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([render(header), rule, *(render(line) for line in lines[1:])])


def versions() -> str:
    names = ("grpcio", "protobuf", "Django", "djangorestframework")
    found = ", ".join(f"{name} {metadata.version(name)}" for name in names)
    commit = subprocess.run(
        ["git", "describe", "--always", "--dirty"], cwd=HERE, capture_output=True, text=True
    ).stdout.strip()
    return f"Python {platform.python_version()}, {found}; django-grpc-bus at {commit or '?'}"


def failed_creates(samples: Samples, first_errors: dict[str, str]) -> str:
    """One line: no create failed, or how many did on which side and the first error's text."""
    failed = {side: int(sum(samples[f"create.failed.{side}"])) for side in SIDES}
    if not any(failed.values()):
        calls = ", ".join(
            f"{SIDES[side]} {sum(samples[f'create.calls.{side}']):,.0f}" for side in SIDES
        )
        return f"Failed creates: none on either side ({calls} calls)."
    parts = [
        f"{SIDES[side]} {count:,}" + (f" (first: {first_errors[side]})" if count else "")
        for side, count in failed.items()
    ]
    return "FAILED CREATES: " + "; ".join(parts) + "."


def report(text: str, elapsed: float, load_before: str) -> Path:
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "latest.md"
    path.write_text(
        f"# django-grpc-bus benchmark\n\n"
        f"- date: {now}\n- nproc: {nproc}\n- {versions()}\n"
        f"- rounds: {ROUNDS} ({WORKER_ROUNDS} for the workers rows), {WARMUP:g} s warm-up + "
        f"{SECONDS:g} s per closed-loop run\n"
        f"- wall time of the whole run: {elapsed:.0f} s\n"
        f"- load average (1, 5, 15 min) before: {load_before}; after: {load_average()} "
        f"(other processes on the machine add noise)\n\n"
        f"Cells: median over rounds [min–max]; ratio: django-grpc-bus ÷ baseline, taken round by "
        f"round. See bench/README.md.\n\n{text}\n"
    )
    return path


PROFILED = ("retrieve", "hand-retrieve", "create", "hand-create", "list", "hand-list")


def top_functions() -> str:
    """The ten functions with the most own time per workload, both servers (inprocess.py:
    the same handlers in one process under cProfile, 300 calls; call counts are exact)."""
    parts = ["## Top ten functions by own time, per workload (bench/inprocess.py --profile)"]
    for workload in PROFILED:
        done = subprocess.run(
            [*taskset(SERVER_CPUS), PYTHON, str(HERE / "inprocess.py"), workload, "-n", "300",
             "--profile", "--top", "10"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        out = done.stdout if done.returncode == 0 else done.stdout + done.stderr
        parts.append(f"### {workload}\n\n```\n{out.strip()}\n```")
    return "\n\n".join(parts)


def load_average() -> str:
    return ", ".join(f"{value:.1f}" for value in os.getloadavg())


def main() -> int:
    began = time.monotonic()
    load_before = load_average()
    print(f"django-grpc-bus benchmark: {ROUNDS} rounds, {SECONDS:g} s per closed-loop run")
    print(f"  load average before: {load_before}")
    samples: Samples = defaultdict(list)
    first_errors: dict[str, str] = {}
    if sys.argv[1:] == ["list"]:  # a quick look at one workload: no table, no results file
        try:
            prepare()
            list_only(samples)
        except BenchError as exc:
            print(f"bench failed: {exc}", file=sys.stderr)
            return 1
        listed = [row for row in rows_of(samples) if row.workload.startswith("list 1,000 rows")]
        print(table(listed[:1]))
        return 0
    try:
        prepare()
        against_handwritten(samples, first_errors)
        asyncio_side_by_side(samples)
        filtered_list(samples)
        workers(samples)
        observability(samples)
        large_list(samples)
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    text = table(rows_of(samples)) + "\n\n" + failed_creates(samples, first_errors)
    text += "\n\n" + top_functions()
    elapsed = time.monotonic() - began
    path = report(text, elapsed, load_before)
    print(f"\n{text}\n\nWall time {elapsed:.0f} s; written to {path.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
