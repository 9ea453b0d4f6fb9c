"""rungrpcserver as a process: start, serve, reflect, report health, stop on SIGTERM."""

import grpc
import pytest
from catalog.models import Author
from grpc_health.v1 import health_pb2, health_pb2_grpc

from django_grpc_bus.testing import stub_for


def test_serves_health_and_a_model_service(grpc_server, channel):
    from generated_grpc.grpc import Author_pb2

    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "catalog.Author", "catalog.Everything"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
    with pytest.raises(grpc.RpcError) as unknown:
        health.Check(health_pb2.HealthCheckRequest(service="nope.Nope"), timeout=5)
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    stub = stub_for(Author, channel)
    created = stub.Create(Author_pb2.AuthorData(name="Grace"), timeout=5)
    assert created.id > 0 and created.name == "Grace"
    assert stub.Retrieve(Author_pb2.AuthorLookupRequest(id=created.id), timeout=5) == created
