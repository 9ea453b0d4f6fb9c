"""The registry of services one server offers: ``BasicHandler``.

``handler = BasicHandler(); handler.register("library.services.BookService")`` in the project's
``handlers.py``; ``rungrpcserver`` serves the handler named by ``ROOT_HANDLERS_HOOK``, with the
official health service (overall, and per service) and server reflection (v1 and v1alpha).
How services are bound and calls run lives in :mod:`django_grpc_bus.serving`.
"""

from __future__ import annotations

from typing import Any

import grpc
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string
from grpc_health.v1 import health

from django_grpc_bus.observability.call_observer import CallObserver
from django_grpc_bus.services import BaseService
from django_grpc_bus.serving.aio_calls import CallThreads
from django_grpc_bus.serving.binding import bind_services
from django_grpc_bus.serving.health_reflection import add_health, enable_reflection
from django_grpc_bus.serving.traffic import Traffic


class BasicHandler:
    """Services registered by dotted path or class; binds them, health and reflection."""

    def __init__(self) -> None:
        self._registered: list[type[BaseService]] = []
        self.bound_names: list[str] = []

    def register(self, service: str | type[BaseService]) -> type[BaseService]:
        """Add a service class (or its dotted path); registering it again changes nothing."""
        service_class = import_string(service) if isinstance(service, str) else service
        if not (isinstance(service_class, type) and issubclass(service_class, BaseService)):
            raise ImproperlyConfigured(
                f"{service!r} is not a service class (a subclass of "
                "django_grpc_bus.generics.GenericService)."
            )
        if service_class not in self._registered:
            self._registered.append(service_class)
        return service_class

    @property
    def services(self) -> list[type[BaseService]]:
        return list(self._registered)

    def bind_to_server(
        self,
        server: grpc.Server | grpc.aio.Server,
        *,
        traffic: Traffic | None = None,
        health_servicer: Any = None,
        dev: bool = False,
        observer: CallObserver | None = None,
        threads: CallThreads | None = None,
    ) -> list[str]:
        """Add every registered service, health and reflection to `server`; returns the names.

        `traffic` counts the server's calls in flight and `health_servicer` reports its health;
        each server has its own (``build_server`` passes them; new ones when not given), and
        so is `observer`, which records its spans and metrics (None: neither). A ``grpc.aio``
        server (``build_aio_server``) passes `threads`, its pool for sync service code.
        """
        names = bind_services(
            server,
            self._registered,
            traffic or Traffic(),
            dev=dev,
            observer=observer,
            threads=threads,
        )
        add_health(server, names, health_servicer)
        enable_reflection([*names, health.SERVICE_NAME], server)
        self.bound_names = names
        return names
