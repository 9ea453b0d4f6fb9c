"""Building, running and stopping a gRPC server for a handler; pre-forked workers.

``serve()`` runs one server until SIGTERM or SIGINT, then drains: health turns NOT_SERVING,
new calls to the services are refused with UNAVAILABLE, calls in flight get up to
``GRACE_PERIOD`` seconds to finish, and the process exits 0. ``serve_workers()`` forks N such
processes sharing the port through ``SO_REUSEPORT`` (the pattern gRPC documents for using
several cores from Python) and supervises them.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from django.utils import autoreload

from django_grpc_bus.conf import bus_settings, resolve_path
from django_grpc_bus.serving.calls import traffic
from django_grpc_bus.serving.interceptors import InfrastructureGuard

logger = logging.getLogger("django_grpc_bus.server")

DEFAULT_ADDRESS = "[::]:50051"


class ServerError(Exception):
    """The server cannot start: the address is taken or invalid, TLS files are missing, ..."""


@dataclass
class ServerConfig:
    """How to run a server; defaults come from MESSAGE_BUS."""

    address: str = DEFAULT_ADDRESS
    max_workers: int | None = None
    dev: bool = False
    log_calls: bool = False
    reuse_port: bool = False
    options: list[tuple[str, Any]] = field(default_factory=list)


def parse_address(value: str | None) -> tuple[str, int]:
    """``"[::]:50051"``, ``"127.0.0.1:0"``, ``"localhost:8000"`` or ``"50051"`` -> (host, port)."""
    value = (value or DEFAULT_ADDRESS).strip()
    if value.isdigit():
        host, port_text = "[::]", value
    else:
        host, sep, port_text = value.rpartition(":")
        if not sep or not host:
            raise ServerError(f"{value!r} is not an address: write host:port, e.g. [::]:50051.")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ServerError(f"{value!r} has no valid port (0-65535).")
    return host, int(port_text)


def _read(path_setting: Any, what: str) -> bytes:
    path = resolve_path(path_setting)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ServerError(f"MESSAGE_BUS['TLS'][{what!r}]: cannot read {path}: {exc}") from None


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


def build_server(handler: Any, config: ServerConfig) -> tuple[grpc.Server, int, list[str]]:
    """A server with `handler`'s services, health and reflection, bound to the address.

    Returns the server (not started), the bound port (useful when the address asked for port
    0) and the names of the services.
    """
    size = bus_settings.MAX_MESSAGE_SIZE
    options = [
        ("grpc.max_receive_message_length", size),
        ("grpc.max_send_message_length", size),
        ("grpc.so_reuseport", 1 if config.reuse_port else 0),
        *[tuple(option) for option in bus_settings.SERVER_OPTIONS],
        *config.options,
    ]
    interceptors = [
        item() if isinstance(item, type) else item for item in bus_settings.INTERCEPTORS
    ]
    if bus_settings.PROTECT_HEALTH_AND_REFLECTION:
        interceptors.insert(0, InfrastructureGuard())
    server = grpc.server(
        futures.ThreadPoolExecutor(
            max_workers=config.max_workers or bus_settings.MAX_WORKERS,
            thread_name_prefix="grpc-bus",
        ),
        interceptors=interceptors,
        options=options,
    )
    traffic.limit = bus_settings.MAX_CONCURRENT_RPCS
    names = handler.bind_to_server(server, dev=config.dev, log_calls=config.log_calls)
    parse_address(config.address)  # a clear error before grpc's own
    credentials = server_credentials()
    try:
        if credentials is None:
            port = server.add_insecure_port(config.address)
        else:
            port = server.add_secure_port(config.address, credentials)
    except RuntimeError as exc:
        raise ServerError(_bind_failure(config.address, exc)) from None
    if not port:
        raise ServerError(_bind_failure(config.address, None))
    return server, port, names


def _bind_failure(address: str, exc: Exception | None) -> str:
    detail = f" ({exc})" if exc else ""
    return (
        f"Cannot listen on {address}: the port is in use or the address is not on this "
        f"machine{detail}. Choose another with `rungrpcserver HOST:PORT`."
    )


def stop_gracefully(server: grpc.Server, handler: Any, grace: float) -> bool:
    """Drain, then stop. Returns True when every call in flight finished within `grace`.

    Health and reflection streams (a load balancer's Watch) do not hold the shutdown: once
    the services' own calls are done, or the grace period is over, everything left is ended.
    """
    handler.enter_graceful_shutdown()
    finished = traffic.drain(grace)
    server.stop(0).wait(5)
    return finished


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
    server, port, names = build_server(handler, config)
    if install_signals and threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop_event.set())
    traffic.reopen()
    server.start()
    host, _ = parse_address(config.address)
    announce(
        f"Serving {len(names)} service(s) on {host}:{port} (pid {os.getpid()}) over "
        f"{transport_security()}: {', '.join(names) or 'none'}; health and reflection "
        "(v1, v1alpha) included."
    )
    while not stop_event.wait(0.5):
        pass
    grace = float(bus_settings.GRACE_PERIOD if grace is None else grace)
    announce(f"Stopping (pid {os.getpid()}): draining calls in flight for up to {grace:g}s.")
    finished = stop_gracefully(server, handler, grace)
    announce("Stopped." if finished else "Stopped; some calls were cancelled at the deadline.")
    if not finished and exit_when_cut_short:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)  # the cut-short calls' threads would otherwise keep the process alive
    return 0


# -- --dev: Django's autoreloader ----------------------------------------------------------------

RELOAD_GRACE = 1.0  # seconds calls in flight get when --dev restarts for a code change
RELOAD_STOP_TIMEOUT = RELOAD_GRACE + 10.0  # the stop's drain, then grpc's own (bounded) stop


def serve_with_reloader(serve_until: Callable[[threading.Event], Any]) -> None:
    """Run `serve_until(stop_event)` under Django's autoreloader, stopping it before any exit.

    The reloader keeps the main thread (it leaves with ``sys.exit(3)`` when a file changes,
    ``sys.exit(0)`` on SIGTERM) and serves from a daemon thread. A server still running as
    the interpreter exits can hang the process: the exit shuts the thread pool down and waits
    for its workers, which calls in flight keep busy, and a call arriving meanwhile kills
    grpc's serving thread ("cannot schedule new futures after shutdown"), after which no call
    in flight can finish. The port stays taken and no new process starts. So the main thread
    sets `stop_event`, waits for the server to stop (calls in flight get ``RELOAD_GRACE``
    seconds, then are cancelled), and leaves at once with the reloader's exit status.
    """
    stop_event = threading.Event()
    started = threading.Event()
    stopped = threading.Event()

    def main() -> None:
        started.set()
        try:
            serve_until(stop_event)
        finally:
            stopped.set()

    status: Any = 0
    try:
        autoreload.run_with_reloader(main)
    except SystemExit as exc:
        status = exc.code
        raise
    finally:
        if started.is_set():  # the reloader's child, which serves (its parent only restarts it)
            stop_event.set()
            stopped.wait(RELOAD_STOP_TIMEOUT)
            sys.stdout.flush()
            sys.stderr.flush()
            # Not waiting for threads of calls that were cut short, nor for anything else.
            os._exit(0 if status is None else status if isinstance(status, int) else 1)


# -- pre-forked workers --------------------------------------------------------------------------


def ensure_port_free(address: str) -> None:
    """Fail early when another process holds the port (workers bind with SO_REUSEPORT)."""
    host, port = parse_address(address)
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ServerError(_bind_failure(address, exc)) from None


RESTART_WINDOW = 60.0  # seconds: more than restart_limit crashes within it stop the server


def serve_workers(
    count: int,
    run_worker: Callable[[], int],
    *,
    announce: Callable[[str], None] = print,
    restart_limit: int = 5,
) -> int:
    """Fork `count` processes running `run_worker`, restart crashed ones, forward signals.

    More than `restart_limit` crashes within ``RESTART_WINDOW`` seconds (a worker that cannot
    start, say) stop the server with exit status 1; occasional crashes never do.

    Must be called before any gRPC server or channel exists in this process: gRPC does not
    survive a fork once its threads are running.
    """
    stopping = threading.Event()
    children: dict[int, int] = {}  # pid -> worker index
    recent_restarts: list[float] = []  # when; only those in the last RESTART_WINDOW count

    def spawn(index: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, signal.SIG_DFL)
            code = 1
            try:
                code = run_worker()
            except BaseException as exc:  # report, then leave without running parent code
                print(f"Worker {os.getpid()} failed: {exc}", file=sys.stderr)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        children[pid] = index

    def forward(signum: int, _frame: Any) -> None:
        stopping.set()
        for pid in list(children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    for index in range(count):
        spawn(index)
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    announce(f"Supervisor pid {os.getpid()}: {count} worker(s) {sorted(children)}.")
    exit_code = 0
    while children:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        index = children.pop(pid, None)
        if index is None:
            continue
        code = os.waitstatus_to_exitcode(status)
        if stopping.is_set():
            exit_code = exit_code or (code if code > 0 else 0)
            continue
        now = time.monotonic()
        recent_restarts[:] = [t for t in recent_restarts if now - t < RESTART_WINDOW] + [now]
        restarts = len(recent_restarts)
        if restarts > restart_limit:
            announce(f"Worker {pid} exited ({code}); too many restarts, stopping.")
            forward(signal.SIGTERM, None)
            exit_code = 1
            continue
        announce(f"Worker {pid} exited ({code}); starting a new one.")
        time.sleep(min(2.0, 0.2 * restarts))
        spawn(index)
    return exit_code
