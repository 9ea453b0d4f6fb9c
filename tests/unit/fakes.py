"""Stand-ins for what grpc gives a call, so serving can be tested without a channel."""

from __future__ import annotations

from typing import Any

import grpc

from django_grpc_bus.services import BaseService


class Aborted(Exception):
    """What ``FakeContext.abort`` raises, as grpc's own ``abort`` raises to end the call."""


class FakeContext:
    """A ``grpc.ServicerContext`` recording how the call ended.

    ``finish()`` runs the callbacks grpc runs once the RPC is over (the response sent).
    """

    def __init__(self, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self.metadata = metadata
        self.callbacks: list[Any] = []
        self.active = True
        self.status: grpc.StatusCode | None = None
        self.details: str | None = None

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.status, self.details = code, details
        raise Aborted(code, details)

    def abort_with_status(self, status: grpc.Status) -> None:
        self.abort(status.code, status.details)

    def add_callback(self, callback: Any) -> bool:
        self.callbacks.append(callback)
        return True

    def finish(self) -> None:
        for callback in self.callbacks:
            callback()
        self.callbacks.clear()

    def is_active(self) -> bool:
        return self.active

    def code(self) -> grpc.StatusCode | None:
        return self.status

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata

    def peer(self) -> str:
        return "ipv4:127.0.0.1:5000"


class OpenService(BaseService):
    """A service with no authentication and no permission classes, whatever the settings."""

    authentication_classes: list[type] = []
    permission_classes: list[type] = []
