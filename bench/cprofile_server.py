"""Run a server script with cProfile in every thread-pool thread; stats to $BENCH_CPROFILE.

    BENCH_CPROFILE=out.prof python bench/cprofile_server.py manage.py rungrpcserver ...

gRPC runs every call in a ``ThreadPoolExecutor`` thread, which cProfile does not follow by
itself: each pool thread gets its own profiler here, timed by the thread's CPU clock (so
waiting for work, locks or the GIL is not counted), and at exit (after SIGTERM) their stats
are merged into one pstats file. grpc's polling thread is not profiled (it is the same for any
grpcio server).
"""

from __future__ import annotations

import atexit
import cProfile
import os
import pstats
import runpy
import sys
import threading
import time
from concurrent.futures import thread as futures_thread

profiles: list[cProfile.Profile] = []
lock = threading.Lock()
run_worker = futures_thread._worker


def profiled_worker(*args, **kwargs):
    # CPU time of this thread: waiting for work, a lock or the GIL costs nothing.
    profile = cProfile.Profile(time.thread_time)
    with lock:
        profiles.append(profile)
    profile.enable()
    try:
        run_worker(*args, **kwargs)
    finally:
        profile.disable()


def dump() -> None:
    collected = []
    for profile in profiles:
        profile.create_stats()
        if profile.stats:
            collected.append(profile)
    if collected:
        stats = pstats.Stats(collected[0])
        stats.add(*collected[1:])
        stats.dump_stats(os.environ["BENCH_CPROFILE"])


def main() -> None:
    futures_thread._worker = profiled_worker  # the pool looks it up when it starts a thread
    atexit.register(dump)
    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
