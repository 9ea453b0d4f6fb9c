"""A draining server stops once calls stop arriving (Traffic.wait_quiet, SPEC §13): gRPC cancels
the calls it has received but not handed over when the server stops (grpc/grpc#41785)."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from django_grpc_bus.serving.traffic import Traffic


class Refused(Exception):
    pass


class Context:
    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Refused(code, details)


def test_quiet_at_once_when_no_call_came_lately():
    traffic = Traffic()
    traffic.last_call -= 1.0
    started = time.monotonic()
    assert traffic.wait_quiet(0.25, timeout=2.0) is True
    assert time.monotonic() - started < 0.1


def test_refused_calls_keep_it_from_going_quiet_until_they_stop():
    traffic = Traffic()
    traffic.drain(0)
    stop = threading.Event()

    def client() -> None:  # keeps sending to the draining server for 0.5 s
        end = time.monotonic() + 0.5
        while time.monotonic() < end and not stop.is_set():
            with pytest.raises(Refused):
                traffic.enter(Context())
            time.sleep(0.02)

    thread = threading.Thread(target=client)
    started = time.monotonic()
    thread.start()
    try:
        assert traffic.wait_quiet(0.2, timeout=3.0) is True
    finally:
        stop.set()
        thread.join()
    waited = time.monotonic() - started
    assert 0.6 <= waited < 1.5, waited  # the 0.5 s of calls, then 0.2 s of quiet


def test_bounded_when_calls_never_stop_or_one_is_in_flight():
    traffic = Traffic()
    traffic.enter(Context())  # in flight, never leaves
    started = time.monotonic()
    assert traffic.wait_quiet(0.05, timeout=0.3) is False
    assert 0.25 <= time.monotonic() - started < 1.0
    assert traffic.wait_quiet(0.05, timeout=0) is False
