"""Server reflection, v1 and v1alpha, against a real `rungrpcserver` process.

v1alpha is spoken by grpcio-reflection's own client (ProtoReflectionDescriptorDatabase); v1 by
raw requests on a generic stream-stream call, (de)serialized with the v1alpha message classes
(the two protocols share one wire format). No generated code is used on the client side.
"""

from __future__ import annotations

import uuid

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

CALL_TIMEOUT = 10
VERSIONS = ["v1", "v1alpha"]
EXPECTED_SERVICES = {
    "catalog.Author",
    "catalog.Everything",
    "catalog.Book",
    "catalog.Tag",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
}
NOT_FOUND = grpc.StatusCode.NOT_FOUND.value[0]


class _DefaultDeadline(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Gives every call without a deadline one (grpcio-reflection's client sets none)."""

    def _details(self, details):
        return details if details.timeout is not None else details._replace(timeout=CALL_TIMEOUT)

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_stream_stream(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)


@pytest.fixture(scope="module")
def bounded_channel(channel):
    return grpc.intercept_channel(channel, _DefaultDeadline())


def reflect(channel: grpc.Channel, version: str, *requests) -> list:
    """Send `requests` on one ServerReflectionInfo stream; the responses, one per request."""
    call = channel.stream_stream(
        f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    responses = list(call(iter(requests), timeout=CALL_TIMEOUT))
    assert len(responses) == len(requests)
    return responses


def file_protos(response) -> list[descriptor_pb2.FileDescriptorProto]:
    assert response.WhichOneof("message_response") == "file_descriptor_response", response
    protos = []
    for raw in response.file_descriptor_response.file_descriptor_proto:
        proto = descriptor_pb2.FileDescriptorProto()
        proto.ParseFromString(raw)
        protos.append(proto)
    assert protos
    return protos


def defining(protos, symbol: str) -> descriptor_pb2.FileDescriptorProto:
    """The file among `protos` that defines the service or message `symbol`."""
    package, _, name = symbol.rpartition(".")
    for proto in protos:
        names = [s.name for s in proto.service] + [m.name for m in proto.message_type]
        if proto.package == package and name in names:
            return proto
    raise AssertionError(f"no file defines {symbol}: {[p.name for p in protos]}")


@pytest.mark.parametrize("version", VERSIONS)
def test_list_services(bounded_channel, version):
    (response,) = reflect(
        bounded_channel, version, reflection_pb2.ServerReflectionRequest(list_services="")
    )
    assert response.WhichOneof("message_response") == "list_services_response", response
    names = [service.name for service in response.list_services_response.service]
    assert len(names) == len(set(names)), names
    assert EXPECTED_SERVICES <= set(names), names


def test_list_services_through_grpcio_client(bounded_channel):
    database = ProtoReflectionDescriptorDatabase(bounded_channel)
    assert EXPECTED_SERVICES <= set(database.get_services())


@pytest.mark.parametrize("version", VERSIONS)
def test_file_containing_symbol_and_its_dependencies(bounded_channel, version):
    Request = reflection_pb2.ServerReflectionRequest
    (response,) = reflect(
        bounded_channel, version, Request(file_containing_symbol="catalog.Author")
    )
    author = defining(file_protos(response), "catalog.Author")
    assert author.package == "catalog"
    assert [method.name for method in author.service[0].method] == [
        "List",
        "Count",
        "Create",
        "Retrieve",
        "Update",
        "PartialUpdate",
        "Destroy",
    ]
    assert {"google/protobuf/empty.proto", "google/protobuf/field_mask.proto"} <= set(
        author.dependency
    )
    # Every dependency is served by name, on one stream.
    responses = reflect(
        bounded_channel, version, *[Request(file_by_filename=name) for name in author.dependency]
    )
    for name, dependency in zip(author.dependency, responses, strict=True):
        assert name in [proto.name for proto in file_protos(dependency)]
    # The request is echoed back, as the protocol requires.
    assert response.original_request.file_containing_symbol == "catalog.Author"


@pytest.mark.parametrize("version", VERSIONS)
def test_unknown_symbol_is_not_found(bounded_channel, version):
    Request = reflection_pb2.ServerReflectionRequest
    responses = reflect(
        bounded_channel,
        version,
        Request(file_containing_symbol="catalog.Nope"),
        Request(file_by_filename="nope/nope.proto"),
        Request(file_containing_symbol="catalog.Author"),  # the stream goes on after errors
    )
    for response in responses[:2]:
        assert response.WhichOneof("message_response") == "error_response", response
        assert response.error_response.error_code == NOT_FOUND
    defining(file_protos(responses[2]), "catalog.Author")


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    "symbol",
    [
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.health.v1.Health",
    ],
)
def test_reflection_and_health_describe_themselves(bounded_channel, version, symbol):
    (response,) = reflect(
        bounded_channel,
        version,
        reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol),
    )
    proto = defining(file_protos(response), symbol)
    service = next(s for s in proto.service if symbol.endswith("." + s.name))
    assert [method.name for method in service.method] in (
        ["ServerReflectionInfo"],
        ["Check", "Watch"],
        ["Check", "List", "Watch"],
    )
    # Input and output types are in the same package as the service, not the other version's.
    package = symbol.rpartition(".")[0]
    for method in service.method:
        assert method.input_type.startswith(f".{package}."), method


def test_v1alpha_client_resolves_the_v1_service(bounded_channel):
    """A descriptor pool fed by reflection can load the v1 service with all its types."""
    pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(bounded_channel))
    service = pool.FindServiceByName("grpc.reflection.v1.ServerReflection")
    method = service.FindMethodByName("ServerReflectionInfo")
    assert method.input_type.full_name == "grpc.reflection.v1.ServerReflectionRequest"
    assert method.output_type.full_name == "grpc.reflection.v1.ServerReflectionResponse"


def test_dynamic_calls_from_reflection_only(bounded_channel):
    """Create an author and a book with message classes built from reflection alone."""
    pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(bounded_channel))

    def call(service_name: str, method_name: str, **fields):
        method = pool.FindServiceByName(service_name).FindMethodByName(method_name)
        request_class = message_factory.GetMessageClass(method.input_type)
        response_class = message_factory.GetMessageClass(method.output_type)
        stub = bounded_channel.unary_unary(
            f"/{service_name}/{method_name}",
            request_serializer=request_class.SerializeToString,
            response_deserializer=response_class.FromString,
        )
        return stub(request_class(**fields), timeout=CALL_TIMEOUT)

    book_service = pool.FindServiceByName("catalog.Book")
    assert [m.name for m in book_service.methods] == [
        "List",
        "Count",
        "Create",
        "Retrieve",
        "Update",
        "PartialUpdate",
        "Destroy",
        "Watch",  # the test project's service_meta.yaml watches catalog.Book
    ]
    assert book_service.FindMethodByName("List").server_streaming
    author = call("catalog.Author", "Create", name="Reflected Author")
    assert author.id > 0
    isbn = uuid.uuid4().hex[:13]
    book = call("catalog.Book", "Create", title="Reflected", author=author.id, isbn=isbn)
    assert book.id > 0 and book.isbn == isbn and book.author == author.id
    again = call("catalog.Book", "Retrieve", isbn=isbn)
    assert (again.id, again.title, again.author, again.isbn) == (
        book.id,
        "Reflected",
        author.id,
        isbn,
    )
    with pytest.raises(grpc.RpcError) as missing:
        call("catalog.Book", "Retrieve", isbn="no-such-isbn")
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
