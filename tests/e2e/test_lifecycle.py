"""rungrpcserver's lifecycle as a process: graceful drain on SIGTERM/SIGINT, the grace deadline,
clear start-up errors, pre-forked workers and the --dev call log.

Every server here is a `manage.py rungrpcserver` subprocess started by the test and stopped by
its PID (ServerProcess); every gRPC call has a deadline and every wait a timeout.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
import uuid

import grpc
import pytest
from catalog.models import Author
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support import (
    SMALL_WINDOW,
    bus_env,
    db_query,
    django_subprocess,
    ensure_authors,
    free_port,
    health_status,
    server_process,
    start_server,
)

from django_grpc_bus.testing import ANNOUNCE, ServerProcess, stub_for

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
LIST_ROWS = 3000


# -- helpers -------------------------------------------------------------------------------------


def author_ids(url: str) -> set[int]:
    return {row[0] for row in db_query(url, "SELECT id FROM catalog_author")}


def wait_for(predicate, timeout: float, interval: float = 0.05):
    """Poll `predicate` until it returns something truthy (returned) or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def serving_pids(server: ServerProcess) -> list[int]:
    return [int(found["pid"]) for found in ANNOUNCE.finditer(server.output)]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: existence check only, nothing is delivered
    except ProcessLookupError:
        return False
    return True


def run_command(database_url: str, *args: str, env: dict[str, str] | None = None):
    """`manage.py rungrpcserver ARGS` expected to fail at start-up: bounded by a timeout."""
    return django_subprocess(database_url, "rungrpcserver", *args, env=env, timeout=60)


@pytest.fixture(scope="module")
def many_authors(server_database):
    """At least LIST_ROWS authors in the server database, with names long enough (~90 bytes)
    that a full List does not fit in one HTTP/2 flow-control window."""
    ensure_authors(server_database, LIST_ROWS, "author {:05d} " + "x" * 80)
    return server_database


# -- graceful stop -------------------------------------------------------------------------------


