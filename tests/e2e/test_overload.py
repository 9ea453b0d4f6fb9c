"""Overload: with MAX_CONCURRENT_RPCS 2, extra calls are refused at once, never queued.

The server serves ``faults.handlers.handler``, whose ``faults.Sleeper`` Retrieve takes a second
(``faults.services.SLEEP``). Bursts of concurrent Retrieves show that at most two run at a time,
that the others get RESOURCE_EXHAUSTED within ``REFUSED_WITHIN`` seconds (so nothing waits
behind the slow calls, however many arrive), and that the server serves normally afterwards:
refused calls do not leak a slot.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
import pytest
from faults.models import Sleeper
from faults.services import SLEEP
from grpc_health.v1 import health_pb2
from support import bus_env, health_status, running_server

from django_grpc_bus.testing import stub_for

TIMEOUT = 10  # seconds, for every call
LIMIT = 2  # MAX_CONCURRENT_RPCS of the server
REFUSED_WITHIN = 0.5  # seconds
Code = grpc.StatusCode


@dataclass
class Outcome:
    code: grpc.StatusCode
    details: str
    started: float
    ended: float

    @property
    def elapsed(self) -> float:
        return self.ended - self.started


@pytest.fixture(scope="module")
def overload_server(fresh_database):
    env = bus_env(MAX_CONCURRENT_RPCS=LIMIT, ROOT_HANDLERS_HOOK="faults.handlers.handler")
    with running_server(fresh_database, env=env) as server:
        yield server


@pytest.fixture(scope="module")
def channel(overload_server):
    with grpc.insecure_channel(overload_server.target) as channel:
        yield channel


@pytest.fixture(scope="module")
def pb(compiled):
    from generated_grpc.grpc import Sleeper_pb2

    return Sleeper_pb2


@pytest.fixture(scope="module")
def sleeper(channel, pb):
    """The primary key of a Sleeper row (Create is quick: only Retrieve sleeps)."""
    return stub_for(Sleeper, channel).Create(pb.SleeperData(name="zz"), timeout=TIMEOUT).id


def burst(channel: grpc.Channel, pb, pk: int, count: int) -> list[Outcome]:
    """`count` Retrieves started together from as many threads; their outcomes."""
    stub = stub_for(Sleeper, channel)
    start = threading.Barrier(count)

    def one(_index: int) -> Outcome:
        start.wait(timeout=TIMEOUT)
        started = time.monotonic()
        try:
            stub.Retrieve(pb.SleeperLookupRequest(id=pk), timeout=TIMEOUT)
            code, details = Code.OK, ""
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details() or ""
        return Outcome(code, details, started, time.monotonic())

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(one, range(count)))


def most_at_once(outcomes: list[Outcome]) -> int:
    """The largest number of the given calls that were in flight at the same moment."""
    events = sorted(
        [(o.started, 1) for o in outcomes] + [(o.ended, -1) for o in outcomes],
        key=lambda event: (event[0], event[1]),  # an end before a start at the same instant
    )
    current = peak = 0
    for _when, change in events:
        current += change
        peak = max(peak, current)
    return peak


def check_burst(outcomes: list[Outcome]) -> list[Outcome]:
    """Check the rules for one burst; return the refused calls."""
    succeeded = [o for o in outcomes if o.code is Code.OK]
    refused = [o for o in outcomes if o.code is not Code.OK]
    assert 1 <= len(succeeded) <= LIMIT, [(o.code, o.details) for o in outcomes]
    assert most_at_once(succeeded) <= LIMIT
    assert all(o.elapsed >= SLEEP for o in succeeded)
    for outcome in refused:
        assert outcome.code is Code.RESOURCE_EXHAUSTED, (outcome.code, outcome.details)
        assert outcome.elapsed < REFUSED_WITHIN, outcome
    return refused


def test_ten_concurrent_calls_two_run_the_rest_are_refused_quickly(channel, pb, sleeper):
    outcomes = burst(channel, pb, sleeper, 10)

    refused = check_burst(outcomes)
    assert len(refused) >= 10 - LIMIT


def test_a_large_burst_is_refused_not_queued(channel, pb, sleeper):
    """Fifty calls end in about one slow call's time: the refused ones never wait."""
    started = time.monotonic()
    outcomes = burst(channel, pb, sleeper, 50)
    elapsed = time.monotonic() - started

    refused = check_burst(outcomes)
    assert len(refused) >= 50 - LIMIT
    # Queued, they would take 50 / LIMIT * SLEEP = 25 s.
    assert elapsed < SLEEP + 2, elapsed


def test_the_server_serves_normally_after_the_bursts(channel, pb, sleeper):
    burst(channel, pb, sleeper, 20)

    assert health_status(channel, timeout=TIMEOUT) == health_pb2.HealthCheckResponse.SERVING
    stub = stub_for(Sleeper, channel)
    created = stub.Create(pb.SleeperData(name="after"), timeout=TIMEOUT)
    assert stub.Retrieve(pb.SleeperLookupRequest(id=created.id), timeout=TIMEOUT).name == "after"
    # No slot leaked by the refused calls: LIMIT calls at once all run, three times over.
    for _wave in range(3):
        outcomes = burst(channel, pb, sleeper, LIMIT)
        assert [o.code for o in outcomes] == [Code.OK] * LIMIT, [o.details for o in outcomes]


def test_health_answers_while_the_services_are_at_the_limit(channel, pb, sleeper):
    stub = stub_for(Sleeper, channel)
    calls = [
        stub.Retrieve.future(pb.SleeperLookupRequest(id=sleeper), timeout=TIMEOUT)
        for _ in range(LIMIT)
    ]
    try:
        time.sleep(SLEEP / 4)  # both are in flight now
        assert health_status(channel, timeout=TIMEOUT) == health_pb2.HealthCheckResponse.SERVING
    finally:
        for call in calls:
            call.result()
