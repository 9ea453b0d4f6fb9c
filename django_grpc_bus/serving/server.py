"""Building, running and stopping a gRPC server for a handler.

``build_server()`` gives a :class:`BuiltServer`: the ``grpc.Server`` with the handler's
services, health and reflection, and the state that is that server's alone (its calls in
flight, its health). ``serve()`` runs one until SIGTERM or SIGINT, then drains: health turns
NOT_SERVING, new calls to the services are refused with UNAVAILABLE, calls in flight get up to
``GRACE_PERIOD`` seconds to finish, and the process exits 0. Several processes: ``workers``;
``--dev``'s autoreloader: ``reloader``.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health

from django_grpc_bus import transport
from django_grpc_bus.conf import bus_settings
from django_grpc_bus.observability import access_log
from django_grpc_bus.observability.call_observer import CallObserver
from django_grpc_bus.observability.metrics import MetricsError
from django_grpc_bus.serving.interceptors import InfrastructureGuard
from django_grpc_bus.serving.traffic import Traffic

logger = logging.getLogger("django_grpc_bus.server")

DEFAULT_ADDRESS = "[::]:50051"
# Draining: once the calls in flight are done, the server stops when no call has arrived for
# QUIET_PERIOD s (clients that health-check have stopped picking it), or after QUIET_WAIT s.
QUIET_PERIOD = 0.25
QUIET_WAIT = 2.0


class ServerError(Exception):
    """The server cannot start: the address is taken or invalid, TLS files are missing, ..."""


@dataclass
class ServerConfig:
    """How to run a server; defaults come from MESSAGE_BUS.

    `metrics_address` (host, port): serve Prometheus' ``/metrics`` there (port 0: any free).
    """

    address: str = DEFAULT_ADDRESS
    max_workers: int | None = None
    dev: bool = False
    reuse_port: bool = False
    metrics_address: tuple[str, int] | None = None
    options: list[tuple[str, Any]] = field(default_factory=list)


def parse_address(value: str | None) -> tuple[str, int]:
    """``"[::]:50051"``, ``"127.0.0.1:0"``, ``"localhost:8000"`` or ``"50051"`` -> (host, port)."""
    value = (value or DEFAULT_ADDRESS).strip()
    try:
        return transport.parse_address(value, default_host="[::]")
    except transport.PortError:
        raise ServerError(f"{value!r} has no valid port (0-65535).") from None
    except transport.AddressError:
        raise ServerError(
            f"{value!r} is not an address: write host:port, e.g. [::]:50051."
        ) from None


def _read(path_setting: Any, what: str) -> bytes:
    try:
        return transport.read_pem(path_setting, f"MESSAGE_BUS['TLS'][{what!r}]")
    except transport.PemFileError as exc:
        raise ServerError(str(exc)) from None


def server_credentials() -> grpc.ServerCredentials | None:
    """TLS from ``MESSAGE_BUS['TLS']``: CERTIFICATE and PRIVATE_KEY, and CLIENT_CA for mTLS."""
    tls = bus_settings.TLS
    if not tls:
        return None
    for key in ("CERTIFICATE", "PRIVATE_KEY"):
        if not tls.get(key):
            raise ServerError(f"MESSAGE_BUS['TLS'] needs {key!r} (a path to a PEM file).")
    pair = (_read(tls["PRIVATE_KEY"], "PRIVATE_KEY"), _read(tls["CERTIFICATE"], "CERTIFICATE"))
    client_ca = _read(tls["CLIENT_CA"], "CLIENT_CA") if tls.get("CLIENT_CA") else None
    return grpc.ssl_server_credentials(
        [pair], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def transport_security() -> str:
    """How clients must connect, from ``MESSAGE_BUS['TLS']``, as the start-up line says it."""
    tls = bus_settings.TLS
    if not tls:
        return "plaintext"
    return "mTLS (client certificates required)" if tls.get("CLIENT_CA") else "TLS"


@dataclass
class BuiltServer:
    """A ``grpc.Server`` with a handler bound, and what belongs to that server alone."""

    server: grpc.Server
    port: int  # the bound port (the one chosen, when the address asked for port 0)
    names: list[str]  # the services' full names
    traffic: Traffic  # its calls in flight
    health: health.HealthServicer
    observer: CallObserver | None = None  # its spans and metrics (and /metrics endpoint)

    @property
    def metrics_url(self) -> str | None:
        endpoint = self.observer.endpoint if self.observer is not None else None
        return endpoint.url if endpoint is not None else None

    def start(self) -> None:
        self.server.start()

    def stop_gracefully(self, grace: float) -> bool:
        """Drain, then stop. Returns True when every call in flight finished within `grace`.

        Health turns NOT_SERVING (clients that health-check stop picking this server) and new
        calls are refused UNAVAILABLE; once those in flight are done, the server waits (within
        `grace`) for calls to stop arriving, so that gRPC's stop has none it received but had not
        handed over to cancel. Health and reflection streams (a load balancer's Watch) do not
        hold the shutdown: once the services' own calls are done, or the grace period is over,
        everything left is ended.
        """
        deadline = time.monotonic() + grace
        self.health.enter_graceful_shutdown()
        finished = self.traffic.drain(grace)
        remaining = max(deadline - time.monotonic(), 0.0)
        self.traffic.wait_quiet(QUIET_PERIOD, min(QUIET_WAIT, remaining))
        self.server.stop(0).wait(5)
        from django_grpc_bus.watch.nats.relay import stop_relay  # (models: after setup)

        stop_relay(self.traffic)
        if self.observer is not None:
            self.observer.close()
        return finished


def server_options(config: ServerConfig) -> list[tuple[str, Any]]:
    """The gRPC options of a server: message limits, SO_REUSEPORT, SERVER_OPTIONS."""
    size = bus_settings.MAX_MESSAGE_SIZE
    return [
        ("grpc.max_receive_message_length", size),
        ("grpc.max_send_message_length", size),
        ("grpc.so_reuseport", 1 if config.reuse_port else 0),
        *[tuple(option) for option in bus_settings.SERVER_OPTIONS],
        *config.options,
    ]


def configured_interceptors() -> list[Any]:
    """``MESSAGE_BUS['INTERCEPTORS']``, classes instantiated."""
    return [item() if isinstance(item, type) else item for item in bus_settings.INTERCEPTORS]


def call_observer(config: ServerConfig) -> CallObserver | None:
    """The server's spans and metrics, decided once: without a tracer, a meter or
    ``--metrics-port``, None, and calls pay one check."""
    try:
        return CallObserver.for_server(config.metrics_address)
    except MetricsError as exc:
        raise ServerError(str(exc)) from None


def add_port(
    server: grpc.Server | grpc.aio.Server,
    address: str,
    credentials: grpc.ServerCredentials | None,
) -> int:
    """Listen on `address` (TLS with `credentials`); the port bound, or ServerError."""
    try:
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError as exc:
        raise ServerError(bind_failure(address, exc)) from None
    if not port:
        raise ServerError(bind_failure(address, None))
    return port


def build_server(handler: Any, config: ServerConfig) -> BuiltServer:
    """A server with `handler`'s services, health and reflection, bound to the address.

    Not started. Its calls in flight are counted on a :class:`Traffic` of its own (limited to
    ``MAX_CONCURRENT_RPCS``), and its health reported by a servicer of its own.
    """
    interceptors = configured_interceptors()
    if bus_settings.PROTECT_HEALTH_AND_REFLECTION:
        interceptors.insert(0, InfrastructureGuard())
    server = grpc.server(
        futures.ThreadPoolExecutor(
            max_workers=config.max_workers or bus_settings.MAX_WORKERS,
            thread_name_prefix="grpc-bus",
        ),
        interceptors=interceptors,
        options=server_options(config),
    )
    traffic = Traffic(limit=bus_settings.MAX_CONCURRENT_RPCS)
    health_servicer = health.HealthServicer()
    parse_address(config.address)  # a clear error before grpc's own
    credentials = server_credentials()
    observer = call_observer(config)
    try:
        names = handler.bind_to_server(
            server,
            traffic=traffic,
            health_servicer=health_servicer,
            dev=config.dev,
            observer=observer,
        )
        port = add_port(server, config.address, credentials)
    except BaseException:
        if observer is not None:
            observer.close()  # its metrics port, taken for a server that does not start
        raise
    return BuiltServer(server, port, names, traffic, health_servicer, observer)


def bind_failure(address: str, exc: Exception | None) -> str:
    detail = f" ({exc})" if exc else ""
    return (
        f"Cannot listen on {address}: the port is in use or the address is not on this "
        f"machine{detail}. Choose another with `rungrpcserver HOST:PORT`."
    )


def announce_serving(
    announce: Callable[[str], None],
    config: ServerConfig,
    names: list[str],
    port: int,
    metrics_url: str | None,
    mode: str = "",
) -> None:
    """The start-up lines: where, over what, which services (`mode`: a last clause)."""
    host, _ = parse_address(config.address)
    announce(
        f"Serving {len(names)} service(s) on {host}:{port} (pid {os.getpid()}) over "
        f"{transport_security()}: {', '.join(names) or 'none'}; health and reflection "
        f"(v1, v1alpha) included{mode}."
    )
    if metrics_url:
        announce(f"Metrics (pid {os.getpid()}) on {metrics_url}.")


def serve(
    handler: Any,
    config: ServerConfig,
    *,
    announce: Callable[[str], None] = print,
    install_signals: bool = True,
    stop_event: threading.Event | None = None,
    exit_when_cut_short: bool = False,
    grace: float | None = None,
) -> int:
    """Run until SIGTERM/SIGINT (or `stop_event`), then stop gracefully; returns 0.

    Signal handlers are installed only on the main thread (under Django's autoreloader the
    server runs in another thread, and the reloader owns the signals). Calls in flight get
    `grace` seconds (default ``GRACE_PERIOD``) to finish. With `exit_when_cut_short`, a
    process whose calls outlived the grace period exits at once rather than waiting for
    their threads.
    """
    stop_event = stop_event or threading.Event()
    built = build_server(handler, config)
    if install_signals and threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop_event.set())
    built.start()
    announce_serving(announce, config, built.names, built.port, built.metrics_url)
    while not stop_event.wait(0.5):
        pass
    grace = float(bus_settings.GRACE_PERIOD if grace is None else grace)
    announce(f"Stopping (pid {os.getpid()}): draining calls in flight for up to {grace:g}s.")
    finished = built.stop_gracefully(grace)
    access_log.flush()  # the last calls' lines, before any os._exit
    announce("Stopped." if finished else "Stopped; some calls were cancelled at the deadline.")
    if not finished and exit_when_cut_short:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)  # the cut-short calls' threads would otherwise keep the process alive
    return 0
