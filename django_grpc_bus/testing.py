"""Helpers for testing services: a real server in this process, or in a subprocess.

In-process (fast; use pytest-django's ``transactional_db`` or ``TransactionTestCase``, since
the server's threads use their own database connections)::

    from django_grpc_bus.testing import GrpcTestServer

    def test_retrieve(transactional_db):
        with GrpcTestServer() as server:          # ROOT_HANDLERS_HOOK, on a free port
            stub = server.stub(Book)              # the generated BookStub, connected
            book = stub.Retrieve(Book_pb2.BookLookupRequest(id=1))

As a separate ``manage.py rungrpcserver`` process (what production runs)::

    with ServerProcess(["python", "manage.py"], cwd=project_dir) as server:
        channel = grpc.insecure_channel(server.target)
"""

from __future__ import annotations

import importlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
from django.db import models
from grpc_health.v1 import health_pb2, health_pb2_grpc

from django_grpc_bus.conf import bus_settings
from django_grpc_bus.protogen import naming
from django_grpc_bus.serving.aio_server import AioBuiltServer, ServerThread
from django_grpc_bus.serving.server import BuiltServer, ServerConfig, build_server

ANNOUNCE = re.compile(
    r"Serving \d+ service\(s\) on (?P<host>\S+):(?P<port>\d+) \(pid (?P<pid>\d+)\)"
)


def stub_for(model: type[models.Model], channel: grpc.Channel) -> Any:
    """The generated ``<Model>Stub`` for `model`, on `channel`."""
    module = importlib.import_module(naming.python_module(model, "_pb2_grpc"))
    return getattr(module, f"{model.__name__}Stub")(channel)


def wait_until_serving(
    target: str, timeout: float = 15.0, credentials: Any = None, metadata: Any = None
) -> None:
    """Block until the server at `target` answers its health check with SERVING.

    `credentials` are TLS channel credentials; `metadata` is sent with the check (for a server
    with ``PROTECT_HEALTH_AND_REFLECTION``).
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        with (
            grpc.secure_channel(target, credentials)
            if credentials
            else grpc.insecure_channel(target)
        ) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=1, metadata=metadata
                )
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError as exc:
                last_error = exc
        time.sleep(0.05)
    raise TimeoutError(f"{target} was not SERVING within {timeout}s ({last_error})")


class GrpcTestServer:
    """A real gRPC server for `handler` (default: ROOT_HANDLERS_HOOK) in this process.

    It listens on a free loopback port; ``target`` is its address, ``channel`` a channel to
    it, ``stub(Model)`` a generated stub. Clients see exactly what ``rungrpcserver`` serves.
    ``asyncio=True`` (default: ``MESSAGE_BUS['ASYNCIO']``) serves it on the asyncio server, on
    an event loop of its own in a thread, as ``rungrpcserver --asyncio`` does.
    """

    def __init__(
        self,
        handler: Any = None,
        *,
        max_workers: int = 4,
        dev: bool = True,
        asyncio: bool | None = None,
    ) -> None:
        self.handler = handler if handler is not None else bus_settings.ROOT_HANDLERS_HOOK
        self.config = ServerConfig(address="127.0.0.1:0", max_workers=max_workers, dev=dev)
        self.asyncio = bus_settings.ASYNCIO if asyncio is None else asyncio
        self.built: BuiltServer | AioBuiltServer | None = None
        self.port = 0
        self._channel: grpc.Channel | None = None
        self._thread: ServerThread | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def channel(self) -> grpc.Channel:
        if self._channel is None:
            self._channel = grpc.insecure_channel(self.target)
        return self._channel

    def stub(self, model: type[models.Model]) -> Any:
        return stub_for(model, self.channel)

    @property
    def server(self) -> grpc.Server | grpc.aio.Server | None:
        """The running ``grpc.Server`` (``grpc.aio.Server`` with asyncio; None once stopped)."""
        return self.built.server if self.built is not None else None

    def start(self) -> GrpcTestServer:
        if self.asyncio:
            self._thread = ServerThread(self.handler, self.config)
            self.built = self._thread.start()
            self.port = self.built.port
            return self
        built = build_server(self.handler, self.config)
        self.built = built
        self.port = built.port
        built.start()
        return self

    def stop(self, grace: float = 0) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self._thread is not None:
            self._thread.stop(grace)
            self._thread = None
        elif isinstance(self.built, BuiltServer):
            self.built.stop_gracefully(grace)
        self.built = None

    def __enter__(self) -> GrpcTestServer:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()


class ServerProcess:
    """``manage.py rungrpcserver`` in a subprocess on a free loopback port, stopped by PID.

    `command` is how to run manage.py (e.g. ``[sys.executable, "manage.py"]`` or
    ``[sys.executable, "-m", "django"]`` with ``DJANGO_SETTINGS_MODULE`` in `env`). `env` is
    added to this process's environment; a ``None`` value removes a variable. `credentials`
    (TLS) and `health_metadata` are used for the readiness check.
    """

    def __init__(
        self,
        command: Sequence[str] = (sys.executable, "manage.py"),
        *,
        cwd: str | Path | None = None,
        env: dict[str, str | None] | None = None,
        args: Sequence[str] = (),
        address: str = "127.0.0.1:0",
        start_timeout: float = 30.0,
        credentials: Any = None,
        health_metadata: Any = None,
    ) -> None:
        self.command = [*command, "rungrpcserver", address, *args]
        self.cwd = cwd
        merged = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.env = {key: value for key, value in merged.items() if value is not None}
        self.start_timeout = start_timeout
        self.credentials = credentials
        self.health_metadata = health_metadata
        self.process: subprocess.Popen[str] | None = None
        self.port = 0
        self.lines: list[str] = []
        self._announced = threading.Event()
        self._reader: threading.Thread | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def start(self) -> ServerProcess:
        self.process = subprocess.Popen(
            self.command,
            cwd=self.cwd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._announced.wait(self.start_timeout) or not self.port:
            self.stop(timeout=5)
            raise RuntimeError(f"rungrpcserver did not start:\n{self.output}")
        try:
            wait_until_serving(
                self.target,
                timeout=self.start_timeout,
                credentials=self.credentials,
                metadata=self.health_metadata,
            )
        except BaseException:
            self.stop(timeout=5)  # never leave a server behind when it did not come up
            raise
        return self

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)
            found = ANNOUNCE.search(line)
            if found and not self.port:
                self.port = int(found["port"])
                self._announced.set()
        self._announced.set()  # the process ended: stop waiting

    def signal(self, signum: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signum)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        code = self.process.wait(timeout)
        if self._reader is not None:
            self._reader.join(timeout=5)
        return code

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, wait up to `timeout`, then SIGKILL: never leaves the process behind."""
        if self.process is None:
            return None
        self.signal(signal.SIGTERM)
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.wait(10)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()
