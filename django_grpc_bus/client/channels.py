"""Channels to a servlet: its target, TLS, keepalive, and gRPC's service config.

The service config (``service_config.py``) balances a target of several backends round-robin
with health checking, and retries reads and idempotent methods on UNAVAILABLE; writes are never
retried by the client. Interceptors: ``CLIENT_INTERCEPTORS``,
the servlet's own, then the client's tracing when OpenTelemetry is configured
(``observability.channel_interceptors``).
"""

from __future__ import annotations

from typing import Any, Literal, overload

import grpc

from django_grpc_bus.client.config import ServletConfig
from django_grpc_bus.client.service_config import Services, service_config_json
from django_grpc_bus.observability.channel_interceptors import channel_interceptors
from django_grpc_bus.transport import read_pem

KEEPALIVE = (
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.http2.max_pings_without_data", 0),
)


def target_of(config: ServletConfig) -> str:
    """The gRPC target URI of the servlet: its ``target``, or one built from host(s)."""
    if config.target is not None:
        return config.target
    if len(config.targets) == 1:
        host, port = config.targets[0]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in config.targets)
    # The static resolver takes addresses, not names; several hosts must be IPs.
    scheme = "ipv6" if all(":" in h for h, _ in config.targets) else "ipv4"
    return f"{scheme}:{hosts}"


def channel_options(config: ServletConfig, services: Services = ()) -> list[tuple[str, Any]]:
    return [
        *KEEPALIVE,
        # A channel of its own connections: after refresh() a new channel must not inherit
        # a failed connection to a server that has just restarted.
        ("grpc.use_local_subchannel_pool", 1),
        ("grpc.enable_retries", 1),
        ("grpc.service_config", service_config_json(config, services)),
        *config.options,
    ]


def credentials_of(config: ServletConfig) -> grpc.ChannelCredentials | None:
    tls = config.tls
    if not tls:
        return None

    def read(key: str) -> bytes | None:
        value = tls.get(key)
        setting = f"MESSAGE_BUS['SERVLETS'][{config.name!r}]['tls'][{key!r}]"
        return read_pem(value, setting) if value else None

    return grpc.ssl_channel_credentials(
        root_certificates=read("CA"),
        private_key=read("PRIVATE_KEY"),
        certificate_chain=read("CERTIFICATE"),
    )


def span_attributes(config: ServletConfig) -> dict[str, Any]:
    """What every client span of the servlet's calls carries: the server it calls."""
    attributes: dict[str, Any] = {"server.address": config.address}
    if len(config.targets) == 1:
        attributes["server.address"], attributes["server.port"] = config.targets[0]
    return attributes


@overload
def open_channel(
    config: ServletConfig, services: Services = (), aio: Literal[False] = False
) -> grpc.Channel: ...
@overload
def open_channel(
    config: ServletConfig, services: Services = (), *, aio: Literal[True]
) -> grpc.aio.Channel: ...
def open_channel(
    config: ServletConfig, services: Services = (), aio: bool = False
) -> grpc.Channel | grpc.aio.Channel:
    """A new channel (``grpc.aio`` when `aio`) for `config`, with its interceptors."""
    target = target_of(config)
    options = channel_options(config, services)
    credentials = credentials_of(config)
    interceptors = channel_interceptors(
        config.interceptors, aio=aio, attributes=span_attributes(config)
    )
    if aio:
        if credentials is None:
            return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
        return grpc.aio.secure_channel(
            target, credentials, options=options, interceptors=interceptors
        )
    if credentials is None:
        channel = grpc.insecure_channel(target, options=options)
    else:
        channel = grpc.secure_channel(target, credentials, options=options)
    return grpc.intercept_channel(channel, *interceptors) if interceptors else channel
