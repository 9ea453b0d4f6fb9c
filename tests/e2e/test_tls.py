"""TLS and mutual TLS of a real `rungrpcserver`, configured only through settings.

Certificates are made here with `cryptography`: a CA, a server certificate for 127.0.0.1 and
localhost (SAN IP 127.0.0.1, DNS localhost), a client certificate from the same CA, and a rogue
CA with a client certificate of its own. The server reads MESSAGE_BUS['TLS'] (absolute paths);
the client reads the servlet's `tls` from MESSAGE_BUS['SERVLETS'].
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from catalog.models import Author
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2
from support import (
    bus_env,
    free_port,
    health_status,
    servlet_entry,
    start_server,
    stop_server,
)

from django_grpc_bus.client import exceptions
from django_grpc_bus.client.registry import registry
from django_grpc_bus.serving.server import ServerConfig, serve
from django_grpc_bus.testing import ANNOUNCE, ServerProcess, stub_for

TIMEOUT = 5
REFUSED = grpc.StatusCode.UNAVAILABLE  # a failed handshake never reaches the server's code


# -- certificates --------------------------------------------------------------------------------


@dataclass
class Issued:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    key_path: Path
    cert_path: Path

    @property
    def key_pem(self) -> bytes:
        return self.key_path.read_bytes()

    @property
    def cert_pem(self) -> bytes:
        return self.cert_path.read_bytes()


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "django-grpc-bus tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _write(folder: Path, stem: str, key, cert: x509.Certificate) -> Issued:
    key_path, cert_path = folder / f"{stem}.key", folder / f"{stem}.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Issued(key, cert, key_path, cert_path)


def make_ca(folder: Path, stem: str) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    name = _name(f"{stem} CA")
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _write(folder, stem, key, cert)


def issue(folder: Path, stem: str, ca: Issued, *, server: bool) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost" if server else stem))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
    return _write(folder, stem, key, builder.sign(ca.key, hashes.SHA256()))


@dataclass
class Pki:
    ca: Issued
    server: Issued
    client: Issued
    rogue_ca: Issued
    rogue_client: Issued


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca = make_ca(folder, "ca")
    rogue_ca = make_ca(folder, "rogue-ca")
    return Pki(
        ca=ca,
        server=issue(folder, "server", ca, server=True),
        client=issue(folder, "client", ca, server=False),
        rogue_ca=rogue_ca,
        rogue_client=issue(folder, "rogue-client", rogue_ca, server=False),
    )


# -- servers -------------------------------------------------------------------------------------


def tls_server(database_url: str, tls: dict[str, str], credentials) -> ServerProcess:
    # The readiness check speaks TLS too.
    return start_server(database_url, env=bus_env(TLS=tls), credentials=credentials)


def stopped(server: ServerProcess) -> None:
    stop_server(server, timeout=15)
    assert "Traceback" not in server.output, server.output


@pytest.fixture(scope="module")
def tls(server_database, pki):
    server = tls_server(
        server_database,
        {"CERTIFICATE": str(pki.server.cert_path), "PRIVATE_KEY": str(pki.server.key_path)},
        grpc.ssl_channel_credentials(root_certificates=pki.ca.cert_pem),
    )
    try:
        yield server
    finally:
        stopped(server)


@pytest.fixture(scope="module")
def mtls(server_database, pki):
    server = tls_server(
        server_database,
        {
            "CERTIFICATE": str(pki.server.cert_path),
            "PRIVATE_KEY": str(pki.server.key_path),
            "CLIENT_CA": str(pki.ca.cert_path),
        },
        grpc.ssl_channel_credentials(
            root_certificates=pki.ca.cert_pem,
            private_key=pki.client.key_pem,
            certificate_chain=pki.client.cert_pem,
        ),
    )
    try:
        yield server
    finally:
        stopped(server)


def configure(settings, **servlets: dict) -> None:
    settings.MESSAGE_BUS = {**settings.MESSAGE_BUS, "SERVLETS": servlets}


def entry(server: ServerProcess, tls: dict | None = None, host: str = "127.0.0.1") -> dict:
    result = servlet_entry(server.port, TIMEOUT, host)
    if tls is not None:
        result["tls"] = tls
    return result


def round_trip(servlet) -> None:
    """Create, read back (unary) and find (stream) one author through the registry."""
    created = servlet.Author.create({"name": "over tls"})
    assert servlet.Author.retrieve({"id": created["id"]}) == created
    assert created["id"] in {row["id"] for row in servlet.Author.list()}
    servlet.Author.destroy({"id": created["id"]})


def refused_code(servlet) -> grpc.StatusCode:
    with pytest.raises(exceptions.CallError) as refused:
        servlet.Author.retrieve({"id": 1})
    return refused.value.code()


def plaintext_code(target: str) -> grpc.StatusCode:
    from generated_grpc.grpc import Author_pb2

    with grpc.insecure_channel(target) as channel:
        try:
            stub_for(Author, channel).Retrieve(
                Author_pb2.AuthorLookupRequest(id=1), timeout=TIMEOUT
            )
        except grpc.RpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


# -- the start-up line ---------------------------------------------------------------------------


def start_up_line(settings, tls: dict[str, str] | None) -> str:
    """What `serve()` announces with MESSAGE_BUS['TLS'] = `tls` (stopped as soon as started)."""
    from handlers import handler

    settings.MESSAGE_BUS = {**settings.MESSAGE_BUS, "TLS": tls}
    lines: list[str] = []
    stop = threading.Event()
    stop.set()
    serve(
        handler,
        ServerConfig(address="127.0.0.1:0"),
        announce=lines.append,
        install_signals=False,
        stop_event=stop,
        grace=0,
    )
    return lines[0]


def test_the_start_up_line_says_whether_clients_need_tls(settings, pki, compiled):
    pair = {"CERTIFICATE": str(pki.server.cert_path), "PRIVATE_KEY": str(pki.server.key_path)}
    plaintext = start_up_line(settings, None)
    with_tls = start_up_line(settings, pair)
    with_mtls = start_up_line(settings, {**pair, "CLIENT_CA": str(pki.ca.cert_path)})
    for line in (plaintext, with_tls, with_mtls):
        assert ANNOUNCE.match(line), line  # ServerProcess and scripts still find the port
    assert ") over plaintext: catalog." in plaintext
    assert ") over TLS: catalog." in with_tls
    assert ") over mTLS (client certificates required): catalog." in with_mtls


def test_rungrpcserver_says_tls_and_mtls(tls, mtls):
    assert ") over TLS: " in tls.output, tls.output
    assert ") over mTLS (client certificates required): " in mtls.output, mtls.output


# -- server TLS ----------------------------------------------------------------------------------


def test_client_with_the_ca_calls_a_tls_server(settings, tls, pki):
    configure(settings, secure=entry(tls, {"CA": str(pki.ca.cert_path)}))
    round_trip(registry.secure)


def test_client_reaches_the_tls_server_by_dns_name(settings, tls, pki):
    """The certificate's DNS SAN (localhost) is checked too, not only its IP SAN."""
    configure(settings, named=entry(tls, {"CA": str(pki.ca.cert_path)}, host="localhost"))
    assert registry.named.Author.retrieve(
        {"id": registry.named.Author.create({"name": "dns"})["id"]}
    )


