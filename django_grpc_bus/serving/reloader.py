"""``rungrpcserver --dev``: serving under Django's autoreloader, stopped before each restart."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from typing import Any

from django.utils import autoreload

RELOAD_GRACE = 1.0  # seconds calls in flight get when --dev restarts for a code change
RELOAD_STOP_TIMEOUT = RELOAD_GRACE + 10.0  # the stop's drain, then grpc's own (bounded) stop


def serve_with_reloader(serve_until: Callable[[threading.Event], Any]) -> None:
    """Run `serve_until(stop_event)` under Django's autoreloader, stopping it before any exit.

    The reloader keeps the main thread (it leaves with ``sys.exit(3)`` when a file changes,
    ``sys.exit(0)`` on SIGTERM) and serves from a daemon thread. A server still running as
    the interpreter exits can hang the process: the exit shuts the thread pool down and waits
    for its workers, which calls in flight keep busy, and a call arriving meanwhile kills
    grpc's serving thread ("cannot schedule new futures after shutdown"), after which no call
    in flight can finish. The port stays taken and no new process starts. So the main thread
    sets `stop_event`, waits for the server to stop (calls in flight get ``RELOAD_GRACE``
    seconds, then are cancelled), and leaves at once with the reloader's exit status.
    """
    stop_event = threading.Event()
    started = threading.Event()
    stopped = threading.Event()

    def main() -> None:
        started.set()
        try:
            serve_until(stop_event)
        finally:
            stopped.set()

    status: Any = 0
    try:
        autoreload.run_with_reloader(main)
    except SystemExit as exc:
        status = exc.code
        raise
    finally:
        if started.is_set():  # the reloader's child, which serves (its parent only restarts it)
            stop_event.set()
            stopped.wait(RELOAD_STOP_TIMEOUT)
            sys.stdout.flush()
            sys.stderr.flush()
            # Not waiting for threads of calls that were cut short, nor for anything else.
            os._exit(0 if status is None else status if isinstance(status, int) else 1)
