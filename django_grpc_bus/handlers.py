"""The registry of services one server offers, and binding them to a ``grpc.Server``.

``handler = BasicHandler(); handler.register("library.services.BookService")`` in the project's
``handlers.py``; ``rungrpcserver`` binds the handler named by ``ROOT_HANDLERS_HOOK``. Binding adds
the official health service (overall, and per service) and server reflection (v1 and v1alpha).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

import grpc
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string
from google.protobuf import message_factory
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from django_grpc_bus.serving import calls as dispatch
from django_grpc_bus.generics import GenericService, snake_case
from django_grpc_bus.protogen import naming
from django_grpc_bus.serving.health_reflection import enable_reflection

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass(frozen=True)
class BoundService:
    """A registered service as served: its full proto name and the servicer adder."""

    service_class: type[GenericService]
    full_name: str
    module: Any  # the generated *_pb2_grpc module


def resolve_grpc_module(service_class: type[GenericService]) -> tuple[Any, str]:
    """The generated ``_pb2_grpc`` module and proto service name a service class serves.

    Model services find theirs through their model and app (``catalog.Book`` ->
    ``generated_grpc.grpc.Book_pb2_grpc``, service ``Book``), never by class name alone;
    other services say ``grpc_module`` and ``proto_service`` themselves.
    """
    module_path = service_class.grpc_module
    service_name = service_class.proto_service
    if module_path is None or service_name is None:
        model = service_class.get_model()
        if model is None:
            raise ImproperlyConfigured(
                f"{service_class.__qualname__} has no model (set `queryset` or "
                "`serializer_class`), nor `grpc_module` and `proto_service`."
            )
        module_path = module_path or naming.python_module(model, "_pb2_grpc")
        service_name = service_name or model.__name__
    try:
        module = importlib.import_module(module_path)
    except ImportError as exc:
        raise ImproperlyConfigured(
            f"{service_class.__qualname__} serves {service_name}, whose module {module_path} "
            f"cannot be imported ({exc}). Run `manage.py generategrpc`."
        ) from exc
    return module, service_name


class BasicHandler:
    """Services registered by dotted path or class; binds them, health and reflection."""

    def __init__(self) -> None:
        self._registered: list[type[GenericService]] = []
        self.health = health.HealthServicer()

    def register(self, service: str | type[GenericService]) -> type[GenericService]:
        """Add a service class (or its dotted path); registering it again changes nothing."""
        service_class = import_string(service) if isinstance(service, str) else service
        if not (isinstance(service_class, type) and issubclass(service_class, GenericService)):
            raise ImproperlyConfigured(
                f"{service!r} is not a service class (a subclass of "
                "django_grpc_bus.generics.GenericService)."
            )
        if service_class not in self._registered:
            self._registered.append(service_class)
        return service_class

    @property
    def services(self) -> list[type[GenericService]]:
        return list(self._registered)

    def bind_to_server(
        self, server: grpc.Server, *, dev: bool = False, log_calls: bool = False
    ) -> list[str]:
        """Add every registered service, health and reflection to `server`; returns the names."""
        # A new health servicer per server: graceful shutdown is permanent for one.
        self.health = health.HealthServicer()
        names = []
        for service_class in self._registered:
            module, service_name = resolve_grpc_module(service_class)
            descriptor = _service_descriptor(module, service_name)
            handlers = method_handlers(service_class, descriptor, dev, log_calls)
            server.add_generic_rpc_handlers(
                (grpc.method_handlers_generic_handler(descriptor.full_name, handlers),)
            )
            # Registered methods skip grpc's per-call lookup (grpcio 1.62+), as generated code does.
            if hasattr(server, "add_registered_method_handlers"):
                server.add_registered_method_handlers(descriptor.full_name, handlers)
            names.append(descriptor.full_name)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        self.set_serving(names)
        enable_reflection([*names, health.SERVICE_NAME], server)
        self.bound_names = names
        return names

    def set_serving(self, names: list[str]) -> None:
        self.health.set("", SERVING)
        for name in names:
            self.health.set(name, SERVING)

    def enter_graceful_shutdown(self) -> None:
        """Every service reads NOT_SERVING from now on (for load balancers and probes)."""
        self.health.enter_graceful_shutdown()


def _service_descriptor(module: Any, service_name: str):
    pb2 = importlib.import_module(module.__name__.removesuffix("_grpc"))
    try:
        return pb2.DESCRIPTOR.services_by_name[service_name]
    except KeyError:
        raise ImproperlyConfigured(
            f"{pb2.__name__} defines no service {service_name!r}; it has "
            f"{', '.join(pb2.DESCRIPTOR.services_by_name) or 'none'}."
        ) from None


def method_handlers(
    service_class: type[GenericService], descriptor: Any, dev: bool, log_calls: bool
) -> dict[str, grpc.RpcMethodHandler]:
    """One handler per RPC of the proto service, each running `service_class` through dispatch.

    All four kinds are served (an RPC whose method the class lacks answers UNIMPLEMENTED);
    for a client or bidi stream the method gets an iterator of the requests. These are what
    the generated ``add_<Name>Servicer_to_server`` would register, except that requests are
    parsed by :func:`dispatch.lenient_parser`: bytes that are not a valid message reach the
    call and end as INVALID_ARGUMENT, not as grpc's own INTERNAL.
    """
    handlers = {}
    for method in descriptor.methods:
        action = snake_case(method.name)
        full_method = f"/{descriptor.full_name}/{method.name}"
        request_class = message_factory.GetMessageClass(method.input_type)
        response_class = message_factory.GetMessageClass(method.output_type)
        offered = callable(getattr(service_class, action, None))
        route = dispatch.Route(
            service_class=service_class,
            action=action,
            method=full_method,
            response_class=response_class,
            atomic=action in service_class.atomic_actions,
            dev=dev,
            log_calls=log_calls,
        )
        kind = (method.client_streaming, method.server_streaming)
        if offered:
            behavior = _BEHAVIORS[kind](route)
        else:
            behavior = dispatch.unimplemented_behavior(route)
        make = _HANDLER_KINDS[kind]
        handlers[method.name] = make(
            behavior,
            request_deserializer=dispatch.lenient_parser(request_class),
            response_serializer=response_class.SerializeToString,
        )
    return handlers


# (client streaming, server streaming) -> how a call of that kind is run, and registered.
_BEHAVIORS = {
    (False, False): dispatch.unary_behavior,
    (False, True): dispatch.stream_behavior,
    (True, False): dispatch.client_stream_behavior,
    (True, True): dispatch.bidi_stream_behavior,
}
_HANDLER_KINDS = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}
