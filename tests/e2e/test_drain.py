"""SIGTERM during a write load: nothing acknowledged is lost, nothing unacknowledged is kept.

Four client threads create authors with unique names as fast as the server answers; one slow
create (perform_create sleeps) is in flight when the server gets SIGTERM, so the drain visibly lasts
a while. Every acknowledged create (name -> id) and every failure is recorded; after the server
has exited, the database itself must hold exactly the acknowledged rows. A health poller, started
at the signal, must read NOT_SERVING while the server drains (and never SERVING again after).

Runs on whatever DATABASE_URL says (SQLite by default, PostgreSQL in CI's second run).

Any discrepancy fails the test: a lost acknowledged row, a row the client never saw
acknowledged (a call that failed yet committed), or a failure that is neither UNAVAILABLE nor a
CANCELLED at the moment the server stopped.
"""

from __future__ import annotations

import signal
import threading
import time
import uuid
from dataclasses import dataclass, field

import grpc
from catalog.models import Author
from grpc_health.v1 import health_pb2
from support import bus_env, db_query, health_status, start_server

from django_grpc_bus.testing import stub_for

GRACE_PERIOD = 5
WRITERS = 4
LOAD_BEFORE_SIGNAL = 1.5  # seconds of steady load before SIGTERM
SLOW_CREATE = 1.5  # seconds the in-flight slow create sleeps (the drain lasts about this long)
CALL_TIMEOUT = 10
REFUSAL = "The server is shutting down"  # what a call refused while draining is told
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass
class Ledger:
    """What the clients saw: acknowledged creates and failed ones, with times."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    acked: dict[str, int] = field(default_factory=dict)
    failed: list[tuple[str, grpc.StatusCode, str, float]] = field(default_factory=list)
    last_ack: float = 0.0

    def ack(self, name: str, row_id: int) -> None:
        with self.lock:
            assert name not in self.acked, name
            self.acked[name] = row_id
            self.last_ack = time.monotonic()

    def fail(self, name: str, exc: grpc.RpcError) -> None:
        with self.lock:
            self.failed.append((name, exc.code(), exc.details() or "", time.monotonic()))


def cut_at_stop(failure, signalled: float) -> bool:
    """A call cut at the stop: failed after the signal, and not with the drain's refusal."""
    if failure is None:
        return False
    _name, code, details, at = failure
    return (
        at >= signalled
        and REFUSAL not in details
        and code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
    )


def writer(target: str, tag: str, index: int, ledger: Ledger, stop: threading.Event) -> None:
    from generated_grpc.grpc import Author_pb2

    with grpc.insecure_channel(target) as channel:
        stub = stub_for(Author, channel)
        for number in range(100_000):  # bounded; `stop` ends it long before
            if stop.is_set():
                return
            name = f"drain-{tag}-{index}-{number}"
            try:
                reply = stub.Create(Author_pb2.AuthorData(name=name), timeout=CALL_TIMEOUT)
            except grpc.RpcError as exc:
                ledger.fail(name, exc)
                time.sleep(0.02)  # refused at once while draining / after exit: do not spin
            else:
                assert reply.name == name
                ledger.ack(name, reply.id)


def poll_health(target: str, statuses: list, stop: threading.Event) -> None:
    """(time, SERVING/NOT_SERVING or the error code) until `stop`."""
    with grpc.insecure_channel(target) as channel:
        while not stop.is_set():
            try:
                status = health_status(channel, timeout=1)
                statuses.append((time.monotonic(), status))
            except grpc.RpcError as exc:
                statuses.append((time.monotonic(), exc.code()))
            stop.wait(0.02)


