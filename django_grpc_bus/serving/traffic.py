"""Calls in flight on one server: counted, limited, and refused while the server drains.

Each built server has its own :class:`Traffic`; its call handlers reach it through their
``Route``, so two servers in one process never share counts or draining.
"""

from __future__ import annotations

import threading
import time

import grpc


class Traffic:
    """Calls in flight on one server, and whether new ones are still accepted."""

    def __init__(self, limit: int | None = None) -> None:
        self._lock = threading.Condition()
        self.active = 0
        self.draining = False
        self.limit = limit  # MAX_CONCURRENT_RPCS; None: no limit
        self.last_call = time.monotonic()  # when a call last arrived (refused ones too)

    def enter(self, context: grpc.ServicerContext) -> None:
        """Count a call in; refused UNAVAILABLE while draining, RESOURCE_EXHAUSTED at the limit."""
        with self._lock:
            self.last_call = time.monotonic()
            if self.draining:
                context.abort(
                    grpc.StatusCode.UNAVAILABLE,
                    "The server is shutting down; retry on another instance.",
                )
            if self.limit is not None and self.active >= self.limit:
                # Refused at once rather than queued; health and reflection are not counted,
                # so a busy server still answers its probes.
                context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"The server is at its limit of {self.limit} concurrent calls; retry later.",
                )
            self.active += 1

    def leave(self) -> None:
        with self._lock:
            self.active -= 1
            if not self.active:
                self._lock.notify_all()

    def drain(self, timeout: float) -> bool:
        """Refuse new calls; wait up to `timeout` s for those in flight. True if all ended."""
        with self._lock:
            self.draining = True
            return self._lock.wait_for(lambda: not self.active, timeout)

    def wait_quiet(self, quiet: float, timeout: float) -> bool:
        """Wait up to `timeout` s until no call is in flight and none has arrived for `quiet` s.

        gRPC cancels the calls it has received but not yet handed to the server when the server
        stops (grpc/grpc#41785): stopping once clients have stopped sending (they stop picking a
        server whose health is NOT_SERVING) leaves none to cancel. True if it went quiet.
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                now = time.monotonic()
                if not self.active and now - self.last_call >= quiet:
                    return True
                if now >= deadline:
                    return False
                self._lock.wait(min(deadline - now, max(quiet - (now - self.last_call), 0.01)))
