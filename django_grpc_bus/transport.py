"""What the server and the client share about connections: host:port text and TLS (PEM) files.

No Django REST framework and nothing of serving or the client here; paths are resolved as every
``MESSAGE_BUS`` path is, against ``BASE_DIR``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django_grpc_bus.conf import resolve_path


class AddressError(ValueError):
    """Text that is not ``host:port`` (nor, where one is allowed, a bare port)."""


class PortError(AddressError):
    """``host:port`` text whose port is not a number from 0 to 65535."""


def parse_address(text: str, default_host: str | None = None) -> tuple[str, int]:
    """``"127.0.0.1:50051"``, ``"[::1]:50051"``, or with `default_host` ``"50051"`` -> (host, port).

    The host is kept as written (an IPv6 address keeps its brackets); the port is 0-65535.
    """
    if default_host is not None and text.isdigit():
        host, port = default_host, text
    else:
        host, sep, port = text.rpartition(":")
        if not sep or not host:
            raise AddressError(f"{text!r} is not host:port")
    if not port.isdigit() or int(port) > 65535:
        raise PortError(f"{text!r} has no valid port (0-65535)")
    return host, int(port)


class PemFileError(OSError):
    """A TLS file that cannot be read; the message names the setting and the path."""


def pem_file_problem(value: Any) -> str | None:
    """Why `value` cannot name a PEM file, said after the setting's name; None when it can."""
    if not isinstance(value, (str, Path)):
        return f"must be a path, not {value!r}."
    if not resolve_path(value).is_file():
        return f"is {resolve_path(value)}, which is not a file."
    return None


def read_pem(value: str | Path, setting: str) -> bytes:
    """The bytes of the PEM file `value` (relative to BASE_DIR) that `setting` names."""
    path = resolve_path(value)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise PemFileError(f"{setting}: cannot read {path}: {exc}") from None
