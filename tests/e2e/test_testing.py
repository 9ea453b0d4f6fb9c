"""django_grpc_bus.testing: the in-process server users run in their own tests; interceptors."""

import sys

import grpc
import interceptors
import pytest
from catalog.models import Author
from django.test import override_settings

from django_grpc_bus.serving.server import ServerError
from django_grpc_bus.testing import GrpcTestServer, stub_for


@pytest.mark.django_db(transaction=True)
def test_in_process_server_serves_the_handler_on_a_free_port(compiled):
    from generated_grpc.grpc import Author_pb2

    Author.objects.create(name="In the database before the server")
    with GrpcTestServer() as server:
        assert server.port > 0
        assert server.target == f"127.0.0.1:{server.port}"
        stub = server.stub(Author)
        rows = [
            row
            for batch in stub.List(Author_pb2.AuthorListRequest(), timeout=5)
            for row in batch.results
        ]
        assert [row.name for row in rows] == ["In the database before the server"]
        created = stub.Create(Author_pb2.AuthorData(name="Through gRPC"), timeout=5)
        # the server's thread committed: the test's own connection sees the row
        assert Author.objects.get(pk=created.id).name == "Through gRPC"
        with pytest.raises(grpc.RpcError) as missing:
            stub.Retrieve(Author_pb2.AuthorLookupRequest(id=10**6), timeout=5)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        channel = server.channel
    # stopped: the port no longer answers
    with pytest.raises(grpc.RpcError):
        stub_for(Author, grpc.insecure_channel(server.target)).Retrieve(
            Author_pb2.AuthorLookupRequest(id=created.id), timeout=1
        )
    assert channel is not None


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("asyncio", "interceptor"),
    [(False, "RecordingInterceptor"), (True, "AioRecordingInterceptor")],
    ids=["threaded", "asyncio"],
)
def test_interceptors_from_settings_wrap_every_call(compiled, settings, asyncio, interceptor):
    from generated_grpc.grpc import Author_pb2

    settings.MESSAGE_BUS = {
        **settings.MESSAGE_BUS,
        "INTERCEPTORS": [f"interceptors.{interceptor}"],
    }
    interceptors.calls.clear()
    with GrpcTestServer(asyncio=asyncio) as server:
        stub = server.stub(Author)
        _reply, call = stub.Create.with_call(Author_pb2.AuthorData(name="Tagged"), timeout=5)
        assert ("x-intercepted", "yes") in tuple(call.trailing_metadata())
    assert "/catalog.Author/Create" in interceptors.calls


def test_a_sync_interceptor_is_refused_by_the_asyncio_server(compiled, settings):
    settings.MESSAGE_BUS = {
        **settings.MESSAGE_BUS,
        "INTERCEPTORS": ["interceptors.RecordingInterceptor"],
    }
    with pytest.raises(ServerError, match=r"RecordingInterceptor, which is not a grpc\.aio"):
        GrpcTestServer(asyncio=True).start()


def test_a_handler_given_explicitly(compiled):
    from handlers import full_handler

    with override_settings(MESSAGE_BUS={}):  # no ROOT_HANDLERS_HOOK needed
        with GrpcTestServer(full_handler) as server:
            names = set(full_handler.bound_names)
            assert {"catalog.Author", "shop.Book", "shop.Customer"} <= names
            assert server.port


@pytest.mark.django_db(transaction=True)
def test_a_handler_bound_again_reports_serving_again(compiled):
    """Graceful shutdown is permanent for a health servicer: each bind gets a new one."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from handlers import handler

    for _ in range(2):
        with GrpcTestServer(handler) as server:
            reply = health_pb2_grpc.HealthStub(server.channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.django_db(transaction=True)
def test_the_client_signature_of_the_spec(compiled, settings):
    """registry...method(request_dict=None, *, timeout=None, metadata=None) (SPEC §7)."""
    from django_grpc_bus.client.registry import registry
    from django_grpc_bus.client.servlet import NO_DEADLINE

    with GrpcTestServer() as server:
        settings.MESSAGE_BUS = {
            **settings.MESSAGE_BUS,
            "SERVLETS": {"here": {"host": "127.0.0.1", "port": server.port, "timeout": 5}},
        }
        created = registry.here.Author.create(request_dict={"name": "By keyword"})
        method = registry.here.Author.retrieve
        assert method.call_options(None, None)["timeout"] == 5  # None: the servlet's deadline
        assert method.call_options(NO_DEADLINE, None)["timeout"] is None
        assert method.call_options(0.5, None)["timeout"] == 0.5
        found = method(request_dict={"id": created["id"]}, timeout=None)
        assert found == created
        registry.reset()


def test_a_server_process_that_never_becomes_ready_is_stopped(compiled, fresh_database):
    """ServerProcess.start() that gives up on readiness ends the process it started."""
    from support import django_command_env

    from django_grpc_bus.testing import ServerProcess

    server = ServerProcess(
        [sys.executable, "-m", "django"],
        cwd=str(compiled),
        env={
            **django_command_env(fresh_database),
            # health needs credentials the readiness check does not send: it never says SERVING
            "TEST_MESSAGE_BUS": '{"PROTECT_HEALTH_AND_REFLECTION": true}',
        },
        start_timeout=3,
    )
    with pytest.raises(TimeoutError):
        server.start()
    assert server.process is not None and server.process.poll() is not None