def test_plaintext_client_is_refused_by_a_tls_server(settings, tls):
    assert plaintext_code(tls.target) == REFUSED
    configure(settings, plain=entry(tls))
    assert refused_code(registry.plain) == REFUSED


def test_a_plaintext_client_of_a_tls_server_is_told_the_server_may_require_tls(settings, tls):
    configure(settings, plain=entry(tls), closed=servlet_entry(free_port(), TIMEOUT))
    with pytest.raises(exceptions.ServletUnavailable) as refused:
        registry.plain.Author.retrieve({"id": 1})
    details = refused.value.details()
    assert details.startswith(f"servlet 'plain' at 127.0.0.1:{tls.port} is unreachable"), details
    assert details.endswith(
        " (the server may require TLS: set MESSAGE_BUS['SERVLETS']['plain']['tls'])"
    ), details
    assert "may require TLS" in str(refused.value)
    with pytest.raises(exceptions.ServletUnavailable) as unnamed:
        registry.connect(tls.target).Author  # noqa: B018
    assert unnamed.value.details().endswith(
        " (the server may require TLS: add it to MESSAGE_BUS['SERVLETS'] with 'tls')"
    )
    # Nothing listening is not a TLS problem: no hint.
    with pytest.raises(exceptions.ServletUnavailable) as closed:
        registry.closed.Author  # noqa: B018
    assert "TLS" not in closed.value.details()