def test_sigterm_during_a_long_list_lets_the_stream_finish(many_authors):
    from generated_grpc.grpc import Author_pb2

    expected = author_ids(many_authors)
    assert len(expected) >= LIST_ROWS
    grace = 10
    server = start_server(many_authors, env=bus_env(LIST_BATCH_SIZE=10, GRACE_PERIOD=grace))
    try:
        # Small client-side HTTP/2 windows: the server cannot push the whole table into the
        # client's buffers and finish early; it has to keep streaming while it drains.
        with grpc.insecure_channel(server.target, options=SMALL_WINDOW) as channel:
            stream = stub_for(Author, channel).List(Author_pb2.AuthorListRequest(), timeout=30)
            first = next(stream)
            assert len(first.results) == 10
            received = [row.id for row in first.results]
            signalled = time.monotonic()
            server.signal(signal.SIGTERM)
            read_while_draining = 0
            for count, batch in enumerate(stream):  # bounded by the call's deadline
                received.extend(row.id for row in batch.results)
                output = server.output
                if "Stopping" in output and "Stopped" not in output:
                    read_while_draining += 1
                if count % 10 == 0:
                    time.sleep(0.05)  # a slow-ish reader: ~1.5 s for 300 messages
            assert stream.code() == grpc.StatusCode.OK, stream.details()
        assert len(received) == len(expected)
        assert set(received) == expected
        # The server announced the stop, then kept the stream going until it ended.
        assert read_while_draining > 10, server.output
        code = server.wait(timeout=grace + 5)
        assert time.monotonic() - signalled < grace + 5
    finally:
        server.stop(timeout=15)
    assert code == 0, server.output
    assert "Stopping" in server.output
    assert "Stopped." in server.output, server.output
    assert "Traceback" not in server.output, server.output


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_during_slow_create_drains(server_database, signum):
    from generated_grpc.grpc import Author_pb2

    name = f"slow:2:{uuid.uuid4().hex[:8]}"
    server = start_server(server_database, env=bus_env(GRACE_PERIOD=10))
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = stub_for(Author, channel)
            assert health_status(channel) == SERVING
            pending = stub.Create.future(Author_pb2.AuthorData(name=name), timeout=15)
            time.sleep(0.5)  # the call is in perform_create's sleep now
            assert not pending.done()
            server.signal(signum)

            # While the slow call drains, health reads NOT_SERVING (overall and per service).
            assert wait_for(lambda: health_status(channel) == NOT_SERVING, timeout=3), server.output
            assert health_status(channel, "catalog.Author") == NOT_SERVING
            assert not pending.done(), "the slow call should still be running while draining"

            # A new call is refused at once with a retryable code.
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as refused:
                stub.Retrieve(Author_pb2.AuthorLookupRequest(id=1), timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, refused.value.details()
            assert time.monotonic() - started < 1.5
            with pytest.raises(grpc.RpcError) as refused_stream:  # streams too
                list(stub.List(Author_pb2.AuthorListRequest(), timeout=5))
            assert refused_stream.value.code() == grpc.StatusCode.UNAVAILABLE

            created = pending.result(timeout=15)  # the call in flight completes OK
            assert created.name == name and created.id > 0
        code = server.wait(timeout=15)
    finally:
        server.stop(timeout=15)
    assert code == 0, server.output
    assert "Stopping" in server.output and "Stopped." in server.output, server.output
    assert "Traceback" not in server.output, server.output
    # The server is gone: the row is in the database itself.
    rows = db_query(server_database, "SELECT id FROM catalog_author WHERE name = %s", (name,))
    assert rows == [(created.id,)]


def test_idle_server_with_a_health_watch_stops_promptly(server_database):
    grace = 5
    server = start_server(server_database, env=bus_env(GRACE_PERIOD=grace))
    try:
        with grpc.insecure_channel(server.target) as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(), timeout=grace + 10
            )
            assert next(watch).status == SERVING
            signalled = time.monotonic()
            server.signal(signal.SIGTERM)
            statuses = []
            with pytest.raises(grpc.RpcError):  # the stream ends with the server
                for reply in watch:
                    statuses.append(reply.status)
            assert statuses[:1] == [NOT_SERVING]  # watchers learn of the stop first
            code = server.wait(timeout=grace + 5)
            stopped = time.monotonic() - signalled
    finally:
        server.stop(timeout=15)
    assert code == 0, server.output
    assert stopped < 2.5, f"an idle server took {stopped:.1f}s to stop (GRACE_PERIOD {grace})"


def _grace_expiry(database_url: str, name: str, grace: float):
    """Start a server with GRACE_PERIOD `grace`, have `name` (slow:N) in flight, SIGTERM it.

    Returns (client error, seconds from signal to client error, exit code, seconds from
    signal to process exit, server)."""
    from generated_grpc.grpc import Author_pb2

    server = start_server(database_url, env=bus_env(GRACE_PERIOD=grace))
    try:
        with grpc.insecure_channel(server.target) as channel:
            pending = stub_for(Author, channel).Create.future(
                Author_pb2.AuthorData(name=name), timeout=20
            )
            time.sleep(0.5)
            assert not pending.done()
            signalled = time.monotonic()
            server.signal(signal.SIGTERM)
            error = pending.exception(timeout=15)  # never hangs: bounded here and by deadline
            errored = time.monotonic() - signalled
        code = server.wait(timeout=15)
        exited = time.monotonic() - signalled
    finally:
        server.stop(timeout=15)
    return error, errored, code, exited, server


def test_grace_expiry_cancels_calls_in_flight(server_database):
    error, errored, code, _exited, server = _grace_expiry(
        server_database, f"slow:4:{uuid.uuid4().hex[:8]}", grace=1
    )
    assert error is not None, "the call should not complete OK past the grace period"
    assert error.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE), error
    assert errored < 1 + 1.5, f"the client waited {errored:.1f}s for a 1s grace period"
    assert code == 0, server.output
    assert "cancelled" in server.output, server.output
    assert "Traceback" not in server.output, server.output


