"""Binding (serving.binding, handlers.BasicHandler): proto services found from descriptors, one
handler per RPC of every kind, UNIMPLEMENTED for what a class lacks, each server's own Traffic.
"""

from __future__ import annotations

import ast
from pathlib import Path

import grpc
import pytest
from catalog import models as catalog_models
from catalog import serializers as catalog_serializers
from catalog.services import AuthorService, TagService
from catalog.services import BookService as CatalogBookService
from django.core.exceptions import ImproperlyConfigured
from shop.services import BookService as ShopBookService

import django_grpc_bus
from django_grpc_bus import meta
from django_grpc_bus.generics import GenericService, ModelService
from django_grpc_bus.handlers import BasicHandler
from django_grpc_bus.serving.binding import bind_services, method_handlers, service_descriptor
from django_grpc_bus.serving.requests import Undecodable
from django_grpc_bus.serving.traffic import Traffic

from .fakes import Aborted, FakeContext, OpenService

Code = grpc.StatusCode
PACKAGE = Path(django_grpc_bus.__file__).parent


class Actions(OpenService):
    """``library.BookActions`` without ``Forget``: one method of each kind."""

    grpc_module = "library.book_actions_pb2_grpc"
    proto_service = "BookActions"
    atomic_actions = frozenset()

    def lookup(self, request, context):
        return self.response_class(count=len(request.name))

    def count(self, request, context):
        for left in range(request.start, 0, -1):
            yield self.response_class(name=str(left))

    def bulk_create(self, requests, context):
        return self.response_class(count=sum(1 for _ in requests))

    bulk_create_each = bulk_create

    def resolve(self, requests, context):
        for seen, message in enumerate(requests, 1):
            yield self.response_class(name=message.name, seen=seen)


class FakeServer:
    """Records what is added to it, as a ``grpc.Server`` would take it."""

    def __init__(self) -> None:
        self.generic: list = []
        self.registered: dict[str, dict] = {}

    def add_generic_rpc_handlers(self, handlers) -> None:
        self.generic.extend(handlers)

    def add_registered_method_handlers(self, service: str, handlers: dict) -> None:
        self.registered[service] = handlers


@pytest.fixture(autouse=True)
def no_database(monkeypatch):
    monkeypatch.setattr("django_grpc_bus.serving.calls.close_old_connections", lambda: None)


@pytest.fixture
def pb(book_actions_pb2):
    return book_actions_pb2


@pytest.fixture
def without_selection(settings, tmp_path, monkeypatch):
    """No service_meta.yaml, a PRODUCER_ROOT with nothing in it, and meta never consulted."""
    settings.BASE_DIR = tmp_path
    settings.MESSAGE_BUS = {
        "SERVICE_META": tmp_path / "service_meta.yaml",  # does not exist
        "PRODUCER_ROOT": "nothing_generated_here",
    }

    def refuse(*args, **kwargs):
        raise AssertionError("binding read the service selection")

    monkeypatch.setattr(meta, "load_selection", refuse)


def run(handler: grpc.RpcMethodHandler, request, context: FakeContext | None = None):
    """Call a method handler as grpc would; (result, context)."""
    context = context or FakeContext()
    kind = ("stream_" if handler.request_streaming else "unary_") + (
        "stream" if handler.response_streaming else "unary"
    )
    try:
        result = getattr(handler, kind)(request, context)
        if handler.response_streaming:
            result = list(result)
        return result, context
    except Aborted:
        return None, context


# -- the proto service, from descriptors -----------------------------------------------------------


def test_a_model_service_is_found_from_its_serializers_message(without_selection):
    descriptor = service_descriptor(AuthorService)

    assert descriptor.full_name == "catalog.Author"
    message = catalog_serializers.AuthorSerializer.Meta.proto_class
    assert descriptor.file is message.DESCRIPTOR.file


def test_models_of_one_name_in_two_apps_find_their_own_service(without_selection):
    assert service_descriptor(CatalogBookService).full_name == "catalog.Book"
    assert service_descriptor(ShopBookService).full_name == "shop.Book"


def test_a_service_choosing_its_serializer_in_code_is_found_by_its_model(without_selection):
    class ChoosingService(ModelService):
        queryset = catalog_models.Author.objects.all()

        def get_serializer_class(self):
            return catalog_serializers.AuthorSerializer

    assert service_descriptor(ChoosingService).full_name == "catalog.Author"


def test_a_hand_written_service_names_its_module_and_service(pb):
    descriptor = service_descriptor(Actions)

    assert descriptor is pb.DESCRIPTOR.services_by_name["BookActions"]


@pytest.mark.parametrize(
    ("attributes", "expected"),
    [
        ({}, "has no model"),
        ({"grpc_module": "no_such_module_pb2_grpc", "proto_service": "X"}, "generategrpc"),
        (
            {"grpc_module": "library.book_actions_pb2_grpc", "proto_service": "Nope"},
            "defines no service 'Nope'; it has BookActions",
        ),
        ({"grpc_module": "library.book_actions_pb2_grpc"}, "not `proto_service`"),
    ],
)
def test_a_service_that_names_no_proto_service_is_a_clear_error(pb, attributes, expected):
    service_class = type("Unbound", (GenericService,), attributes)

    with pytest.raises(ImproperlyConfigured, match=expected):
        service_descriptor(service_class)


