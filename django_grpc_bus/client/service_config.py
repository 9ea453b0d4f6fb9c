"""gRPC's service config for a servlet's channel: balancing, health checking, retries.

gRPC reads a JSON document (channel option ``grpc.service_config``) that names methods; the
registry builds it per servlet from the services its reflection found, when it opens the
servlet's channel:

- a target that may stand for several backends (a ``dns:`` name, an ``ipv4:``/``ipv6:`` list,
  ``hosts``) balances ``round_robin``, health-checked on the overall status of
  ``grpc.health.v1`` (service name ""): a replica that turns NOT_SERVING is no longer picked;
- Retrieve, List and Count, and every method whose ``MethodOptions.idempotency_level`` is
  IDEMPOTENT or NO_SIDE_EFFECTS (``grpc_action(..., idempotent=True)``), are retried on
  UNAVAILABLE by gRPC's retry policy, within a retry budget (``retryThrottling``); other methods
  (writes) are never retried. A server stream is retried only until its first message arrives;
  a List cut later is resumed by the registry itself (``servlet.py``, ``aio.py``).

``SERVLETS[name]['service_config']`` overrides these per servlet, key by key (top level); a key
set to None removes the default (``{"healthCheckConfig": None}`` for a server whose health
service needs credentials, ``PROTECT_HEALTH_AND_REFLECTION``: gRPC's health checks send none).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from google.protobuf import descriptor, descriptor_pb2

from django_grpc_bus.client.config import ServletConfig
from django_grpc_bus.client.targets import XDS, parse_target

# Methods the generated services declare NO_SIDE_EFFECTS; named here too for servers
# generated before they did.
READ_METHODS = ("Retrieve", "List", "Count")
RETRYABLE_LEVELS = (
    descriptor_pb2.MethodOptions.IDEMPOTENT,
    descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS,
)
RETRY_POLICY = {
    "maxAttempts": 4,
    "initialBackoff": "0.1s",
    "maxBackoff": "2s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}
# The retry budget: each failed call takes a token, each success gives back tokenRatio; below
# half of maxTokens gRPC stops retrying, so a servlet that is down is not hammered.
RETRY_THROTTLING = {"maxTokens": 100, "tokenRatio": 0.5}
HEALTH_CHECK = {"serviceName": ""}  # the server's overall status (serving/server.py)
ROUND_ROBIN: list[dict[str, Any]] = [{"round_robin": {}}]

Services = Mapping[str, descriptor.ServiceDescriptor] | Iterable[str]


def is_retryable(method: descriptor.MethodDescriptor) -> bool:
    """True for a read (by name) or a method declared idempotent or free of side effects."""
    if method.name in READ_METHODS:
        return True
    return method.GetOptions().idempotency_level in RETRYABLE_LEVELS


def retryable_names(services: Services) -> list[dict[str, str]]:
    """gRPC's method names (``{"service", "method"}``) of the methods to retry."""
    names: list[dict[str, str]] = []
    if isinstance(services, Mapping):
        for full_name in sorted(services):
            for method in services[full_name].methods:
                if is_retryable(method):
                    names.append({"service": full_name, "method": method.name})
        return names
    return [{"service": s, "method": m} for s in sorted(services) for m in READ_METHODS]


def is_balanced(config: ServletConfig) -> bool:
    """True when the servlet's target may stand for several backends."""
    if config.target is not None:
        return parse_target(config.target).may_have_several_addresses
    return len(config.targets) > 1


def default_service_config(config: ServletConfig, services: Services = ()) -> dict[str, Any]:
    """The package's service config for `config`, before the servlet's own overrides."""
    document: dict[str, Any] = {"methodConfig": []}
    names = retryable_names(services)
    if names:
        document["methodConfig"].append({"name": names, "retryPolicy": RETRY_POLICY})
        document["retryThrottling"] = RETRY_THROTTLING
    xds = config.target is not None and parse_target(config.target).scheme == XDS
    if is_balanced(config) and not xds:  # under xDS the control plane chooses
        document["loadBalancingConfig"] = ROUND_ROBIN
        document["healthCheckConfig"] = HEALTH_CHECK
    return document


def service_config(config: ServletConfig, services: Services = ()) -> dict[str, Any]:
    """The service config of `config`'s channel: the defaults, then its ``service_config``
    (a key set to None there removes the default, e.g. ``{"healthCheckConfig": None}``)."""
    merged = {**default_service_config(config, services), **(config.service_config or {})}
    return {key: value for key, value in merged.items() if value is not None}


def service_config_json(config: ServletConfig, services: Services = ()) -> str:
    return json.dumps(service_config(config, services), sort_keys=True)
