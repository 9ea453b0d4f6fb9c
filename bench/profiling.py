"""Where a server spends its time under load: the top own-time functions, per call.

    .venv/bin/python bench/profiling.py retrieve [--server hand] [--tool py-spy] [--top 15]

Starts the server on core 0 (``rungrpcserver``, or the hand-written one), drives it from core
1 with load.py (Retrieve at concurrency 8, or Create at 4) and prints the functions with the
most own time (time in the function itself, not in what it calls), and own time by library.

``--tool cprofile`` (default): the server runs under bench/cprofile_server.py, which profiles
every thread-pool thread, where each call runs. Exact call counts; profiling slows
function-call-heavy code more than C code, so read shares, not absolute speed. grpc's polling
thread is left out.

``--tool py-spy`` (``.venv/bin/pip install py-spy``; not a project dependency): ``py-spy
record --gil`` samples the thread holding the GIL. py-spy does not see threads parked in futex
waits (the pool's queue, grpc's completion queue, the GIL itself) as idle, so without ``--gil``
most samples would be waits; with it, samples are few (work done without the GIL, in SQLite
or grpc's C core, is not sampled), so use long runs.

Raw output stays in bench/results/ (``profile-<server>-<rpc>.prof`` for pstats/snakeviz, or
``.txt``, collapsed stacks for speedscope/inferno).
"""

from __future__ import annotations

import argparse
import json
import pstats
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import run  # noqa: E402

LIBRARIES = (
    ("django_grpc_bus/", "django_grpc_bus"),
    ("rest_framework/", "rest_framework"),
    ("django/", "django"),
    ("grpc/", "grpc"),
    ("google/protobuf/", "protobuf"),
    ("bench/", "bench (hand-written server, generated code)"),
    ("<", "C functions and methods (sqlite3, locks, ...)"),
)


def library(where: str) -> str:
    for marker, name in LIBRARIES:
        if marker in where:
            return name
    return "python stdlib and other"


def start_load(server, rpc: str, seconds: float) -> subprocess.Popen:
    concurrency = 8 if rpc == "retrieve" else 4
    return subprocess.Popen(
        [*run.taskset(run.LOAD_CPUS), run.PYTHON, str(HERE / "load.py"), "closed-loop",
         "--target", server.target, "--rpc", rpc, "--concurrency", str(concurrency),
         "--warmup", "1", "--duration", str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def layers(stats: pstats.Stats, calls: int, top: int) -> None:
    """django_grpc_bus's own functions by inclusive time per call: which layer costs what."""
    rows = []
    for (path, line, name), (_cc, _nc, _tt, cumtime, _callers) in stats.stats.items():
        if "django_grpc_bus/" in path:
            rows.append((cumtime, f"{name} ({path.split('django_grpc_bus/')[-1]}:{line})"))
    if rows:
        print(f"django_grpc_bus functions by inclusive time ({top} largest):")
        for cumtime, label in sorted(rows, reverse=True)[:top]:
            print(f"  {cumtime / calls * 1e6:7.1f} µs  {label}")


def with_cprofile(rpc: str, kind: str, seconds: float) -> tuple[Counter, int]:
    """Own time (seconds) by function, and the number of calls the server answered."""
    output = run.RESULTS / f"profile-{kind}-{rpc}.prof"
    output.unlink(missing_ok=True)
    wrapper = (str(HERE / "cprofile_server.py"),)
    env = {"BENCH_CPROFILE": str(output)}
    start = run.bus_server if kind == "bus" else run.handwritten_server
    server = start(run.SMALL_DB, wrapper=wrapper, env=env)
    load = None
    try:
        load = start_load(server, rpc, seconds)
        result = load.communicate(timeout=seconds + 60)[0]
    finally:
        if load is not None and load.poll() is None:
            load.kill()
        server.stop(timeout=30)
    calls = json.loads(result)["calls_with_warmup"]
    stats = pstats.Stats(str(output))
    layers(stats, calls, 20)
    own: Counter[str] = Counter()
    for (path, line, name), (_cc, _nc, tottime, _ct, _callers) in stats.stats.items():
        short = path.split("site-packages/")[-1].replace(str(HERE.parent) + "/", "")
        own[f"{name} ({short}:{line})" if line else name] += tottime
    return own, calls


def with_py_spy(rpc: str, kind: str, seconds: float) -> tuple[Counter, int]:
    """Samples by leaf function (own time), and the number of calls in the sampled time."""
    py_spy = shutil.which("py-spy", path=str(Path(run.PYTHON).parent)) or shutil.which("py-spy")
    if py_spy is None:
        sys.exit("py-spy is not installed: .venv/bin/pip install py-spy")
    output = run.RESULTS / f"profile-{kind}-{rpc}.txt"
    start = run.bus_server if kind == "bus" else run.handwritten_server
    server = start(run.SMALL_DB)
    load = None
    try:
        load = start_load(server, rpc, seconds + 2)
        time.sleep(1.5)  # the load generator's start-up and warm-up
        subprocess.run(
            [py_spy, "record", "--pid", str(server.process.pid), "--duration", str(int(seconds)),
             "--rate", "500", "--format", "raw", "--function", "--gil", "--output", str(output)],
            check=True, capture_output=True, timeout=seconds + 60,
        )  # fmt: skip
        result = load.communicate(timeout=seconds + 60)[0]
    finally:
        if load is not None and load.poll() is None:
            load.kill()
        server.stop(timeout=15)
    own: Counter[str] = Counter()
    for line in output.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack:
            own[stack.rsplit(";", 1)[-1]] += int(count)
    return own, round(json.loads(result)["calls_per_s"] * int(seconds))


def summarize(own: Counter, calls: int, top: int, seconds: bool) -> None:
    """Shares of own time; with `seconds` (cProfile), also microseconds per call."""
    total = sum(own.values())

    def line(share: float, label: str) -> str:
        per_call = f"{share / calls * 1e6:7.1f} µs  " if seconds else ""
        return f"  {share / total:6.1%}  {per_call}{label}"

    print(f"{calls} calls; {total:.3g} {'s' if seconds else 'samples'} of own time in all")
    print(f"top {top} functions by own time:")
    for frame, amount in own.most_common(top):
        print(line(amount, frame))
    by_library: Counter[str] = Counter()
    for frame, amount in own.items():
        by_library[library(frame)] += amount
    print("own time by library:")
    for name, amount in by_library.most_common():
        print(line(amount, name))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rpc", choices=["retrieve", "create"])
    parser.add_argument("--server", choices=["bus", "hand"], default="bus")
    parser.add_argument("--tool", choices=["cprofile", "py-spy"], default="cprofile")
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    run.prepare()
    run.RESULTS.mkdir(exist_ok=True)
    if args.tool == "cprofile":
        own, calls = with_cprofile(args.rpc, args.server, args.seconds)
        summarize(own, calls, args.top, seconds=True)
    else:
        own, calls = with_py_spy(args.rpc, args.server, args.seconds)
        summarize(own, calls, args.top, seconds=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