def test_grace_expiry_exits_at_the_deadline(server_database):
    _error, _errored, code, exited, server = _grace_expiry(
        server_database, f"slow:4:{uuid.uuid4().hex[:8]}", grace=1
    )
    assert code == 0, server.output
    # 0.5 s signal polling + 1 s grace + shutdown: well under the 4 s the call would take.
    assert exited < 1 + 1.5, f"exited {exited:.1f}s after SIGTERM with GRACE_PERIOD 1"


def test_grace_expiry_does_not_commit_cancelled_writes(server_database):
    name = f"slow:2:{uuid.uuid4().hex[:8]}"
    error, _errored, _code, _exited, _server = _grace_expiry(server_database, name, grace=0.5)
    assert error is not None
    rows = db_query(server_database, "SELECT id FROM catalog_author WHERE name = %s", (name,))
    assert rows == [], f"{error.code()} was returned, yet the row was committed"


# -- start-up errors -----------------------------------------------------------------------------


def test_port_in_use_is_a_clear_error(server_database):
    port = free_port()
    address = f"127.0.0.1:{port}"
    server = start_server(server_database, address=address)
    try:
        for extra in ([], ["--workers", "2"]):
            result = run_command(server_database, address, *extra)
            output = result.stdout + result.stderr
            assert result.returncode != 0, output
            assert str(port) in output, output
            assert "in use" in output, output
            assert "Traceback" not in output, output
        # The first server is untouched.
        with grpc.insecure_channel(server.target) as channel:
            assert health_status(channel) == SERVING
    finally:
        code = server.stop(timeout=15)
    assert code == 0, server.output


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        pytest.param(
            ["127.0.0.1:0"], bus_env(ROOT_HANDLERS_HOOK=None), "ROOT_HANDLERS_HOOK", id="hook-unset"
        ),
        pytest.param(
            ["127.0.0.1:0"],
            bus_env(ROOT_HANDLERS_HOOK="nope.handler"),
            "ROOT_HANDLERS_HOOK",
            id="hook-not-importable",
        ),
        pytest.param(
            ["127.0.0.1:0"],
            bus_env(ROOT_HANDLERS_HOOK="faults.handlers.frozen_handler"),
            "django_grpc_bus.E016",
            id="serializer-drops-a-message-field",
        ),
        pytest.param(["abc"], {}, "'abc'", id="bad-address"),
        pytest.param(["127.0.0.1:99999"], {}, "99999", id="bad-port"),
        pytest.param(
            ["127.0.0.1:0", "--max-workers", "0"], {}, "--max-workers", id="max-workers-0"
        ),
        pytest.param(["127.0.0.1:0", "--workers", "0"], {}, "--workers", id="workers-0"),
        pytest.param(["127.0.0.1:0", "--workers", "2"], {}, "fixed port", id="workers-port-0"),
        pytest.param(["127.0.0.1:1", "--workers", "2", "--dev"], {}, "--dev", id="workers-dev"),
    ],
)
def test_startup_errors_are_clear(server_database, args, env, expected):
    result = run_command(server_database, *args, env=env)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert expected in output, output
    assert "Traceback" not in output, output
    assert "Serving" not in output, output


# -- pre-forked workers --------------------------------------------------------------------------


def _start_workers(database_url: str, count: int) -> ServerProcess:
    server = start_server(database_url, "--workers", str(count), address=f"127.0.0.1:{free_port()}")
    if not wait_for(lambda: len(serving_pids(server)) >= count, timeout=20):
        server.stop(timeout=15)
        pytest.fail(f"{count} workers did not announce themselves:\n{server.output}")
    return server