def test_client_trusting_another_ca_refuses_the_server(settings, tls, pki):
    """The server's certificate is checked: a client that trusts only the rogue CA hangs up."""
    configure(settings, wrong_ca=entry(tls, {"CA": str(pki.rogue_ca.cert_path)}))
    with pytest.raises(exceptions.ServletUnavailable):
        registry.wrong_ca.Author.retrieve({"id": 1})


def test_health_over_tls(tls, pki):
    credentials = grpc.ssl_channel_credentials(root_certificates=pki.ca.cert_pem)
    with grpc.secure_channel(tls.target, credentials) as channel:
        status = health_status(channel, timeout=TIMEOUT)
    assert status == health_pb2.HealthCheckResponse.SERVING


# -- mutual TLS ----------------------------------------------------------------------------------


def test_client_with_a_certificate_calls_an_mtls_server(settings, mtls, pki):
    configure(
        settings,
        mutual=entry(
            mtls,
            {
                "CA": str(pki.ca.cert_path),
                "CERTIFICATE": str(pki.client.cert_path),
                "PRIVATE_KEY": str(pki.client.key_path),
            },
        ),
    )
    round_trip(registry.mutual)


def test_client_without_a_certificate_is_refused_by_an_mtls_server(settings, mtls, pki):
    configure(settings, anonymous=entry(mtls, {"CA": str(pki.ca.cert_path)}))
    assert refused_code(registry.anonymous) == REFUSED
    assert plaintext_code(mtls.target) == REFUSED


def test_client_certificate_from_another_ca_is_refused(settings, mtls, pki):
    configure(
        settings,
        rogue=entry(
            mtls,
            {
                "CA": str(pki.ca.cert_path),  # it trusts the server; the server does not trust it
                "CERTIFICATE": str(pki.rogue_client.cert_path),
                "PRIVATE_KEY": str(pki.rogue_client.key_path),
            },
        ),
    )
    assert refused_code(registry.rogue) == REFUSED


def test_server_certificate_cannot_stand_in_for_a_client_certificate(settings, mtls, pki):
    """A certificate issued for serverAuth only, presented by a client, is refused."""
    configure(
        settings,
        impostor=entry(
            mtls,
            {
                "CA": str(pki.ca.cert_path),
                "CERTIFICATE": str(pki.server.cert_path),
                "PRIVATE_KEY": str(pki.server.key_path),
            },
        ),
    )
    assert refused_code(registry.impostor) == REFUSED


def test_refused_clients_leave_the_mtls_server_serving(mtls, pki):
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.cert_pem,
        private_key=pki.client.key_pem,
        certificate_chain=pki.client.cert_pem,
    )
    with grpc.secure_channel(mtls.target, credentials) as channel:
        status = health_status(channel, timeout=TIMEOUT)
    assert status == health_pb2.HealthCheckResponse.SERVING
    assert mtls.process.poll() is None
