"""`rungrpcserver --dev` reloads while calls are in flight, and the new child always serves.

A real ``--dev`` server (Django's autoreloader: a parent restarting a child on every change) on
a fixed loopback port, in a temporary project whose settings module (a file of its own, so
touching it disturbs no other test's server) is watched. While clients keep calls in flight
(slow Creates, health Watch streams that never end by themselves, quick Retrieves), the
settings file is touched, five times; after each reload the new child must answer its health
check SERVING and a real call, and the old child must be gone. Before the fix, the old child
stayed stuck in the interpreter's exit, waiting for the threads of its calls in flight, holding
the port: no new child, every call DEADLINE_EXCEEDED.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from pathlib import Path

import grpc
import pytest
from catalog.models import Author
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support import TESTS_DIR, free_port, health_status, server_process, stop_server

from django_grpc_bus.testing import ANNOUNCE, ServerProcess, stub_for

SERVING = health_pb2.HealthCheckResponse.SERVING
RELOADS = 5
RELOADING = "changed, reloading."
OLD_CHILD_EXIT = 10  # seconds from the reloader noticing the change to the old child's exit


def pid_alive(pid: int) -> bool:
    """True while `pid` runs (a zombie, exited but not yet reaped, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_for(predicate, timeout: float, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


class Traffic:
    """Client threads keeping calls in flight until stopped; errors during a reload are fine."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.stopping = threading.Event()
        self.threads = [
            threading.Thread(target=self._slow_creates, daemon=True),
            threading.Thread(target=self._slow_creates, daemon=True),
            threading.Thread(target=self._watches, daemon=True),
            threading.Thread(target=self._watches, daemon=True),
            threading.Thread(target=self._retrieves, daemon=True),
        ]

    def __enter__(self) -> Traffic:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=15)

    def _loop(self, call) -> None:
        while not self.stopping.is_set():
            with grpc.insecure_channel(self.target) as channel:
                try:
                    call(channel)
                except grpc.RpcError:
                    self.stopping.wait(0.1)  # the server is reloading: try again

    def _slow_creates(self) -> None:
        from generated_grpc.grpc import Author_pb2

        def call(channel):
            stub = stub_for(Author, channel)
            while not self.stopping.is_set():
                stub.Create(Author_pb2.AuthorData(name=f"slow:3:{uuid.uuid4().hex[:6]}"), timeout=8)

        self._loop(call)

    def _watches(self) -> None:
        def call(channel):
            stream = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(), timeout=30
            )
            try:
                for _reply in stream:  # open until the server goes away (or 30 s)
                    if self.stopping.is_set():
                        break
            finally:
                stream.cancel()

        self._loop(call)

    def _retrieves(self) -> None:
        from generated_grpc.grpc import Author_pb2

        def call(channel):
            stub = stub_for(Author, channel)
            while not self.stopping.wait(0.2):
                try:
                    stub.Retrieve(Author_pb2.AuthorLookupRequest(id=1), timeout=2)
                except grpc.RpcError as exc:
                    if exc.code() != grpc.StatusCode.NOT_FOUND:
                        raise

        self._loop(call)


def answers(target: str, author_id: int) -> bool:
    """True when the server at `target` is SERVING and a real call succeeds."""
    from generated_grpc.grpc import Author_pb2

    with grpc.insecure_channel(target) as channel:
        try:
            found = stub_for(Author, channel).Retrieve(
                Author_pb2.AuthorLookupRequest(id=author_id), timeout=5
            )
            return health_status(channel) == SERVING and found.id == author_id
        except grpc.RpcError:
            return False


def child_pids(output: str) -> list[int]:
    return [int(found["pid"]) for found in ANNOUNCE.finditer(output)]


def reload_once(server: ServerProcess, watched: Path, label: str) -> None:
    """Touch `watched` until the reloader notices; the old child must end, a new one start."""
    pids = child_pids(server.output)
    touched = f"{watched} {RELOADING}"
    seen = server.output.count(touched)
    mtime = watched.stat().st_mtime

    def noticed() -> bool:
        # Touched until the reloader notices (it looks once a second, and a touch before its
        # first look only sets its baseline), never once it has.
        nonlocal mtime
        if server.output.count(touched) > seen:
            return True
        mtime += 5
        os.utime(watched, (mtime, mtime))
        return False

    assert wait_for(noticed, timeout=20, interval=1.5), f"{label}\n{server.output[-3000:]}"
    assert wait_for(lambda: not pid_alive(pids[-1]), timeout=OLD_CHILD_EXIT), (
        f"{label}: the old child {pids[-1]} still runs {OLD_CHILD_EXIT}s later\n"
        f"{server.output[-3000:]}"
    )
    assert wait_for(lambda: len(child_pids(server.output)) > len(pids), timeout=20), (
        f"{label}: no new child\n{server.output[-3000:]}"
    )


@pytest.fixture
def watched_settings(tmp_path: Path) -> Path:
    """A settings module of this test's own (the test project's, imported): watched, touched."""
    path = tmp_path / f"reload_settings_{uuid.uuid4().hex[:8]}.py"
    path.write_text("from testproject.settings import *  # noqa: F403\n")
    return path


def test_dev_server_reloads_with_calls_in_flight(fresh_database, watched_settings):
    from generated_grpc.grpc import Author_pb2

    port = free_port()
    server = server_process(
        fresh_database,
        "--dev",
        address=f"127.0.0.1:{port}",
        env={
            "DJANGO_SETTINGS_MODULE": watched_settings.stem,
            "PYTHONPATH": f"{watched_settings.parent}{os.pathsep}{TESTS_DIR}",
        },
        start_timeout=20,
    )
    server.start()
    try:
        with grpc.insecure_channel(server.target) as channel:
            probe = stub_for(Author, channel).Create(
                Author_pb2.AuthorData(name="reload probe"), timeout=5
            )
        with Traffic(server.target):
            for reload in range(1, RELOADS + 1):
                time.sleep(1.5)  # calls in flight: slow Creates sleeping, Watches open
                reload_once(server, watched_settings, f"reload {reload}")
                assert wait_for(lambda: answers(server.target, probe.id), timeout=15), (
                    f"reload {reload}: the new child does not answer\n{server.output[-3000:]}"
                )
        # Every reload (ours, and any other a file change caused) started one new child.
        assert wait_for(
            lambda: len(child_pids(server.output)) == server.output.count(RELOADING) + 1,
            timeout=20,
        ), server.output
        pids = child_pids(server.output)
        assert len(pids) >= RELOADS + 1
        assert not any(pid_alive(pid) for pid in pids[:-1]), server.output
        assert "cannot schedule new futures" not in server.output, server.output
        assert "Traceback" not in server.output, server.output
    finally:
        stop_server(server, timeout=15)


def test_dev_server_waits_for_a_fix_instead_of_exiting(fresh_database, tmp_path):
    """A handler module that fails to import under --dev (a NameError in the project's code):
    the server says why and keeps watching, as runserver does; fixing the file starts it."""
    name = f"dev_handlers_{uuid.uuid4().hex[:8]}"
    module = tmp_path / f"{name}.py"
    module.write_text("handler = undefined_name\n")
    server = server_process(
        fresh_database,
        "--dev",
        env={
            "TEST_MESSAGE_BUS": f'{{"ROOT_HANDLERS_HOOK": "{name}.handler"}}',
            "PYTHONPATH": f"{tmp_path}{os.pathsep}{TESTS_DIR}",
        },
        start_timeout=60,
    )
    started: list[BaseException | None] = []

    def start() -> None:
        try:
            server.start()
            started.append(None)
        except BaseException as exc:  # reported by the assertions below
            started.append(exc)

    starter = threading.Thread(target=start, daemon=True)
    starter.start()
    try:
        waiting = "Waiting for a file to change to start again (--dev)."
        assert wait_for(lambda: waiting in server.output, timeout=30), server.output
        assert "NameError: name 'undefined_name' is not defined" in server.output
        assert server.process is not None and server.process.poll() is None  # still running
        time.sleep(1.5)  # the reloader's baseline look at the file
        module.write_text("from handlers import handler  # noqa: F401\n")
        later = module.stat().st_mtime + 5
        os.utime(module, (later, later))
        starter.join(timeout=60)
        assert started == [None], server.output
        assert answers_health(server.target), server.output
    finally:
        stop_server(server, timeout=15)


def answers_health(target: str) -> bool:
    with grpc.insecure_channel(target) as channel:
        return health_status(channel) == SERVING