def test_workers_share_the_port_and_stop_together(server_database):
    from generated_grpc.grpc import Author_pb2

    server = _start_workers(server_database, 2)
    try:
        pids = serving_pids(server)
        assert len(pids) == 2 and len(set(pids)) == 2, server.output
        assert server.process.pid not in pids
        supervisor = re.search(
            r"Supervisor pid (\d+): 2 worker\(s\) \[(\d+), (\d+)\]", server.output
        )
        assert supervisor, server.output
        assert int(supervisor[1]) == server.process.pid
        assert sorted(int(pid) for pid in supervisor.groups()[1:]) == sorted(pids)
        for index in range(50):  # fresh channels: new connections, spread by SO_REUSEPORT
            with grpc.insecure_channel(server.target) as channel:
                created = stub_for(Author, channel).Create(
                    Author_pb2.AuthorData(name=f"worker call {index}"), timeout=10
                )
                assert created.id > 0
        server.signal(signal.SIGTERM)
        code = server.wait(timeout=20)
    finally:
        server.stop(timeout=15)
    assert code == 0, server.output
    assert server.output.count("Stopped") == 2, server.output
    for pid in pids:
        assert not pid_alive(pid), f"worker {pid} outlived the supervisor"


def test_a_killed_worker_is_replaced(server_database):
    server = _start_workers(server_database, 2)
    try:
        first, second = serving_pids(server)
        os.kill(first, signal.SIGKILL)  # a worker this test started (through the supervisor)
        assert wait_for(lambda: len(serving_pids(server)) >= 3, timeout=20), server.output
        replacement = serving_pids(server)[2]
        assert replacement not in (first, second)
        assert f"Worker {first} exited" in server.output, server.output
        assert pid_alive(replacement) and pid_alive(second)
        with grpc.insecure_channel(server.target) as channel:
            assert health_status(channel) == SERVING
        server.signal(signal.SIGTERM)
        code = server.wait(timeout=20)
    finally:
        server.stop(timeout=15)
    assert code == 0, server.output
    for pid in (first, second, replacement):
        assert not pid_alive(pid), f"worker {pid} outlived the supervisor"


# -- --dev ---------------------------------------------------------------------------------------


def test_dev_logs_one_line_per_call(server_database):
    from generated_grpc.grpc import Author_pb2

    server = start_server(server_database, "--dev", "--noreload")
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = stub_for(Author, channel)
            created = stub.Create(Author_pb2.AuthorData(name="dev log"), timeout=5)
            with pytest.raises(grpc.RpcError):
                stub.Retrieve(Author_pb2.AuthorLookupRequest(id=2**31 - 1), timeout=5)
            stub.Retrieve(Author_pb2.AuthorLookupRequest(id=created.id), timeout=5)
        pattern = re.compile(r"/catalog\.Author/(\w+) ([A-Z_]+) [\d.]+ ?ms")
        assert wait_for(lambda: len(pattern.findall(server.output)) >= 3, timeout=5), server.output
    finally:
        code = server.stop(timeout=15)
    assert code == 0, server.output
    assert pattern.findall(server.output) == [
        ("Create", "OK"),
        ("Retrieve", "NOT_FOUND"),
        ("Retrieve", "OK"),
    ], server.output


def test_dev_with_autoreloader_serves(server_database):
    server = server_process(server_database, "--dev", start_timeout=10)
    lines: list[str] = []
    process = subprocess.Popen(
        server.command,
        cwd=server.cwd,
        env=server.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )

    def read() -> None:
        for line in process.stdout:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        # Wait for the announcement, or give up early on the crash's traceback.
        wait_for(lambda: any("Serving" in s or "Traceback" in s for s in lines), timeout=15)
        output = "".join(lines)
        assert "Traceback" not in output, output
        assert ANNOUNCE.search(output), output
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)  # the reloader's parent: ends its child too
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        reader.join(timeout=5)
