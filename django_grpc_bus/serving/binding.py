"""Service classes bound to a ``grpc.Server``: their proto service found, one handler per RPC.

The proto service comes from descriptors already loaded: a model service's from its
serializer's message class (``Meta.proto_class``), whose file declares the service named after
the model; a service for a hand-written proto names its compiled module and service itself
(``grpc_module``, ``proto_service``). Handlers are built from the service descriptor, so no
generated ``_pb2_grpc`` code is needed.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Iterable
from typing import TYPE_CHECKING

import grpc
from django.core.exceptions import ImproperlyConfigured
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import ServiceDescriptor

from django_grpc_bus.decorators import action_spec, service_actions
from django_grpc_bus.identifiers import snake_case
from django_grpc_bus.observability.call_observer import CallObserver
from django_grpc_bus.serving.aio_calls import CallThreads, aio_behavior, is_async
from django_grpc_bus.serving.calls import BEHAVIORS, Route, unimplemented_behavior
from django_grpc_bus.serving.requests import lenient_parser
from django_grpc_bus.serving.traffic import Traffic
from django_grpc_bus.watch.nats.relay import start_relay
from django_grpc_bus.watch.notifier import notifier

if TYPE_CHECKING:
    from django_grpc_bus.services import BaseService

# Actions served on the asyncio server by their ``async def`` twin, when the class has one.
ASYNC_TWINS = {"watch": "awatch"}

# (client streaming, server streaming) -> how grpc registers a method of that kind.
_HANDLER_KINDS = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def service_descriptor(service_class: type[BaseService]) -> ServiceDescriptor:
    """The proto service `service_class` serves, found from descriptors.

    ``grpc_module`` (the compiled ``_pb2_grpc`` module) and ``proto_service`` when the class
    sets them. Otherwise the service named after the model (or ``proto_service``) in the file
    of the serializer's ``Meta.proto_class`` (``BookSerializer`` -> ``Book_pb2.BookData`` ->
    ``catalog.Book``); failing that, in the loaded descriptors, under the model's app label
    (a service that picks its serializer in ``get_serializer_class()``).
    """
    if service_class.grpc_module is not None:
        return _from_grpc_module(service_class, service_class.grpc_module)
    name = service_class.__qualname__
    model = service_class.get_model()
    if model is None:
        raise ImproperlyConfigured(
            f"{name} has no model (set `queryset` or `serializer_class`), nor `grpc_module` "
            "and `proto_service`."
        )
    service_name = service_class.proto_service or model.__name__
    serializer_class = getattr(service_class, "serializer_class", None)  # a GenericService's
    proto_class = getattr(getattr(serializer_class, "Meta", None), "proto_class", None)
    if proto_class is not None:
        found = proto_class.DESCRIPTOR.file.services_by_name.get(service_name)
        if found is not None:
            return found
    full_name = f"{model._meta.app_label}.{service_name}"
    try:
        return descriptor_pool.Default().FindServiceByName(full_name)
    except KeyError:
        where = f" (nor does {proto_class.DESCRIPTOR.file.name})" if proto_class else ""
        raise ImproperlyConfigured(
            f"{name} serves {full_name}, which no loaded proto defines{where}. Set "
            "`serializer_class` with the generated message as `Meta.proto_class` (run "
            "`manage.py generategrpc` first), or `grpc_module` and `proto_service`."
        ) from None


def _from_grpc_module(service_class: type[BaseService], module_path: str) -> ServiceDescriptor:
    service_name = service_class.proto_service
    if service_name is None:
        model = service_class.get_model()
        if model is None:
            raise ImproperlyConfigured(
                f"{service_class.__qualname__} sets `grpc_module` but not `proto_service`."
            )
        service_name = model.__name__
    try:
        importlib.import_module(module_path)
        pb2 = importlib.import_module(module_path.removesuffix("_grpc"))
    except ImportError as exc:
        raise ImproperlyConfigured(
            f"{service_class.__qualname__} serves {service_name}, whose module {module_path} "
            f"cannot be imported ({exc}). Run `manage.py generategrpc`."
        ) from exc
    try:
        return pb2.DESCRIPTOR.services_by_name[service_name]
    except KeyError:
        raise ImproperlyConfigured(
            f"{pb2.__name__} defines no service {service_name!r}; it has "
            f"{', '.join(pb2.DESCRIPTOR.services_by_name) or 'none'}."
        ) from None


def method_handlers(
    service_class: type[BaseService],
    descriptor: ServiceDescriptor,
    traffic: Traffic,
    *,
    dev: bool = False,
    observer: CallObserver | None = None,
    threads: CallThreads | None = None,
) -> dict[str, grpc.RpcMethodHandler]:
    """One handler per RPC of the proto service, each running `service_class` as a call.

    All four kinds are served (an RPC whose method the class lacks answers UNIMPLEMENTED);
    for a client or bidi stream the method gets an iterator of the requests. These are what
    the generated ``add_<Name>Servicer_to_server`` would register, except that requests are
    parsed leniently: bytes that are not a valid message reach the call and end as
    INVALID_ARGUMENT, not as grpc's own INTERNAL. With `threads` (the asyncio server's pool)
    the handlers are grpc.aio's: sync code runs in `threads`, ``async def`` methods on the loop.
    """
    handlers = {}
    _refuse_stale_actions(service_class, descriptor)
    for method in descriptor.methods:
        action = snake_case(method.name)
        response_class = message_factory.GetMessageClass(method.output_type)
        implementation = getattr(service_class, action, None)
        spec = action_spec(implementation)  # a @grpc_action may ask for a transaction itself
        route = Route(
            service_class=service_class,
            action=action,
            method=f"/{descriptor.full_name}/{method.name}",
            response_class=response_class,
            atomic=action in service_class.atomic_actions or (spec is not None and spec.atomic),
            traffic=traffic,
            dev=dev,
            observer=observer,
        )
        kind = (method.client_streaming, method.server_streaming)
        twin = getattr(service_class, ASYNC_TWINS.get(action, ""), None)
        if threads is not None and is_async(twin) and not is_async(implementation):
            # A method with an async twin (Watch's awatch) waits on the loop, holding no thread.
            route = dataclasses.replace(route, action=ASYNC_TWINS[action])
            implementation = twin
        _refuse_async_misuse(service_class, action, implementation, route.atomic, threads)
        if threads is not None:
            behavior = aio_behavior(route, kind, implementation, threads)
        elif callable(implementation):
            behavior = BEHAVIORS[kind](route)
        else:
            behavior = unimplemented_behavior(route)
        handlers[method.name] = _HANDLER_KINDS[kind](
            behavior,
            request_deserializer=lenient_parser(message_factory.GetMessageClass(method.input_type)),
            response_serializer=response_class.SerializeToString,
        )
    return handlers


def _refuse_stale_actions(service_class: type, descriptor: ServiceDescriptor) -> None:
    """Every ``@grpc_action`` is an RPC of the proto, of the kind it declares: else the
    compiled proto predates the declarations."""
    methods = {snake_case(method.name): method for method in descriptor.methods}
    for spec in service_actions(service_class):
        method = methods.get(spec.method)
        name = f"{service_class.__qualname__}.{spec.method}"
        if method is None:
            problem = f"{descriptor.full_name} has no RPC for it"
        elif (method.client_streaming, method.server_streaming) != (
            spec.request_stream,
            spec.response_stream,
        ):
            problem = f"{descriptor.full_name}.{method.name} is not {spec.kind} in the proto"
        else:
            continue
        raise ImproperlyConfigured(
            f"{name} is a @grpc_action, but {problem}. Run `manage.py generateproto` and "
            "`manage.py generategrpc` after changing actions."
        )


def _refuse_async_misuse(
    service_class: type, action: str, method: object, atomic: bool, threads: object
) -> None:
    """An ``async def`` action needs the asyncio server, and cannot run in a transaction."""
    if not is_async(method):
        return
    name = f"{service_class.__qualname__}.{action}"
    if threads is None:
        raise ImproperlyConfigured(
            f"{name} is async def: serve it on the asyncio server (rungrpcserver --asyncio, "
            "MESSAGE_BUS['ASYNCIO'] = True, GrpcTestServer(asyncio=True)), or make it a def."
        )
    if atomic:
        raise ImproperlyConfigured(
            f"{name} is async def and in atomic_actions: one transaction cannot span its "
            "awaits. Leave it out of atomic_actions, and write in a function run by "
            "sync_to_async() under transaction.atomic(), or make it a def."
        )


def bind_services(
    server: grpc.Server | grpc.aio.Server,
    service_classes: Iterable[type[BaseService]],
    traffic: Traffic,
    *,
    dev: bool = False,
    observer: CallObserver | None = None,
    threads: CallThreads | None = None,
) -> list[str]:
    """Add each service's handlers to `server`, counting calls on `traffic`; the full names.

    `observer` (the server's spans and metrics, or None) is told of every call; `threads` is
    the asyncio server's pool for sync code (None for the threaded server).
    """
    names = []
    notifier.track(traffic)  # its Watch streams end UNAVAILABLE when it drains
    start_relay(traffic)  # WATCH_BACKEND NATS: the outbox to JetStream, while it serves
    for service_class in service_classes:
        descriptor = service_descriptor(service_class)
        handlers = method_handlers(
            service_class, descriptor, traffic, dev=dev, observer=observer, threads=threads
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(descriptor.full_name, handlers),)
        )
        # Registered methods skip grpc's per-call lookup (grpcio 1.62+), as generated code does.
        if hasattr(server, "add_registered_method_handlers"):
            server.add_registered_method_handlers(descriptor.full_name, handlers)
        names.append(descriptor.full_name)
    return names
