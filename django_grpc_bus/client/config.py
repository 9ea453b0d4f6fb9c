"""The servers a project consumes: ``MESSAGE_BUS['SERVLETS']`` as ``ServletConfig`` objects."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django_grpc_bus.client.exceptions import ServletMisconfigured
from django_grpc_bus.conf import bus_settings


@dataclass(frozen=True)
class ServletConfig:
    """How to reach one servlet: address(es), deadline, TLS files, default metadata, options."""

    name: str
    targets: tuple[tuple[str, int], ...]
    timeout: float | None = None
    tls: dict[str, Any] | None = None
    metadata: tuple[tuple[str, str], ...] = ()
    options: tuple[tuple[str, Any], ...] = field(default=())

    @property
    def address(self) -> str:
        return ", ".join(f"{host}:{port}" for host, port in self.targets)

    @classmethod
    def from_settings(cls, name: str, entry: Any) -> ServletConfig:
        """The servlet `name` of the settings; a malformed entry is an error naming it."""
        where = f"MESSAGE_BUS['SERVLETS'][{name!r}]"
        if not isinstance(entry, dict):
            raise ServletMisconfigured(f"{where} must be a dict with 'host' and 'port'.")
        missing = [key for key in ("host", "port") if key not in entry]
        if missing and not entry.get("hosts"):
            raise ServletMisconfigured(
                f"{where} has no {' and no '.join(map(repr, missing))} "
                "(or 'hosts'); run `manage.py check` for every problem."
            )
        try:
            return cls._from_entry(name, entry)
        except (TypeError, ValueError) as exc:
            raise ServletMisconfigured(f"{where} is not valid: {exc}") from None

    @classmethod
    def _from_entry(cls, name: str, entry: dict[str, Any]) -> ServletConfig:
        hosts = entry.get("hosts") or [(entry["host"], entry["port"])]
        targets = tuple(_split(item, entry.get("port")) for item in hosts)
        timeout = entry.get("timeout", bus_settings.SERVICE_TIMEOUT)
        metadata = tuple((str(k).lower(), str(v)) for k, v in (entry.get("metadata") or {}).items())
        return cls(
            name=name,
            targets=targets,
            timeout=timeout,
            tls=entry.get("tls"),
            metadata=metadata,
            options=tuple(tuple(option) for option in entry.get("options") or ()),
        )

    @classmethod
    def from_address(cls, address: str) -> ServletConfig:
        """An ad-hoc servlet for ``host:port`` (used by grpclist/grpccall)."""
        return cls(
            name=address, targets=(_split(address, None),), timeout=bus_settings.SERVICE_TIMEOUT
        )


def _split(item: Any, default_port: Any) -> tuple[str, int]:
    if isinstance(item, (list, tuple)):
        host, port = item
        return str(host), int(port)
    text = str(item)
    host, sep, port = text.rpartition(":")
    if sep and port.isdigit() and host:
        return host.strip("[]"), int(port)
    if default_port is None:
        raise ValueError(f"{text!r} is not host:port")
    return text.strip("[]"), int(default_port)


def servlet_names() -> list[str]:
    return sorted(bus_settings.SERVLETS or {})


def servlet_config(name: str) -> ServletConfig | None:
    """The configuration of servlet `name`, or None when there is no such servlet."""
    servlets = bus_settings.SERVLETS or {}
    if name not in servlets:
        return None
    return ServletConfig.from_settings(name, servlets[name])
