"""Database connections of a long-running `rungrpcserver` process (PostgreSQL only).

Each call is a Django request as far as the database is concerned: connections are reused up
to CONN_MAX_AGE and never leak, broken ones are replaced, cancelled streams release theirs.
Connections are counted in pg_stat_activity for the server's own database.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import dj_database_url
import grpc
import pytest
from catalog.models import Author
from support import (
    DATABASE_URL,
    SMALL_WINDOW,
    bus_env,
    ensure_authors,
    insert_authors,
    pg_connect,
    pg_connection_count,
    requires_postgres,
    start_server,
)

from django_grpc_bus.conf import DEFAULTS
from django_grpc_bus.testing import stub_for

pytestmark = requires_postgres

MAX_WORKERS = DEFAULTS["MAX_WORKERS"]
LIST_ROWS = 3000


class Activity:
    """pg_stat_activity of the server's database, seen from one monitoring connection.

    The monitor connects to the admin database (DATABASE_URL), not the server's, so that
    monitors never count themselves or each other.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.name = dj_database_url.parse(url)["NAME"]
        self.connection = pg_connect(DATABASE_URL)

    def close(self) -> None:
        self.connection.close()

    def query(self, sql: str, *params):
        return self.connection.execute(sql, params).fetchall()

    def count(self) -> int:
        """Connections to the server's database."""
        return pg_connection_count(self.connection, self.url)

    def busy_with(self, table: str) -> list[tuple]:
        """Other sessions running (or holding a transaction open over) a query on `table`."""
        return self.query(
            "SELECT pid, state, query FROM pg_stat_activity WHERE datname = %s "
            "AND pid <> pg_backend_pid() AND state IN ('active', 'idle in transaction') "
            "AND query ILIKE %s",
            self.name,
            f"%{table}%",
        )

    def terminate_others(self) -> int:
        rows = self.query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
            "AND pid <> pg_backend_pid()",
            self.name,
        )
        return len(rows)

    def wait_for_count(self, predicate, timeout: float = 5.0) -> int:
        deadline = time.monotonic() + timeout
        while True:
            count = self.count()
            if predicate(count) or time.monotonic() >= deadline:
                return count
            time.sleep(0.05)


@pytest.fixture
def activity(server_database):
    monitor = Activity(server_database)
    try:
        yield monitor
    finally:
        monitor.close()


@pytest.fixture(scope="module")
def author_id(server_database):
    return insert_authors(server_database, ["hygiene"])[0]


@pytest.fixture(scope="module")
def many_authors(server_database):
    ensure_authors(server_database, LIST_ROWS, "bulk {:05d} " + "y" * 80)
    return server_database


def retrieve_many(target: str, author_id: int, calls: int, threads: int) -> list:
    """`calls` Retrieve calls from `threads` client threads (one channel each): status codes."""
    from generated_grpc.grpc import Author_pb2

    def worker(count: int) -> list:
        codes = []
        with grpc.insecure_channel(target) as channel:
            stub = stub_for(Author, channel)
            for _ in range(count):
                try:
                    reply = stub.Retrieve(Author_pb2.AuthorLookupRequest(id=author_id), timeout=10)
                    assert reply.id == author_id
                    codes.append(grpc.StatusCode.OK)
                except grpc.RpcError as exc:
                    codes.append(exc.code())
        return codes

    share, extra = divmod(calls, threads)
    with ThreadPoolExecutor(threads) as pool:
        parts = pool.map(worker, [share + (i < extra) for i in range(threads)])
        return [code for part in parts for code in part]


def test_persistent_connections_are_bounded_by_worker_threads(server_database, activity, author_id):
    baseline = activity.wait_for_count(lambda n: n == 0, timeout=3)
    server = start_server(server_database, env={"TEST_CONN_MAX_AGE": "60"})
    peak = [baseline]
    stop_sampling = threading.Event()

    def sample() -> None:
        monitor = Activity(server_database)
        try:
            while not stop_sampling.wait(0.02):
                peak[0] = max(peak[0], monitor.count())
        finally:
            monitor.close()

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        codes = retrieve_many(server.target, author_id, calls=200, threads=20)
        assert set(codes) == {grpc.StatusCode.OK}
        after_first = activity.count()
        codes = retrieve_many(server.target, author_id, calls=200, threads=20)
        assert set(codes) == {grpc.StatusCode.OK}
        after_second = activity.count()
    finally:
        stop_sampling.set()
        sampler.join(timeout=5)
        code = server.stop(timeout=15)
    assert code == 0, server.output
    # Reused (CONN_MAX_AGE=60): at most one per server thread, however many calls.
    assert 0 < after_first <= baseline + MAX_WORKERS
    assert after_second <= baseline + MAX_WORKERS
    assert peak[0] <= baseline + MAX_WORKERS, f"peak {peak[0]} connections"
    # The process is gone, and its connections with it.
    assert activity.wait_for_count(lambda n: n == baseline) == baseline