def test_a_model_whose_service_is_not_loaded_is_a_clear_error(without_selection):
    class Elsewhere(ModelService):
        queryset = catalog_models.Author.objects.all()
        serializer_class = catalog_serializers.AuthorSerializer
        proto_service = "Authors"  # no such service in catalog

    with pytest.raises(ImproperlyConfigured, match=r"catalog\.Authors.*proto_class"):
        service_descriptor(Elsewhere)


def test_serving_imports_neither_meta_nor_protogen():
    sources = [*sorted((PACKAGE / "serving").glob("*.py")), PACKAGE / "handlers.py"]
    imported = {}
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            imported[path.name] = [*imported.get(path.name, []), *names]

    offending = {
        name: [
            n for n in names if n.startswith(("django_grpc_bus.meta", "django_grpc_bus.protogen"))
        ]
        for name, names in imported.items()
    }
    assert not any(offending.values()), offending


# -- one handler per RPC ---------------------------------------------------------------------------


def test_each_kind_of_rpc_gets_its_kind_of_handler(pb):
    handlers = method_handlers(Actions, service_descriptor(Actions), Traffic())

    kinds = {
        name: (handler.request_streaming, handler.response_streaming)
        for name, handler in handlers.items()
    }
    assert kinds == {
        "Lookup": (False, False),
        "Count": (False, True),
        "BulkCreate": (True, False),
        "BulkCreateEach": (True, False),
        "Resolve": (True, True),
        "Forget": (True, False),
    }


def test_each_kind_of_rpc_runs_its_method(pb):
    handlers = method_handlers(Actions, service_descriptor(Actions), Traffic())
    names = [pb.AuthorName(name=name) for name in ("a", "bb")]

    assert run(handlers["Lookup"], pb.AuthorName(name="abc"))[0] == pb.Authors(count=3)
    replies, _ = run(handlers["Count"], pb.Countdown(start=2))
    assert [reply.name for reply in replies] == ["2", "1"]
    assert run(handlers["BulkCreate"], iter(names))[0] == pb.Authors(count=2)
    replies, _ = run(handlers["Resolve"], iter(names))
    assert [(reply.name, reply.seen) for reply in replies] == [("a", 1), ("bb", 2)]


def test_an_rpc_without_a_method_answers_unimplemented(pb):
    handlers = method_handlers(Actions, service_descriptor(Actions), Traffic())

    result, context = run(handlers["Forget"], iter([pb.AuthorName()]))

    assert result is None
    assert context.status == Code.UNIMPLEMENTED
    assert "/library.BookActions/Forget" in context.details


def test_requests_are_parsed_leniently_and_replies_serialized(pb):
    handler = method_handlers(Actions, service_descriptor(Actions), Traffic())["Lookup"]

    assert handler.request_deserializer(b"\x0a\x01a") == pb.AuthorName(name="a")
    assert isinstance(handler.request_deserializer(b"\xff\xff"), Undecodable)
    assert (
        handler.response_serializer(pb.Authors(count=1)) == pb.Authors(count=1).SerializeToString()
    )


def test_model_services_offer_their_mixins_actions(without_selection):
    full = method_handlers(AuthorService, service_descriptor(AuthorService), Traffic())
    read_only = method_handlers(TagService, service_descriptor(TagService), Traffic())

    six = {"List", "Create", "Retrieve", "Update", "PartialUpdate", "Destroy"}
    assert six <= set(full)
    assert full["List"].response_streaming and not full["List"].request_streaming
    assert not any(full[name].response_streaming for name in six - {"List"})
    for name in ("Create", "Update", "PartialUpdate", "Destroy"):
        _result, context = run(read_only[name], None)
        assert context.status == Code.UNIMPLEMENTED, name


# -- binding to a server ---------------------------------------------------------------------------


def test_bind_services_adds_every_service_with_registered_methods(pb, without_selection):
    server = FakeServer()

    names = bind_services(server, [Actions, AuthorService], Traffic())

    assert names == ["library.BookActions", "catalog.Author"]
    assert len(server.generic) == 2
    assert set(server.registered) == set(names)
    assert "Lookup" in server.registered["library.BookActions"]


def test_calls_count_on_the_traffic_the_server_bound_them_with(pb):
    handler = BasicHandler()
    handler.register(Actions)
    first, second = Traffic(), Traffic()
    first_server, second_server = FakeServer(), FakeServer()
    handler.bind_to_server(first_server, traffic=first)
    handler.bind_to_server(second_server, traffic=second)

    _reply, context = run(
        first_server.registered["library.BookActions"]["Lookup"], pb.AuthorName(name="a")
    )

    assert (first.active, second.active) == (1, 0)
    context.finish()
    assert first.active == 0
    assert handler.bound_names == ["library.BookActions"]


def test_bind_to_server_adds_health_and_reflection(pb):
    handler = BasicHandler()
    handler.register(Actions)
    server = FakeServer()

    handler.bind_to_server(server)

    served = {h.service_name() for h in server.generic if hasattr(h, "service_name")}
    assert {
        "library.BookActions",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= served
    assert "grpc.health.v1.Health" in served | set(server.registered)


def test_register_refuses_what_is_not_a_service():
    with pytest.raises(ImproperlyConfigured, match="not a service class"):
        BasicHandler().register(object)
