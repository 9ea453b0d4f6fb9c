"""gRPC target URIs for ``SERVLETS[name]['target']``: checked, and resolved for display.

gRPC names a server by a target URI and resolves it itself (gRPC's "naming" document):
``dns:///inventory:50051`` (or plain ``inventory:50051``), ``ipv4:10.0.0.1:50051,10.0.0.2:50051``,
``ipv6:[::1]:50051``, ``unix:/run/inventory.sock``, ``unix-abstract:name`` and ``xds:///inventory``
(the mesh's control plane names the backends). :func:`target_problem` is the check behind
``manage.py check``; :func:`resolved_addresses` is what ``grpclist`` shows, computed here because
grpcio has no API that tells which addresses a channel's resolver returned.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

DNS, IPV4, IPV6, UNIX, UNIX_ABSTRACT, XDS = "dns", "ipv4", "ipv6", "unix", "unix-abstract", "xds"
SCHEMES = (DNS, IPV4, IPV6, UNIX, UNIX_ABSTRACT, XDS)
DEFAULT_PORT = 443  # gRPC's own default when a dns/ipv4/ipv6 target names no port
EXAMPLE = (
    "Write 'target': 'dns:///inventory:50051', 'ipv4:10.0.0.1:50051,10.0.0.2:50051', "
    "'unix:/run/inventory.sock' or 'xds:///inventory'."
)


class TargetError(ValueError):
    """A string that is not a gRPC target URI; the message says which part is wrong."""


@dataclass(frozen=True)
class Target:
    """A parsed target: its scheme, and what the scheme names (addresses, a name, a path)."""

    uri: str
    scheme: str
    addresses: tuple[tuple[str, int], ...] = ()  # ipv4/ipv6 lists; dns: the name and port
    path: str = ""  # unix, unix-abstract; xds: the service name

    @property
    def may_have_several_addresses(self) -> bool:
        """True when gRPC may resolve it to more than one backend (balance, health-check)."""
        if self.scheme == DNS:
            return True
        return self.scheme in (IPV4, IPV6) and len(self.addresses) > 1


def _host_port(text: str, what: str) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or ``host`` (gRPC's default port) -> (host, port)."""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise TargetError(f"{what} {text!r} has an unclosed '[' or junk after ']'")
        port_text = rest[1:] if rest else ""
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    elif ":" in text:
        raise TargetError(f"{what} {text!r}: write an IPv6 address in brackets, [::1]:50051")
    else:
        host, port_text = text, ""
    if not host:
        raise TargetError(f"{what} {text!r} has no host")
    if port_text == "":
        return host, DEFAULT_PORT
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise TargetError(f"{what} {text!r} has no valid port (1-65535)")
    return host, int(port_text)


def _ip_list(scheme: str, rest: str) -> tuple[tuple[str, int], ...]:
    kind = ipaddress.IPv4Address if scheme == IPV4 else ipaddress.IPv6Address
    items = rest.split(",")
    if not rest or not all(items):
        raise TargetError(f"{scheme}: needs a comma-separated list of addresses with ports")
    addresses = []
    for item in items:
        host, port = _host_port(item, f"{scheme} address")
        try:
            kind(host)
        except ValueError:
            raise TargetError(f"{item!r} is not an {scheme.upper()} address with a port") from None
        addresses.append((host, port))
    return tuple(addresses)


def parse_target(uri: Any) -> Target:
    """`uri` checked against gRPC's target syntax; TargetError says what is wrong."""
    if not isinstance(uri, str) or not uri.strip():
        raise TargetError(f"must be a non-empty string, not {uri!r}")
    if uri != uri.strip() or any(c.isspace() for c in uri):
        raise TargetError(f"{uri!r} contains spaces")
    scheme, colon, rest = uri.partition(":")
    if not colon or scheme not in SCHEMES:
        if "://" in uri:
            raise TargetError(
                f"{uri!r} has the scheme {scheme!r}, which gRPC does not resolve "
                f"(schemes: {', '.join(SCHEMES)})"
            )
        # No scheme: gRPC resolves host:port through DNS.
        host, port = _host_port(uri, "address")
        return Target(uri, DNS, ((host, port),))
    if scheme in (IPV4, IPV6):
        return Target(uri, scheme, _ip_list(scheme, rest.removeprefix("///")))
    if scheme == DNS:
        if rest.startswith("//"):
            parts = urlsplit(uri)
            name = parts.path.lstrip("/")
        else:
            name = rest
        if not name:
            raise TargetError(f"{uri!r} names no host: write dns:///host:port")
        host, port = _host_port(name, "dns name")
        return Target(uri, DNS, ((host, port),))
    if scheme == XDS:
        name = rest[3:] if rest.startswith("///") else ""
        if not name or "/" in name:
            raise TargetError(f"{uri!r}: write xds:///service-name (three slashes)")
        return Target(uri, XDS, path=name)
    path = rest[2:] if scheme == UNIX and rest.startswith("///") else rest
    if not path or (scheme == UNIX and rest.startswith("//") and not rest.startswith("///")):
        raise TargetError(f"{uri!r} names no socket: write unix:/path/to.sock or unix:///path")
    return Target(uri, scheme, path=path)


def target_problem(uri: Any) -> str | None:
    """What is wrong with `uri` as a gRPC target, or None."""
    try:
        parse_target(uri)
    except TargetError as exc:
        return str(exc)
    return None


def resolved_addresses(uri: str, timeout: float = 2.0) -> list[str]:
    """The addresses `uri` stands for now, as gRPC's resolver would find them (for display).

    DNS names are looked up with the system resolver (gRPC may use c-ares, with the same
    records); ipv4/ipv6 lists are themselves; unix paths are the path; xds names are known only
    to the control plane, so the list says so.
    """
    target = parse_target(uri)
    if target.scheme in (IPV4, IPV6):
        return [_join(host, port) for host, port in target.addresses]
    if target.scheme in (UNIX, UNIX_ABSTRACT):
        return [f"{target.scheme}:{target.path}"]
    if target.scheme == XDS:
        return ["(resolved by the xDS control plane)"]
    host, port = target.addresses[0]
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        return [f"(no address: {exc})"]
    finally:
        socket.setdefaulttimeout(previous)
    seen: list[str] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        text = _join(str(sockaddr[0]), int(sockaddr[1]))
        if text not in seen:
            seen.append(text)
    return seen


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
