"""Channels to a servlet: TLS, keepalive, round-robin over several hosts, and retries.

Retrieve and List (idempotent) are retried on UNAVAILABLE through gRPC's own service-config
retry policy; writes are never retried by the client. Interceptors: ``CLIENT_INTERCEPTORS``,
the servlet's own, then the client's tracing when OpenTelemetry is configured
(``observability.channel_interceptors``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, Literal, overload

import grpc

from django_grpc_bus.client.config import ServletConfig
from django_grpc_bus.observability.channel_interceptors import channel_interceptors
from django_grpc_bus.transport import read_pem

IDEMPOTENT_METHODS = ("Retrieve", "List")
KEEPALIVE = (
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.http2.max_pings_without_data", 0),
)
RETRY_POLICY = {
    "maxAttempts": 4,
    "initialBackoff": "0.1s",
    "maxBackoff": "2s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}


def target_of(config: ServletConfig) -> str:
    if len(config.targets) == 1:
        host, port = config.targets[0]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in config.targets)
    # The static resolver takes addresses, not names; several hosts must be IPs.
    scheme = "ipv6" if all(":" in h for h, _ in config.targets) else "ipv4"
    return f"{scheme}:{hosts}"


def service_config(config: ServletConfig, services: Iterable[str]) -> str:
    names = [{"service": s, "method": m} for s in sorted(services) for m in IDEMPOTENT_METHODS]
    document: dict[str, Any] = {"methodConfig": []}
    if names:
        document["methodConfig"].append({"name": names, "retryPolicy": RETRY_POLICY})
    if len(config.targets) > 1:
        document["loadBalancingConfig"] = [{"round_robin": {}}]
    return json.dumps(document)


def channel_options(config: ServletConfig, services: Iterable[str] = ()) -> list[tuple[str, Any]]:
    return [
        *KEEPALIVE,
        # A channel of its own connections: after refresh() a new channel must not inherit
        # a failed connection to a server that has just restarted.
        ("grpc.use_local_subchannel_pool", 1),
        ("grpc.enable_retries", 1),
        ("grpc.service_config", service_config(config, services)),
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
    config: ServletConfig, services: Iterable[str] = (), aio: Literal[False] = False
) -> grpc.Channel: ...
@overload
def open_channel(
    config: ServletConfig, services: Iterable[str] = (), *, aio: Literal[True]
) -> grpc.aio.Channel: ...
def open_channel(
    config: ServletConfig, services: Iterable[str] = (), aio: bool = False
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