def test_sigterm_during_write_load(fresh_database):
    from generated_grpc.grpc import Author_pb2

    tag = uuid.uuid4().hex[:8]
    ledger = Ledger()
    stop_writers, stop_health = threading.Event(), threading.Event()
    statuses: list[tuple[float, object]] = []
    server = start_server(fresh_database, env=bus_env(GRACE_PERIOD=GRACE_PERIOD))
    threads = [
        threading.Thread(
            target=writer, args=(server.target, tag, i, ledger, stop_writers), daemon=True
        )
        for i in range(WRITERS)
    ]
    poller = threading.Thread(
        target=poll_health, args=(server.target, statuses, stop_health), daemon=True
    )
    slow_name = f"slow:{SLOW_CREATE}:drain-{tag}-slow"
    try:
        with grpc.insecure_channel(server.target) as channel:
            for thread in threads:
                thread.start()
            time.sleep(LOAD_BEFORE_SIGNAL - 0.3)
            slow = stub_for(Author, channel).Create.future(
                Author_pb2.AuthorData(name=slow_name), timeout=CALL_TIMEOUT
            )
            time.sleep(0.3)  # the slow create is in perform_create's sleep now
            assert not slow.done()
            acked_before_signal = len(ledger.acked)
            signalled = time.monotonic()
            server.signal(signal.SIGTERM)
            poller.start()
            code = server.wait(timeout=GRACE_PERIOD + 3)
            exited = time.monotonic()
            if slow.exception(timeout=CALL_TIMEOUT) is None:
                ledger.ack(slow_name, slow.result().id)
            else:
                ledger.fail(slow_name, slow.exception())
    finally:
        stop_writers.set()
        stop_health.set()
        for thread in [*threads, poller]:
            if thread.ident is not None:  # started
                thread.join(timeout=CALL_TIMEOUT + 5)
        server.stop(timeout=15)  # by PID; a no-op once it has exited

    assert not any(thread.is_alive() for thread in [*threads, poller])
    assert code == 0, server.output
    assert exited - signalled < GRACE_PERIOD + 3, f"exited {exited - signalled:.1f}s after SIGTERM"
    assert "Traceback" not in server.output, server.output

    # Health turned NOT_SERVING while the server drained, and never back.
    alive = [status for at, status in statuses if at < exited]
    assert NOT_SERVING in alive, (statuses, server.output)
    after_first = alive[alive.index(NOT_SERVING) :]
    assert SERVING not in after_first, statuses

    # The load ran: creates were acknowledged before the signal.
    assert acked_before_signal >= WRITERS, ledger.acked

    # The database, read directly after the exit: exactly the acknowledged rows.
    rows = db_query(
        fresh_database,
        "SELECT name, id FROM catalog_author WHERE name LIKE %s",
        (f"%drain-{tag}-%",),
    )
    in_db = dict(rows)
    lost = set(ledger.acked) - set(in_db)
    assert not lost, f"acknowledged but not in the database: {sorted(lost)[:10]}"
    assert {name: in_db[name] for name in ledger.acked} == ledger.acked  # same ids too

    # Every failure is a refusal, and no failed create left a row. Calls that arrive at the very
    # moment the server stops get CANCELLED rather than UNAVAILABLE (gRPC's own shutdown cancels
    # them before the service sees them); they must have left nothing behind either.
    failures = {name: (name, code, details, at) for name, code, details, at in ledger.failed}
    invented = sorted(set(in_db) - set(ledger.acked))
    assert not invented, (
        f"in the database though the client saw a failure: {invented[:10]}; "
        f"their failures: {[failures.get(name) for name in invented[:10]]}"
    )
    odd = [f for f in ledger.failed if f[1] != grpc.StatusCode.UNAVAILABLE]
    assert all(cut_at_stop(f, signalled) for f in odd), odd[:10]
    # The slow create was in flight at the signal: it completes within the grace period.
    slow_failure = failures.get(slow_name)
    assert slow_failure is None, slow_failure

    codes = sorted({code.name for _name, code, _details, _at in ledger.failed})
    print(
        f"\ndrain: {len(ledger.acked)} acknowledged ({acked_before_signal} before SIGTERM), "
        f"{len(in_db)} in the database, {len(ledger.failed)} failed ({codes}); "
        f"exit {exited - signalled:.2f}s after SIGTERM; "
        f"health NOT_SERVING for {sum(1 for s in alive if s == NOT_SERVING)} polls; "
        f"{len(odd)} cancelled at the stop"
    )