def test_connections_closed_after_each_call_without_max_age(server_database, activity, author_id):
    baseline = activity.wait_for_count(lambda n: n == 0, timeout=3)
    server = start_server(server_database, env={"TEST_CONN_MAX_AGE": "0"})
    try:
        codes = retrieve_many(server.target, author_id, calls=100, threads=10)
        assert set(codes) == {grpc.StatusCode.OK}
        # request_finished closed every call's connection.
        settled = activity.wait_for_count(lambda n: n == baseline)
        assert settled == baseline
        assert server.process.poll() is None
    finally:
        code = server.stop(timeout=15)
    assert code == 0, server.output


@pytest.mark.parametrize("health_checks", [True, False], ids=["health-checks", "no-health-checks"])
def test_terminated_backends_are_replaced(server_database, activity, author_id, health_checks):
    workers = 4
    extra = {"TEST_CONN_HEALTH_CHECKS": "1"} if health_checks else {}
    server = start_server(
        server_database, "--max-workers", str(workers), env={"TEST_CONN_MAX_AGE": "60", **extra}
    )
    try:
        pid = server.process.pid
        codes = retrieve_many(server.target, author_id, calls=40, threads=workers)
        assert set(codes) == {grpc.StatusCode.OK}
        assert activity.count() > 0, "the server should keep its connections (CONN_MAX_AGE=60)"

        assert activity.terminate_others() > 0
        assert activity.wait_for_count(lambda n: n == 0) == 0

        codes = retrieve_many(server.target, author_id, calls=80, threads=workers)
        failures = [code for code in codes if code != grpc.StatusCode.OK]
        if health_checks:
            assert failures == []
        else:
            # Each server thread may fail once on its dead connection, with a retryable code
            # (never UNKNOWN or INTERNAL), then reconnects.
            assert set(failures) <= {grpc.StatusCode.UNAVAILABLE}, failures
            assert len(failures) <= workers, failures
        codes = retrieve_many(server.target, author_id, calls=20, threads=workers)
        assert set(codes) == {grpc.StatusCode.OK}
        # The same process served everything: no restart.
        assert server.process.poll() is None and server.process.pid == pid
        assert server.output.count("Serving") == 1
    finally:
        code = server.stop(timeout=15)
    assert code == 0, server.output
    assert "Traceback" not in server.output, server.output


def test_cancelled_list_releases_its_connection(server_database, activity, many_authors, author_id):
    from generated_grpc.grpc import Author_pb2

    baseline = activity.wait_for_count(lambda n: n == 0, timeout=3)
    server = start_server(server_database, env=bus_env(LIST_BATCH_SIZE=10))
    try:
        with grpc.insecure_channel(server.target, options=SMALL_WINDOW) as channel:
            stub = stub_for(Author, channel)
            stream = stub.List(Author_pb2.AuthorListRequest(), timeout=30)
            first = next(stream)
            assert len(first.results) == 10
            # Mid-stream, the call holds one connection, reading through a cursor.
            assert activity.count() == baseline + 1
            stream.cancel()
            with pytest.raises(grpc.RpcError) as cancelled:
                for _ in stream:
                    pass
            assert cancelled.value.code() == grpc.StatusCode.CANCELLED

            # No session is left running (or holding a transaction over) the list query.
            deadline = time.monotonic() + 5
            while (busy := activity.busy_with("catalog_author")) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert busy == [], busy
            # CONN_MAX_AGE=0: the cancelled call's connection is closed, not leaked.
            assert activity.wait_for_count(lambda n: n == baseline) == baseline

            # The server still serves, streams included.
            reply = stub.Retrieve(Author_pb2.AuthorLookupRequest(id=author_id), timeout=10)
            assert reply.id == author_id
            rows = sum(
                len(batch.results)
                for batch in stub.List(Author_pb2.AuthorListRequest(), timeout=30)
            )
            assert rows >= LIST_ROWS
    finally:
        code = server.stop(timeout=15)
    assert code == 0, server.output
