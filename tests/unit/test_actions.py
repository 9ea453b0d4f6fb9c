"""``@grpc_action`` (django_grpc_bus.decorators): declarations, results as messages, validation,
and actions served through the binding: the error table for bad data, a raising action, a
wrong result, a stream that raises midway; a stale proto refused at start."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from django.core.exceptions import ImproperlyConfigured
from rest_framework import serializers

from django_grpc_bus.decorators import (
    ActionResultError,
    action_spec,
    as_response,
    grpc_action,
    service_actions,
    validate_request,
    validate_stream,
)
from django_grpc_bus.errors import failure_for
from django_grpc_bus.serving.aio_calls import is_async
from django_grpc_bus.serving.binding import method_handlers, service_descriptor
from django_grpc_bus.serving.traffic import Traffic

from .fakes import FakeContext, OpenService
from .test_binding import run

Code = grpc.StatusCode


class NameSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=5)


# -- declarations ----------------------------------------------------------------------------------


def test_the_spec_records_what_was_declared_and_the_docstring():
    @grpc_action(request=NameSerializer, response=[("count", "int64")], idempotent=True)
    def lookup(self, request, context):
        """Find authors by name.

        More text that is not the RPC's comment.
        """

    spec = action_spec(lookup)
    assert spec.request is NameSerializer
    assert spec.response == (("count", "int64"),)
    assert (spec.kind, spec.idempotent, spec.atomic) == ("unary", True, False)
    assert spec.doc == "Find authors by name."
    assert action_spec(lambda: None) is None


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"request": 42}, r"lookup: request= takes a serializer class, a list of \(name"),
        ({"response": [("count",)]}, r"each item of response= is a \(name, proto type\) pair"),
        ({"response": serializers.CharField}, "response= takes a serializer class"),
        ({"idempotent": "yes"}, r"grpc_action\(idempotent=...\) takes True or False"),
    ],
)
def test_bad_declarations_are_type_errors_naming_the_method(kwargs, expected):
    with pytest.raises(TypeError, match=expected):

        @grpc_action(**kwargs)
        def lookup(self, request, context):
            pass


def test_the_method_shape_must_match_the_response_kind():
    with pytest.raises(TypeError, match="response_stream=True, so the method yields"):

        @grpc_action(response_stream=True)
        def report(self, request, context):
            return {}

    with pytest.raises(TypeError, match="the method yields, but response_stream is False"):

        @grpc_action()
        def report_too(self, request, context):
            yield {}

    with pytest.raises(TypeError, match=r"\(atomic=True\) applies to unary and client-streaming"):
        grpc_action(atomic=True, response_stream=True)


def test_async_actions_stay_async_for_the_asyncio_server():
    @grpc_action()
    async def ping(self, request, context):
        return {}

    @grpc_action(response_stream=True)
    async def pings(self, request, context):
        yield {}

    @grpc_action()
    def sync_ping(self, request, context):
        return {}

    assert is_async(ping) and is_async(pings) and not is_async(sync_ping)


def test_actions_are_inherited_and_an_override_without_the_decorator_drops_one():
    class Base:
        @grpc_action()
        def ping(self, request, context):
            pass

        @grpc_action()
        def pong(self, request, context):
            pass

    class Child(Base):
        def pong(self, request, context):  # no longer an action
            pass

        @grpc_action(request=[("text", "string")])
        def echo(self, request, context):
            pass

    assert [spec.method for spec in service_actions(Child)] == ["ping", "echo"]


# -- results as messages ---------------------------------------------------------------------------


class Holder:
    """What as_response needs of a service: its response class and action."""

    action = "lookup"

    def __init__(self, response_class):
        self.response_class = response_class


def test_results_become_the_response_message(book_actions_pb2):
    pb = book_actions_pb2
    service = Holder(pb.Authors)
    assert as_response(service, {"count": 2, "ids": [1, 2]}) == pb.Authors(count=2, ids=[1, 2])
    assert as_response(service, None) == pb.Authors()
    message = pb.Authors(count=1)
    assert as_response(service, message) is message
    with pytest.raises(ActionResultError, match=r"lookup returned a library\.AuthorName; its "):
        as_response(service, pb.AuthorName(name="x"))
    with pytest.raises(ActionResultError, match=r"returned list; return a library\.Authors or a"):
        as_response(service, [1])
    with pytest.raises(ActionResultError, match=r"not a library\.Authors: .*no field 'nope'"):
        as_response(service, {"nope": 1})
    # A server bug, not the client's: INTERNAL (failure_for None), not INVALID_ARGUMENT.
    assert failure_for(ActionResultError("x")) is None


# -- validation --------------------------------------------------------------------------------


class Validating:
    action = "lookup"

    @grpc_action(request=NameSerializer, response=[("count", "int64")])
    def lookup(self, request, context):
        pass

    @grpc_action(request=[("name", "string")])
    def plain(self, request, context):
        pass


def test_validate_request_and_validate_stream(book_actions_pb2):
    pb = book_actions_pb2
    service = Validating()
    assert validate_request(service, pb.AuthorName(name="Ada")).validated_data == {"name": "Ada"}
    with pytest.raises(serializers.ValidationError) as invalid:
        validate_request(service, pb.AuthorName(name="Too long"))
    assert "name" in invalid.value.detail

    stream = [pb.AuthorName(name="a"), pb.AuthorName(name="b"), pb.AuthorName(name="")]
    validated = validate_stream(service, stream)
    assert [s.validated_data["name"] for s in (next(validated), next(validated))] == ["a", "b"]
    with pytest.raises(serializers.ValidationError) as bad_row:
        next(validated)
    assert list(bad_row.value.detail) == ["[2]"]
    assert failure_for(bad_row.value).violations == [("[2].name", "This field may not be blank.")]

    service.action = "plain"
    with pytest.raises(TypeError, match="needs an action declared with a serializer as request"):
        validate_request(service, pb.AuthorName())


# -- served ------------------------------------------------------------------------------------


class Served(OpenService):
    """``library.BookActions`` with @grpc_action methods."""

    grpc_module = "library.book_actions_pb2_grpc"
    proto_service = "BookActions"
    atomic_actions = frozenset()

    @grpc_action(request=NameSerializer, response=[("count", "int64")])
    def lookup(self, request, context):
        name = validate_request(self, request).validated_data["name"]
        if name == "boom":
            raise RuntimeError("the database exploded")
        if name == "wrong":
            return ["not", "a", "message"]
        return {"count": len(name)}

    @grpc_action(request=[("start", "int32")], response="Resolved", response_stream=True)
    def count(self, request, context):
        for left in range(request.start, 0, -1):
            if left == 1:
                raise KeyError("midway")
            yield {"name": str(left), "seen": request.start - left + 1}


@pytest.fixture
def handlers(book_actions_pb2, monkeypatch):
    monkeypatch.setattr("django_grpc_bus.serving.calls.close_old_connections", lambda: None)
    return method_handlers(Served, service_descriptor(Served), Traffic())


def test_served_actions_answer_and_fail_through_the_error_table(handlers, book_actions_pb2):
    pb = book_actions_pb2
    result, context = run(handlers["Lookup"], pb.AuthorName(name="Ada"))
    assert result == pb.Authors(count=3) and context.status is None

    _, context = run(handlers["Lookup"], pb.AuthorName(name="Far too long"))
    assert context.status == Code.INVALID_ARGUMENT
    assert "name: Ensure this field has no more than 5 characters." in context.details

    for name in ("boom", "wrong"):  # a raising action, a result that is no message
        _, context = run(handlers["Lookup"], pb.AuthorName(name=name))
        assert (context.status, context.details) == (Code.INTERNAL, "Internal server error.")


def test_a_stream_that_raises_midway_ends_internal_after_what_it_sent(handlers, book_actions_pb2):
    pb = book_actions_pb2
    context = FakeContext()
    sent = []
    stream = handlers["Count"].unary_stream(pb.Countdown(start=3), context)
    with pytest.raises(Exception):  # noqa: B017 - the abort, as grpc's context raises it
        for response in stream:
            sent.append(response.name)
    assert sent == ["3", "2"]
    assert context.status == Code.INTERNAL


def test_an_action_the_compiled_proto_lacks_is_refused_at_start(book_actions_pb2):
    class Stale(Served):
        @grpc_action(request=[("name", "string")])
        def publish(self, request, context):
            pass

    with pytest.raises(
        ImproperlyConfigured,
        match=r"Stale\.publish is a @grpc_action, but "
        r"library\.BookActions has no RPC for it\. Run `manage.py generateproto`",
    ):
        method_handlers(Stale, service_descriptor(Stale), Traffic())

    class WrongKind(Served):
        @grpc_action(request=[("start", "int32")], response="Resolved")  # Count streams
        def count(self, request, context):
            pass

    with pytest.raises(ImproperlyConfigured, match=r"BookActions\.Count is not unary in the proto"):
        method_handlers(WrongKind, service_descriptor(WrongKind), Traffic())


def test_async_results_become_messages_too(book_actions_pb2):
    pb = book_actions_pb2

    class AsyncServed:
        action = "lookup"
        response_class = pb.Authors

        @grpc_action(response=[("count", "int64")])
        async def lookup(self, request, context):
            return {"count": 7}

        @grpc_action(response=[("count", "int64")], response_stream=True)
        async def many(self, request, context):
            for count in (1, 2):
                yield {"count": count}

    async def call():
        service = AsyncServed()
        one = await service.lookup(None, None)
        many = [item async for item in service.many(None, None)]
        return one, many

    one, many = asyncio.run(call())
    assert one == pb.Authors(count=7)
    assert many == [pb.Authors(count=1), pb.Authors(count=2)]


class OnlyLookups:
    """Allows the lookup action and nothing else: what a permission class sees of an action."""

    message = "Only lookups here."

    def has_permission(self, request, service):
        return service.action == "lookup"

    def has_object_permission(self, request, service, obj):
        return True


class Guarded(Served):
    permission_classes = [OnlyLookups]
    ran: list[str] = []

    @grpc_action(request=[("start", "int32")], response="Resolved", response_stream=True)
    def count(self, request, context):
        Guarded.ran.append("count")
        yield {}


def test_actions_are_authenticated_and_permitted_as_crud_calls_are(book_actions_pb2, monkeypatch):
    pb = book_actions_pb2
    monkeypatch.setattr("django_grpc_bus.serving.calls.close_old_connections", lambda: None)
    handlers = method_handlers(Guarded, service_descriptor(Guarded), Traffic())
    result, context = run(handlers["Lookup"], pb.AuthorName(name="Ada"))
    assert result == pb.Authors(count=3)
    _, context = run(handlers["Count"], pb.Countdown(start=2))
    assert (context.status, context.details) == (Code.PERMISSION_DENIED, "Only lookups here.")
    assert Guarded.ran == []  # refused before the action ran
