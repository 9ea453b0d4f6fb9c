"""The servers a project consumes: ``MESSAGE_BUS['SERVLETS']`` as ``ServletConfig`` objects.

:func:`servlet_problems` is the one schema of a ``SERVLETS`` entry: ``manage.py check`` reports
its problems (``checks.py`` gives them their ids), and ``ServletConfig.from_settings`` refuses an
entry with a serious one, so the client never uses what the checks call an error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from django_grpc_bus.client import targets
from django_grpc_bus.client.exceptions import ServletMisconfigured
from django_grpc_bus.conf import bus_settings
from django_grpc_bus.identifiers import is_python_name
from django_grpc_bus.transport import AddressError, parse_address, pem_file_problem

SERVLET_KEYS = frozenset(
    {
        "host",
        "port",
        "hosts",
        "target",
        "timeout",
        "tls",
        "metadata",
        "options",
        "interceptors",
        "service_config",
    }
)
SERVLET_TLS_KEYS = frozenset({"CA", "CERTIFICATE", "PRIVATE_KEY"})
EXAMPLE = "Write {'host': '127.0.0.1', 'port': 50051}."

# What a problem is about; `name` and `unknown key` are warnings, the others errors.
NAME = "name"  # the servlet's name cannot be written registry.<name>
ENTRY = "entry"  # not a dict; 'host' or 'port' missing; 'host' not a host; 'target' and 'host'
ADDRESS = "address"  # 'port', 'hosts' or 'target' not valid
SETTING = "setting"  # 'timeout', 'metadata', 'tls', 'options', 'interceptors', 'service_config'

UNKNOWN_KEY = "unknown key"  # a key that is no servlet setting (ignored)
WARNINGS = frozenset({NAME, UNKNOWN_KEY})


@dataclass(frozen=True)
class ServletProblem:
    """One mistake in a ``SERVLETS`` entry: its kind, the key at fault, what is wrong, the fix."""

    kind: str
    key: str | None  # the entry's key at fault; None for the entry itself or its name
    message: str  # names MESSAGE_BUS['SERVLETS'][name] (and the key)
    hint: str | None = None

    @property
    def serious(self) -> bool:
        return self.kind not in WARNINGS


def servlet_problems(name: Any, entry: Any) -> list[ServletProblem]:
    """Every problem of the ``SERVLETS`` entry `name`, in the order ``manage.py check`` gives."""
    where = f"MESSAGE_BUS['SERVLETS'][{name!r}]"
    problems: list[ServletProblem] = []
    if not is_python_name(name):
        problems.append(
            ServletProblem(
                NAME,
                None,
                f"{where}: the servlet name is not a Python identifier, so "
                "`registry.<name>` cannot reach it.",
                hint=f"Rename it, or reach it as registry[{name!r}].",
            )
        )
    if not isinstance(entry, dict):
        problems.append(
            ServletProblem(
                ENTRY,
                None,
                f"{where} must be a dict with 'host' and 'port', not {type(entry).__name__}.",
                hint=EXAMPLE,
            )
        )
        return problems
    missing = [key for key in ("host", "port") if key not in entry]
    if "target" in entry:
        missing = []
        problems += _target_problems(where, entry)
    elif "hosts" in entry:
        missing = []
        problems += _hosts_problems(where, entry["hosts"])
    problems += _setting_problems(where, entry)
    if missing:
        problems.append(
            ServletProblem(
                ENTRY,
                missing[0] if len(missing) == 1 else None,
                f"{where} has no {' and no '.join(repr(k) for k in missing)}.",
                hint=EXAMPLE,
            )
        )
    host = entry.get("host")
    if "host" in entry and (not isinstance(host, str) or not host.strip()):
        problems.append(
            ServletProblem(
                ENTRY, "host", f"{where}['host'] must be a non-empty string, not {host!r}."
            )
        )
    port = entry.get("port")
    if "port" in entry and not _is_port(port):
        problems.append(
            ServletProblem(
                ADDRESS,
                "port",
                f"{where}['port'] must be an integer from 1 to 65535, not {port!r}.",
                hint="Ports are integers: 'port': 50051, not '50051'.",
            )
        )
    for key in sorted(set(entry) - SERVLET_KEYS, key=str):
        problems.append(
            ServletProblem(
                UNKNOWN_KEY,
                key,
                f"{where}[{key!r}] is not a servlet setting and is ignored.",
                hint=f"Servlet keys: {', '.join(sorted(SERVLET_KEYS))}.",
            )
        )
    return problems


def _is_port(port: Any) -> bool:
    return isinstance(port, int) and not isinstance(port, bool) and 1 <= port <= 65535


def _is_host_and_port(item: Any) -> bool:
    if isinstance(item, (list, tuple)) and len(item) == 2:
        host, port = item
    elif isinstance(item, str):
        try:
            host, port = parse_address(item)
        except AddressError:
            return False
    else:
        return False
    return isinstance(host, str) and bool(host.strip("[]")) and _is_port(port)


def _hosts_problems(where: str, hosts: Any) -> list[ServletProblem]:
    if isinstance(hosts, (list, tuple)) and hosts and all(map(_is_host_and_port, hosts)):
        return []
    return [
        ServletProblem(
            ADDRESS,
            "hosts",
            f"{where}['hosts'] must be a non-empty list of 'ip:port' strings or "
            f"(ip, port) pairs, not {hosts!r}.",
            hint="Write 'hosts': ['10.0.0.1:50051', '10.0.0.2:50051'] (IP addresses).",
        )
    ]


def _target_problems(where: str, entry: dict[str, Any]) -> list[ServletProblem]:
    problems: list[ServletProblem] = []
    others = [key for key in ("host", "port", "hosts") if key in entry]
    if others:
        problems.append(
            ServletProblem(
                ENTRY,
                "target",
                f"{where} has 'target' and {' and '.join(repr(k) for k in others)}: give a "
                "gRPC target, or 'host' and 'port', or 'hosts', not both.",
                hint=f"Keep 'target' and remove {', '.join(repr(k) for k in others)}.",
            )
        )
    problem = targets.target_problem(entry["target"])
    if problem:
        problems.append(
            ServletProblem(
                ADDRESS,
                "target",
                f"{where}['target'] is not a gRPC target URI: {problem}.",
                hint=targets.EXAMPLE,
            )
        )
    return problems


def _service_config_problem(where: str, value: Any) -> ServletProblem | None:
    if value is None:
        return None
    hint = (
        "Write gRPC's service config as a dict, e.g. 'service_config': "
        "{'loadBalancingConfig': [{'pick_first': {}}]}."
    )
    if not isinstance(value, dict):
        return ServletProblem(
            SETTING,
            "service_config",
            f"{where}['service_config'] must be a dict (gRPC's service config), "
            f"not {type(value).__name__}.",
            hint,
        )
    try:
        json.dumps(value)
    except (TypeError, ValueError) as exc:
        return ServletProblem(
            SETTING,
            "service_config",
            f"{where}['service_config'] cannot be written as JSON: {exc}.",
            hint,
        )
    return None


def _setting_problems(where: str, entry: dict[str, Any]) -> list[ServletProblem]:
    problems: list[ServletProblem] = []
    service_config_problem = _service_config_problem(where, entry.get("service_config"))
    if service_config_problem:
        problems.append(service_config_problem)
    timeout = entry.get("timeout")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0
    ):
        problems.append(
            ServletProblem(
                SETTING,
                "timeout",
                f"{where}['timeout'] must be a number of seconds above 0, or None, "
                f"not {timeout!r}.",
            )
        )
    metadata = entry.get("metadata")
    if metadata is not None and not (
        isinstance(metadata, dict) and all(isinstance(k, str) for k in metadata)
    ):
        problems.append(
            ServletProblem(
                SETTING,
                "metadata",
                f"{where}['metadata'] must be a dict of header names to values, not {metadata!r}.",
                hint="Write 'metadata': {'authorization': 'Token ...'}.",
            )
        )
    tls = entry.get("tls")
    if tls is not None:
        if not isinstance(tls, dict) or set(tls) - SERVLET_TLS_KEYS:
            problems.append(
                ServletProblem(
                    SETTING,
                    "tls",
                    f"{where}['tls'] must be a dict with keys from "
                    f"{', '.join(sorted(SERVLET_TLS_KEYS))}, not {tls!r}.",
                )
            )
        else:
            for key, value in sorted(tls.items()):
                problem = pem_file_problem(value) if value else None
                if problem:
                    problems.append(
                        ServletProblem(SETTING, "tls", f"{where}['tls'][{key!r}] {problem}")
                    )
    options = entry.get("options")
    if options is not None and not (
        isinstance(options, (list, tuple)) and all(map(_is_option, options))
    ):
        problems.append(
            ServletProblem(
                SETTING,
                "options",
                f"{where}['options'] must be a list of (name, value) pairs, not {options!r}.",
                hint="Write 'options': [('grpc.keepalive_time_ms', 30000)].",
            )
        )
    problems += _interceptor_problems(where, entry.get("interceptors"))
    return problems


def _interceptor_problems(where: str, interceptors: Any) -> list[ServletProblem]:
    if interceptors is None:
        return []
    hint = "Write 'interceptors': ['myproject.grpc.AuthInterceptor'] (a dotted path or object)."
    if not isinstance(interceptors, (list, tuple)):
        return [
            ServletProblem(
                SETTING,
                "interceptors",
                f"{where}['interceptors'] must be a list of client interceptors, "
                f"not {interceptors!r}.",
                hint=hint,
            )
        ]
    from django_grpc_bus.observability.channel_interceptors import interceptor_problem

    return [
        ServletProblem(SETTING, "interceptors", f"{where}['interceptors'] item {problem}.", hint)
        for problem in map(interceptor_problem, interceptors)
        if problem
    ]


def _is_option(item: Any) -> bool:
    return isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], str)


@dataclass(frozen=True)
class ServletConfig:
    """How to reach one servlet: address(es), deadline, TLS files, default metadata, options,
    and client interceptors (as written: objects, classes or dotted paths)."""

    name: str
    targets: tuple[tuple[str, int], ...]  # host/port or hosts; () when `target` is given
    timeout: float | None = None
    tls: dict[str, Any] | None = None
    metadata: tuple[tuple[str, str], ...] = ()
    options: tuple[tuple[str, Any], ...] = field(default=())
    interceptors: tuple[Any, ...] = ()
    target: str | None = None  # a gRPC target URI ('target'), resolved by gRPC
    service_config: dict[str, Any] | None = None  # overrides the defaults (service_config.py)

    @property
    def address(self) -> str:
        if self.target is not None:
            return self.target
        return ", ".join(f"{host}:{port}" for host, port in self.targets)

    @classmethod
    def from_settings(cls, name: str, entry: Any) -> ServletConfig:
        """The servlet `name` of the settings; an entry with an error is refused, by name."""
        errors = [problem for problem in servlet_problems(name, entry) if problem.serious]
        if errors:
            raise ServletMisconfigured(
                f"{errors[0].message} Run `manage.py check` for every problem."
            )
        target = entry.get("target")
        hosts = [] if target is not None else entry.get("hosts") or [(entry["host"], entry["port"])]
        metadata = entry.get("metadata") or {}
        return cls(
            name=name,
            target=target,
            service_config=entry.get("service_config"),
            targets=tuple(_target(item) for item in hosts),
            timeout=entry.get("timeout", bus_settings.SERVICE_TIMEOUT),
            tls=entry.get("tls"),
            metadata=tuple((str(k).lower(), str(v)) for k, v in metadata.items()),
            options=tuple(tuple(option) for option in entry.get("options") or ()),
            interceptors=tuple(entry.get("interceptors") or ()),
        )

    @classmethod
    def from_address(cls, address: str) -> ServletConfig:
        """An ad-hoc servlet for ``host:port`` or a gRPC target URI (``dns:///name:port``,
        ``ipv4:...``, ...; used by grpclist/grpccall); AddressError if it is neither."""
        if address.partition(":")[0] in targets.SCHEMES:
            problem = targets.target_problem(address)
            if problem:
                raise AddressError(f"{problem}.")
            return cls(
                name=address, targets=(), target=address, timeout=bus_settings.SERVICE_TIMEOUT
            )
        return cls(name=address, targets=(_target(address),), timeout=bus_settings.SERVICE_TIMEOUT)


def _target(item: Any) -> tuple[str, int]:
    if isinstance(item, (list, tuple)):
        host, port = item
        return str(host), int(port)
    host, port = parse_address(str(item))
    return host.strip("[]"), port


def servlet_names() -> list[str]:
    return sorted(bus_settings.SERVLETS or {})


def servlet_config(name: str) -> ServletConfig | None:
    """The configuration of servlet `name`, or None when there is no such servlet."""
    servlets = bus_settings.SERVLETS or {}
    if name not in servlets:
        return None
    return ServletConfig.from_settings(name, servlets[name])
