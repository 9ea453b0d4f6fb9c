"""The server (serving.server) in this process: built on 127.0.0.1:0, the start-up line's
transport, draining and stopping, and two servers of one handler kept apart.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
import threading
import time
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from django_grpc_bus.handlers import BasicHandler
from django_grpc_bus.serving.server import (
    ServerConfig,
    ServerError,
    build_server,
    serve,
    transport_security,
)

from .fakes import OpenService

Code = grpc.StatusCode
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
TIMEOUT = 5


class Gate(OpenService):
    """``library.BookActions``; a Lookup for "wait" holds until the test opens the gate."""

    grpc_module = "library.book_actions_pb2_grpc"
    proto_service = "BookActions"
    atomic_actions = frozenset()
    entered = threading.Event()
    release = threading.Event()

    def lookup(self, request, context):
        if request.name == "wait":
            type(self).entered.set()
            type(self).release.wait(TIMEOUT)
        return self.response_class(count=1)


def wait_until(condition, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


@pytest.fixture
def handler(book_actions_pb2):
    Gate.entered, Gate.release = threading.Event(), threading.Event()
    handler = BasicHandler()
    handler.register(Gate)
    yield handler
    Gate.release.set()


@pytest.fixture
def started(handler):
    """Start servers of `handler` on free loopback ports; all stopped at the end."""
    built = []

    def start(**config):
        server = build_server(handler, ServerConfig(address="127.0.0.1:0", **config))
        server.start()
        built.append(server)
        return server

    yield start
    for server in built:
        server.server.stop(0)


class Client:
    """A channel to a built server: Lookup calls and health checks."""

    def __init__(self, port: int, pb) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.lookup = self.channel.unary_unary(
            "/library.BookActions/Lookup",
            request_serializer=pb.AuthorName.SerializeToString,
            response_deserializer=pb.Authors.FromString,
        )
        self.pb = pb

    def call(self, name: str = "") -> Code:
        try:
            self.lookup(self.pb.AuthorName(name=name), timeout=TIMEOUT)
        except grpc.RpcError as exc:
            return exc.code()
        return Code.OK

    def call_in_background(self, name: str = "wait") -> grpc.Future:
        return self.lookup.future(self.pb.AuthorName(name=name), timeout=TIMEOUT)

    def health(self, service: str = "") -> int:
        stub = health_pb2_grpc.HealthStub(self.channel)
        return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT).status


@pytest.fixture
def client(book_actions_pb2):
    clients = []

    def connect(server) -> Client:
        clients.append(Client(server.port, book_actions_pb2))
        return clients[-1]

    yield connect
    for each in clients:
        each.channel.close()


def test_a_built_server_listens_on_a_free_port_with_health(started, client):
    server = started()
    to_it = client(server)

    assert server.port > 0
    assert server.names == ["library.BookActions"]
    assert to_it.call() == Code.OK
    assert to_it.health() == SERVING
    assert to_it.health("library.BookActions") == SERVING
    assert server.stop_gracefully(grace=1) is True


def test_draining_refuses_new_calls_and_lets_those_in_flight_finish(started, client):
    server = started()
    to_it = client(server)
    in_flight = to_it.call_in_background()
    assert Gate.entered.wait(TIMEOUT)
    stopped = []
    stopper = threading.Thread(target=lambda: stopped.append(server.stop_gracefully(grace=10)))
    stopper.start()
    wait_until(lambda: server.traffic.draining)

    assert to_it.health() == NOT_SERVING
    assert to_it.call() == Code.UNAVAILABLE
    Gate.release.set()
    assert in_flight.result(timeout=TIMEOUT).count == 1
    stopper.join(TIMEOUT)
    assert stopped == [True]


def test_calls_past_the_grace_period_are_cut_short(started, client):
    server = started()
    in_flight = client(server).call_in_background()
    assert Gate.entered.wait(TIMEOUT)

    assert server.stop_gracefully(grace=0.1) is False
    with pytest.raises(grpc.RpcError):
        in_flight.result(timeout=TIMEOUT)


def test_two_servers_of_one_handler_keep_their_own_counts_health_and_draining(started, client):
    first, second = started(), started()
    to_first, to_second = client(first), client(second)
    in_flight = to_first.call_in_background()
    assert Gate.entered.wait(TIMEOUT)

    assert first.traffic is not second.traffic and first.health is not second.health
    assert (first.traffic.active, second.traffic.active) == (1, 0)
    stopper = threading.Thread(target=first.stop_gracefully, args=(10,))
    stopper.start()
    wait_until(lambda: first.traffic.draining)

    assert to_first.health() == NOT_SERVING
    assert to_second.health() == SERVING
    assert to_second.call() == Code.OK
    Gate.release.set()
    in_flight.result(timeout=TIMEOUT)
    stopper.join(TIMEOUT)
    assert not second.traffic.draining and to_second.call() == Code.OK


def test_the_concurrency_limit_refuses_calls_but_not_probes(settings, started, client):
    settings.MESSAGE_BUS = {**settings.MESSAGE_BUS, "MAX_CONCURRENT_RPCS": 1}
    server = started()
    to_it = client(server)
    in_flight = to_it.call_in_background()
    assert Gate.entered.wait(TIMEOUT)

    assert to_it.call() == Code.RESOURCE_EXHAUSTED
    assert to_it.health() == SERVING
    Gate.release.set()
    in_flight.result(timeout=TIMEOUT)


def test_an_address_that_cannot_be_bound_is_a_clear_error(started, handler):
    taken = started()

    with pytest.raises(ServerError, match="not an address"):
        build_server(handler, ServerConfig(address="abc"))
    with pytest.raises(ServerError, match=f"Cannot listen on 127.0.0.1:{taken.port}"):
        build_server(handler, ServerConfig(address=f"127.0.0.1:{taken.port}"))


# -- the start-up line -----------------------------------------------------------------------------


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by its own key: (certificate, key) PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "server.pem", folder / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def serve_and_stop(handler) -> list[str]:
    """``serve()`` in a thread until it has announced itself, then stopped; what it said."""
    lines: list[str] = []
    stop = threading.Event()
    announced = threading.Event()

    def announce(line: str) -> None:
        lines.append(line)
        announced.set()

    config = ServerConfig(address="127.0.0.1:0")
    kwargs = {"announce": announce, "install_signals": False, "stop_event": stop, "grace": 0}
    serving = threading.Thread(target=serve, args=(handler, config), kwargs=kwargs)
    serving.start()
    announced.wait(TIMEOUT)
    stop.set()
    serving.join(TIMEOUT)
    assert not serving.is_alive()
    return lines


@pytest.mark.parametrize(
    ("tls", "said"),
    [
        (None, "plaintext"),
        ({"CERTIFICATE": "server.pem", "PRIVATE_KEY": "server.key"}, "TLS"),
        (
            {"CERTIFICATE": "server.pem", "PRIVATE_KEY": "server.key", "CLIENT_CA": "server.pem"},
            "mTLS (client certificates required)",
        ),
    ],
)
def test_the_start_up_line_says_how_clients_connect(settings, tmp_path, handler, tls, said):
    self_signed(tmp_path)
    settings.BASE_DIR = tmp_path  # the TLS paths are relative to it
    settings.MESSAGE_BUS = {**settings.MESSAGE_BUS, "TLS": tls}

    lines = serve_and_stop(handler)

    assert transport_security() == said
    assert re.fullmatch(
        rf"Serving 1 service\(s\) on 127\.0\.0\.1:\d+ \(pid \d+\) over {re.escape(said)}: "
        r"library\.BookActions; health and reflection \(v1, v1alpha\) included\.",
        lines[0],
    ), lines[0]
    assert lines[1:] == [
        f"Stopping (pid {lines[0].split('(pid ')[1].split(')')[0]}): draining calls in flight "
        "for up to 0s.",
        "Stopped.",
    ]


def test_a_tls_file_that_cannot_be_read_is_a_clear_error(settings, tmp_path, handler):
    settings.BASE_DIR = tmp_path
    settings.MESSAGE_BUS = {
        **settings.MESSAGE_BUS,
        "TLS": {"CERTIFICATE": "missing.pem", "PRIVATE_KEY": "missing.key"},
    }

    with pytest.raises(ServerError, match="PRIVATE_KEY"):
        build_server(handler, ServerConfig(address="127.0.0.1:0"))
