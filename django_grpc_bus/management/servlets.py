"""Command-line servlet arguments: a configured name, a bare host:port or a gRPC target."""

from __future__ import annotations

from django.core.management.base import CommandError

from django_grpc_bus.client.config import servlet_names
from django_grpc_bus.client.registry import Registry
from django_grpc_bus.client.servlet import Servlet


def servlet_for(registry: Registry, name: str) -> Servlet:
    """The servlet a command-line argument names; an argument that is neither is a CommandError.

    A misconfigured servlet raises the client's own error, which the command reports.
    """
    if name in servlet_names():
        return registry.servlet(name)
    try:
        return registry.connect(name)  # the client's own host:port parsing decides
    except ValueError as exc:
        known = ", ".join(servlet_names()) or "(none configured)"
        raise CommandError(
            f"{name!r} is neither a servlet in MESSAGE_BUS['SERVLETS'] ({known}) nor a host:port"
            f" or gRPC target URI ({exc})"
        ) from None
