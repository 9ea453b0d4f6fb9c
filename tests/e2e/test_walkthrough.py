"""The seed's steps on a brand-new project, as a new user takes them, with no hand edits.

startproject, two apps with models, the MESSAGE_BUS settings; then generatemetayaml,
generateproto, generategrpc, generateservices -hd, rungrpcserver; then a client that knows
nothing but the address: services, methods and messages come from server reflection.
"""

import os
import subprocess
import sys

import grpc
import pytest
from google.protobuf import descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from tutorial_project import CLEAN_ENV, CONSUMER_SNIPPET, SETTINGS_TAIL, manage, start_project

from django_grpc_bus.testing import ServerProcess


@pytest.fixture(scope="module")
def new_project(tmp_path_factory):
    project = tmp_path_factory.mktemp("walkthrough")
    settings = start_project(project)
    settings.write_text(settings.read_text() + SETTINGS_TAIL)
    manage(project, "makemigrations", "library", "shop")
    manage(project, "migrate")
    return project


def test_seed_steps_then_serve_and_call_through_reflection(new_project):
    project = new_project
    out = manage(project, "generatemetayaml", "--file", "service_meta.yaml").stdout
    assert "Wrote service_meta.yaml" in out
    manage(project, "generateproto")
    assert manage(project, "generateproto", "--check").returncode == 0
    manage(project, "generategrpc")
    manage(project, "generateservices", "-hd")
    for generated in (
        "library/serializers.py",
        "library/services.py",
        "shop/services.py",
        "handlers.py",
        "generated_grpc/grpc/Book_pb2.py",
    ):
        assert (project / generated).is_file(), generated
    check = manage(project, "check")
    assert "no issues" in check.stdout

    with ServerProcess([sys.executable, "manage.py"], cwd=project, env=CLEAN_ENV) as server:
        with grpc.insecure_channel(server.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for name in ("", "library.Author", "library.Book", "shop.Customer"):
                reply = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING

            database = ProtoReflectionDescriptorDatabase(channel)
            assert {"library.Author", "library.Book", "shop.Customer"} <= set(
                database.get_services()
            )
            pool = descriptor_pool.DescriptorPool(database)

            def rpc(service: str, method_name: str):
                method = pool.FindServiceByName(service).methods_by_name[method_name]
                request_class = message_factory.GetMessageClass(method.input_type)
                response_class = message_factory.GetMessageClass(method.output_type)
                path = f"/{service}/{method_name}"
                make = channel.unary_stream if method.server_streaming else channel.unary_unary
                call = make(
                    path,
                    request_serializer=request_class.SerializeToString,
                    response_deserializer=response_class.FromString,
                )
                return request_class, call

            author_request, create_author = rpc("library.Author", "Create")
            author = create_author(author_request(name="Le Guin"), timeout=5)
            book_request, create_book = rpc("library.Book", "Create")
            book = create_book(
                book_request(title="The Dispossessed", author=author.id, price="12.50"),
                timeout=5,
            )
            assert (book.title, book.author, book.price) == ("The Dispossessed", author.id, "12.50")
            assert not book.HasField("published")

            lookup_request, retrieve = rpc("library.Book", "Retrieve")
            assert retrieve(lookup_request(id=book.id), timeout=5) == book

            list_request, list_books = rpc("library.Book", "List")
            rows = [row for batch in list_books(list_request(), timeout=5) for row in batch.results]
            assert rows == [book]

            customer_request, create_customer = rpc("shop.Customer", "Create")
            create_customer(customer_request(email="a@example.com"), timeout=5)
            with pytest.raises(grpc.RpcError) as duplicate:
                create_customer(customer_request(email="a@example.com"), timeout=5)
            assert duplicate.value.code() == grpc.StatusCode.ALREADY_EXISTS

        # The tutorial's consumer: a second project, SERVLETS, and the registry snippet verbatim.
        consumer = project.parent / f"{project.name}-consumer"
        consumer.mkdir()
        subprocess.run(
            [sys.executable, "-m", "django", "startproject", "consumer", str(consumer)],
            check=True,
            env={k: v for k, v in os.environ.items() if k not in CLEAN_ENV},
            timeout=60,
        )
        settings = consumer / "consumer/settings.py"
        settings.write_text(
            settings.read_text()
            + 'INSTALLED_APPS += ["django_grpc_bus"]\n'
            + 'MESSAGE_BUS = {"SERVLETS": {"library": {"host": "127.0.0.1", "port": '
            + f"{server.port}}}}}}}\n"
        )
        printed = manage(consumer, "shell", "-c", CONSUMER_SNIPPET).stdout
        assert "The Dispossessed 12.50" in printed
        assert "The Dispossessed 9.99" in printed
        assert server.stop() == 0


def test_check_fails_after_a_model_field_is_added(new_project):
    project = new_project
    models_py = project / "shop/models.py"
    original = models_py.read_text()
    models_py.write_text(original + "    nickname = models.CharField(max_length=20, default='')\n")
    try:
        result = manage(project, "generateproto", "--check", check=False)
        assert result.returncode == 1
        assert "+  optional string nickname = 4;" in result.stdout
    finally:
        models_py.write_text(original)
    assert manage(project, "generateproto", "--check", check=False).returncode == 0
