"""Pre-forked workers: N server processes sharing one port, supervised.

``serve_workers()`` forks N processes sharing the port through ``SO_REUSEPORT`` (the pattern
gRPC documents for using several cores from Python), forwards signals to them and restarts
crashed ones.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from django_grpc_bus.serving.server import ServerError, bind_failure, parse_address


def ensure_port_free(address: str) -> None:
    """Fail early when another process holds the port (workers bind with SO_REUSEPORT)."""
    host, port = parse_address(address)
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ServerError(bind_failure(address, exc)) from None


RESTART_WINDOW = 60.0  # seconds: more than restart_limit crashes within it stop the server


def serve_workers(
    count: int,
    run_worker: Callable[[int], int],
    *,
    announce: Callable[[str], None] = print,
    restart_limit: int = 5,
) -> int:
    """Fork `count` processes running `run_worker(index)`, restart crashed ones, forward signals.

    `index` is the worker's number, 0 to `count` - 1; a restarted worker keeps its predecessor's.

    More than `restart_limit` crashes within ``RESTART_WINDOW`` seconds (a worker that cannot
    start, say) stop the server with exit status 1; occasional crashes never do.

    Must be called before any gRPC server or channel exists in this process: gRPC does not
    survive a fork once its threads are running.
    """
    stopping = threading.Event()
    children: dict[int, int] = {}  # pid -> worker index
    recent_restarts: list[float] = []  # when; only those in the last RESTART_WINDOW count

    def spawn(index: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, signal.SIG_DFL)
            code = 1
            try:
                code = run_worker(index)
            except BaseException as exc:  # report, then leave without running parent code
                print(f"Worker {os.getpid()} failed: {exc}", file=sys.stderr)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        children[pid] = index

    def forward(signum: int, _frame: Any) -> None:
        stopping.set()
        for pid in list(children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    for index in range(count):
        spawn(index)
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    announce(f"Supervisor pid {os.getpid()}: {count} worker(s) {sorted(children)}.")
    exit_code = 0
    while children:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        if pid not in children:  # not one of our workers
            continue
        index = children.pop(pid)
        code = os.waitstatus_to_exitcode(status)
        if stopping.is_set():
            exit_code = exit_code or (code if code > 0 else 0)
            continue
        now = time.monotonic()
        recent_restarts[:] = [t for t in recent_restarts if now - t < RESTART_WINDOW] + [now]
        restarts = len(recent_restarts)
        if restarts > restart_limit:
            announce(f"Worker {pid} exited ({code}); too many restarts, stopping.")
            forward(signal.SIGTERM, None)
            exit_code = 1
            continue
        announce(f"Worker {pid} exited ({code}); starting a new one.")
        time.sleep(min(2.0, 0.2 * restarts))
        spawn(index)
    return exit_code
