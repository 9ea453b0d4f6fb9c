"""Fetch a server's services and message types through server reflection.

``grpc.reflection.v1`` is tried first and ``v1alpha`` when the server does not know v1 (the
two are the same messages under different package names, so one set of classes serves both).
Every file comes with its dependencies and goes into a descriptor pool of the servlet's own, so
two servers that define the same names never collide.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import grpc
from google.protobuf import descriptor, descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection_pb2

REFLECTION_METHODS = (
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
)
# Infrastructure every server has; not listed among a servlet's services.
HIDDEN_SERVICES = frozenset(
    {"grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"}
)


class ReflectionError(Exception):
    """The server's reflection answered with an error, or sent unusable descriptors."""


@dataclass
class Catalog:
    """What a servlet offers: its descriptor pool and services by full and short name."""

    pool: descriptor_pool.DescriptorPool
    services: dict[str, descriptor.ServiceDescriptor]
    by_short_name: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for full_name, service in sorted(self.services.items()):
            self.by_short_name.setdefault(service.name, []).append(full_name)


def _call(
    channel: grpc.Channel,
    requests: list,
    timeout: float | None,
    metadata: tuple[tuple[str, str], ...] | None,
) -> list:
    last_error: grpc.RpcError | None = None
    for method in REFLECTION_METHODS:
        stream = channel.stream_stream(
            method,
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        try:
            return list(stream(iter(requests), timeout=timeout, metadata=metadata))
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
                raise
            last_error = exc
    assert last_error is not None
    raise last_error


def _add_files(pool: descriptor_pool.DescriptorPool, serialized: Iterable[bytes]) -> None:
    """Add files to `pool`, dependencies first; files already there are skipped."""
    files: dict[str, descriptor_pb2.FileDescriptorProto] = {}
    for blob in serialized:
        proto = descriptor_pb2.FileDescriptorProto.FromString(blob)
        files.setdefault(proto.name, proto)
    added: set[str] = set()

    def add(name: str, trail: tuple[str, ...] = ()) -> None:
        if name in added:
            return
        if name in trail:
            raise ReflectionError(f"import cycle through {name}")
        proto = files.get(name)
        if proto is None:
            try:
                pool.FindFileByName(name)  # sent with an earlier service
            except KeyError:
                raise ReflectionError(
                    f"the server did not send {name}, which is imported"
                ) from None
            added.add(name)
            return
        for dependency in proto.dependency:
            add(dependency, (*trail, name))
        try:
            pool.FindFileByName(name)
        except KeyError:
            pool.Add(proto)
        added.add(name)

    for name in sorted(files):
        add(name)


def fetch_catalog(
    channel: grpc.Channel,
    timeout: float | None = None,
    metadata: tuple[tuple[str, str], ...] | None = None,
) -> Catalog:
    """List the server's services and load every one's descriptors into a new pool."""
    listing = _call(
        channel, [reflection_pb2.ServerReflectionRequest(list_services="")], timeout, metadata
    )
    names = sorted(
        service.name
        for response in listing
        for service in response.list_services_response.service
        if service.name not in HIDDEN_SERVICES
    )
    pool = descriptor_pool.DescriptorPool()
    if names:
        requests = [reflection_pb2.ServerReflectionRequest(file_containing_symbol=n) for n in names]
        for name, response in zip(names, _call(channel, requests, timeout, metadata), strict=False):
            if response.HasField("error_response"):
                raise ReflectionError(
                    f"reflection could not describe {name}: {response.error_response.error_message}"
                )
            _add_files(pool, response.file_descriptor_response.file_descriptor_proto)
    services = {name: pool.FindServiceByName(name) for name in names}
    return Catalog(pool=pool, services=services)
