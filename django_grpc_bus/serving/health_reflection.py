"""The official health service, and server reflection under both v1 and v1alpha.

Health (``grpc.health.v1.Health``, grpcio's own servicer) reports the empty name and each
service SERVING, and NOT_SERVING once the server drains.

grpcio-reflection implements only v1alpha, while current tools (grpcurl, Postman, Evans) ask
for v1 first. The two protocols are the same messages in different proto packages, so the
official servicer answers both: v1 requests are parsed with the v1alpha classes (identical
wire format), and the v1 descriptor, v1alpha's with its package renamed, is registered in the
default pool so that reflection can describe itself under either name.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

SERVING = health_pb2.HealthCheckResponse.SERVING

V1_SERVICE = "grpc.reflection.v1.ServerReflection"
V1ALPHA_SERVICE = reflection.SERVICE_NAME
V1_FILE = "grpc/reflection/v1/reflection.proto"


# grpc.aio's servicers (the stubs do not know them): their Watch and ServerReflectionInfo
# streams hold no thread.
AioHealthServicer: Any = health.aio.HealthServicer  # type: ignore[attr-defined]
AioReflectionServicer: Any = reflection.aio.ReflectionServicer  # type: ignore[attr-defined]


def add_health(
    server: grpc.Server | grpc.aio.Server,
    service_names: Iterable[str],
    servicer: Any = None,
) -> Any:
    """Serve health on `server`, overall and for each of `service_names`, all SERVING.

    Returns the servicer (`servicer`, or a new one: grpc.aio's for a ``grpc.aio`` server, whose
    ``Watch`` streams hold no thread): its ``enter_graceful_shutdown()`` turns every name
    NOT_SERVING, for good, so each server needs its own. grpc.aio's servicer sets statuses
    with coroutines: :func:`mark_serving` does it once the loop runs.
    """
    if servicer is None:
        aio = isinstance(server, grpc.aio.Server)
        servicer = AioHealthServicer() if aio else health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    if isinstance(servicer, health.HealthServicer):
        servicer.set("", SERVING)
        for name in service_names:
            servicer.set(name, SERVING)
    return servicer


async def mark_serving(servicer: Any, service_names: Iterable[str]) -> None:
    """grpc.aio's health servicer: the empty name and each of `service_names` SERVING."""
    for name in ("", *service_names):
        await servicer.set(name, SERVING)


def _register_v1_descriptor() -> None:
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(V1_FILE)
        return
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name = V1_FILE
    proto.package = "grpc.reflection.v1"
    old_prefix, new_prefix = ".grpc.reflection.v1alpha.", ".grpc.reflection.v1."
    for message in proto.message_type:
        for field in message.field:
            if field.type_name.startswith(old_prefix):
                field.type_name = new_prefix + field.type_name[len(old_prefix) :]
    for service in proto.service:
        for method in service.method:
            method.input_type = new_prefix + method.input_type[len(old_prefix) :]
            method.output_type = new_prefix + method.output_type[len(old_prefix) :]
    pool.Add(proto)


def enable_reflection(service_names: Iterable[str], server: grpc.Server | grpc.aio.Server) -> None:
    """Serve reflection v1 and v1alpha for `service_names` (and for reflection itself)."""
    _register_v1_descriptor()
    names = sorted({*service_names, V1_SERVICE, V1ALPHA_SERVICE})
    aio = isinstance(server, grpc.aio.Server)  # whose servicer holds no thread per stream
    servicer = (AioReflectionServicer if aio else reflection.ReflectionServicer)(names)
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    for service in (V1_SERVICE, V1ALPHA_SERVICE):
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, {"ServerReflectionInfo": handler}),)
        )
