"""generateproto and SPEC §9 actions: RPCs of every kind, their messages, stable numbers,
reserved numbers when fields or whole actions go, --check, buf lint, and declarations that
cannot become proto text (an error naming the action, the field and the fix)."""

import subprocess
import textwrap

import pytest
from django.core.management.base import CommandError
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from rest_framework import serializers

from django_grpc_bus.decorators import validate_request
from django_grpc_bus.protogen.protoc import run_protoc
from unit.test_protogen import book_meta, descriptor, find_buf, message, numbers, reserved_numbers

HANDLER_MODULE = """
from rest_framework import serializers

from catalog.models import Book
from django_grpc_bus.decorators import grpc_action
from django_grpc_bus.generics import ModelService
from django_grpc_bus.handlers import BasicHandler


class PublishSerializer(serializers.Serializer):
    title = serializers.CharField(max_length=50)
    copies = serializers.IntegerField(min_value=1, required=False)
    when = serializers.DateTimeField(required=False)
    tags = serializers.ListField(child=serializers.CharField(), required=False)
    price = serializers.DecimalField(max_digits=6, decimal_places=2, allow_null=True)
    kind = serializers.ChoiceField(choices=[(1, "paper"), (2, "ebook")])
    secret = serializers.CharField(write_only=True, required=False)
    seen = serializers.IntegerField(read_only=True)

{extra}

class BookService(ModelService):
    queryset = Book.objects.all()
{body}

handler = BasicHandler()
handler.register(BookService)
"""

ALL_KINDS = """
@grpc_action(request=PublishSerializer, response=PublishSerializer, idempotent=True)
def publish(self, request, context):
    '''Publish a book.'''

@grpc_action(request=[("year", "int32")], response="BookData", response_stream=True)
def report(self, request, context):
    yield {}

@grpc_action(request="BookData", response=[("created", "int64"), ("ids", "repeated int64")],
             request_stream=True, atomic=True)
def bulk_create(self, request, context):
    pass

@grpc_action(request=[("text", "string")], response=[("text", "string"), ("seen", "int32")],
             request_stream=True, response_stream=True)
def echo(self, request, context):
    yield {}
"""

FieldProto = descriptor_pb2.FieldDescriptorProto


def generate(project, make_module, body, extra=""):
    source = HANDLER_MODULE.format(
        body=textwrap.indent(textwrap.dedent(body), "    "), extra=textwrap.dedent(extra)
    )
    project.write_meta(book_meta())
    project.configure(ROOT_HANDLERS_HOOK=f"{make_module(source)}.handler")
    return project.call("generateproto")


def parsed(project):
    return descriptor(project, "catalog/Book.proto")


def rpcs(file_proto):
    (service,) = file_proto.service
    return {m.name: m for m in service.method}


def test_every_kind_of_action_becomes_an_rpc_with_its_messages(project, make_module):
    generate(project, make_module, ALL_KINDS)
    proto = parsed(project)
    methods = rpcs(proto)
    kinds = {
        name: (m.input_type, m.output_type, m.client_streaming, m.server_streaming)
        for name, m in methods.items()
        if name in {"Publish", "Report", "BulkCreate", "Echo"}
    }
    assert kinds == {
        "Publish": (".catalog.BookPublishRequest", ".catalog.BookPublishResponse", False, False),
        "Report": (".catalog.BookReportRequest", ".catalog.BookData", False, True),
        "BulkCreate": (".catalog.BookData", ".catalog.BookBulkCreateResponse", True, False),
        "Echo": (".catalog.BookEchoRequest", ".catalog.BookEchoResponse", True, True),
    }
    # CRUD first, the actions after them, in declaration order
    assert list(methods)[-4:] == ["Publish", "Report", "BulkCreate", "Echo"]
    assert methods["Publish"].options.idempotency_level == (descriptor_pb2.MethodOptions.IDEMPOTENT)
    assert not methods["Echo"].options.HasField("idempotency_level")

    request = message(proto, "BookPublishRequest")
    fields = {f.name: f for f in request.field}
    # read-only fields are not in a request, write-only ones not in a response
    assert list(fields) == ["title", "copies", "when", "tags", "price", "kind", "secret"]
    assert fields["title"].type == FieldProto.TYPE_STRING
    # Every scalar of a request has presence, required or not: unset is "not given".
    assert fields["title"].proto3_optional and fields["copies"].proto3_optional
    assert fields["when"].type_name == ".google.protobuf.Timestamp"
    assert fields["tags"].label == FieldProto.LABEL_REPEATED
    assert fields["price"].type == FieldProto.TYPE_STRING and fields["price"].proto3_optional
    assert fields["kind"].type == FieldProto.TYPE_INT64  # integer choices
    response = message(proto, "BookPublishResponse")
    assert [f.name for f in response.field] == [
        "title",
        "copies",
        "when",
        "tags",
        "price",
        "kind",
        "seen",
    ]
    assert numbers(message(proto, "BookEchoResponse")) == {"text": 1, "seen": 2}
    assert (
        "// Publish a book; idempotent: clients may retry it."
        in (project.root / "catalog/Book.proto").read_text()
    )

    # nothing changes on a second run; --check agrees
    text = (project.root / "catalog/Book.proto").read_text()
    project.call("generateproto", "--check")
    project.call("generateproto")
    assert (project.root / "catalog/Book.proto").read_text() == text


def test_numbers_are_stable_and_removed_fields_and_actions_are_reserved(project, make_module):
    generate(project, make_module, ALL_KINDS)
    # echo loses `seen` and gains `count`; publish goes away entirely
    changed = ALL_KINDS.replace('("seen", "int32")', '("count", "int64")')
    changed = changed.replace("@grpc_action(request=PublishSerializer", "@staticmethod\n#")
    changed = changed.replace("def publish(self, request, context):", "def publish():")
    generate(project, make_module, changed)
    proto = parsed(project)
    assert "Publish" not in rpcs(proto)
    echo = message(proto, "BookEchoResponse")
    assert numbers(echo) == {"text": 1, "count": 3}
    assert reserved_numbers(echo) == {2} and list(echo.reserved_name) == ["seen"]
    # The removed action's messages stay, emptied, every number and name reserved.
    retired = message(proto, "BookPublishRequest")
    assert not retired.field
    assert reserved_numbers(retired) == set(range(1, 8))
    assert "title" in retired.reserved_name
    # Added again: its fields never take an old number.
    generate(project, make_module, ALL_KINDS.replace('("seen", "int32")', '("count", "int64")'))
    proto = parsed(project)
    assert min(numbers(message(proto, "BookPublishRequest")).values()) == 8
    # CRUD and data numbers never moved
    assert numbers(message(proto, "BookData"))["title"] == 2


def test_check_fails_when_an_action_is_added_and_passes_once_generated(project, make_module):
    generate(project, make_module, "pass")
    source = HANDLER_MODULE.format(
        body=textwrap.indent(textwrap.dedent(ALL_KINDS), "    "), extra=""
    )
    project.configure(ROOT_HANDLERS_HOOK=f"{make_module(source)}.handler")
    with pytest.raises(SystemExit):  # non-zero, as makemigrations --check
        project.call("generateproto", "--check")
    project.call("generateproto")
    project.call("generateproto", "--check")


@pytest.mark.parametrize(
    ("body", "extra", "expected"),
    [
        (
            """
            @grpc_action(request="google.protobuf.Empty", response=Odd)
            def odd(self, request, context): pass
            """,
            "class Odd(serializers.Serializer):\n    thing = serializers.SerializerMethodField()\n",
            r"BookService\.odd response field Odd\.thing \(SerializerMethodField\) has no proto "
            r"mapping\. Declare it as a field with a known type",
        ),
        (
            """
            @grpc_action(request=[("title", "strnig")])
            def typo(self, request, context): pass
            """,
            "",
            r"BookService\.typo request field 'title': no message 'strnig'\. Name one of "
            r"BookCountResponse, BookData",
        ),
        (
            """
            @grpc_action(request=[("Title", "string")])
            def shout(self, request, context): pass
            """,
            "",
            r"request field 'Title': a proto field name is lower_snake_case",
        ),
        (
            """
            @grpc_action(response="NoSuchMessage")
            def missing(self, request, context): pass
            """,
            "",
            r"BookService\.missing response: no message 'NoSuchMessage'",
        ),
        (
            """
            @grpc_action()
            def retrieve(self, request, context): pass
            """,
            "",
            r"BookService\.retrieve: Retrieve is an RPC every generated service has",
        ),
        (
            """
            @grpc_action(request=[("name", "string")])
            def lookup(self, request, context): pass
            """,
            "",
            r"its request message would be catalog\.BookLookupRequest, which the generated file "
            r"already defines\. Rename the method",
        ),
    ],
    ids=[
        "unmapped-serializer-field",
        "unknown-type",
        "bad-field-name",
        "unknown-message",
        "crud-name",
        "message-collision",
    ],
)
def test_declarations_that_cannot_become_proto_are_errors(
    project, make_module, body, extra, expected
):
    with pytest.raises(CommandError, match=expected):
        generate(project, make_module, body, extra)
    assert not (project.root / "catalog/Book.proto").exists()  # nothing half-written


def test_other_models_and_well_known_messages_are_imported(project, make_module):
    meta = {"apps": [{"name": "catalog", "models": [{"name": "Book"}, {"name": "Author"}]}]}
    source = HANDLER_MODULE.format(
        body=textwrap.indent(
            textwrap.dedent(
                """
                @grpc_action(request="catalog.AuthorLookupRequest", response="AuthorData")
                def author_of(self, request, context): pass

                @grpc_action(request="google.protobuf.Empty",
                             response=[("at", "google.protobuf.Timestamp")])
                def clock(self, request, context): pass
                """
            ),
            "    ",
        ),
        extra="",
    )
    project.write_meta(meta)
    project.configure(ROOT_HANDLERS_HOOK=f"{make_module(source)}.handler")
    project.call("generateproto")
    proto = parsed(project)
    assert "catalog/Author.proto" in proto.dependency
    assert "google/protobuf/timestamp.proto" in proto.dependency
    assert rpcs(proto)["AuthorOf"].output_type == ".catalog.AuthorData"
    assert rpcs(proto)["Clock"].input_type == ".google.protobuf.Empty"


def test_buf_lint_basic_with_actions(project, make_module):
    buf = find_buf()
    if buf is None:
        pytest.skip("buf is not installed (make tools installs it with npm)")
    generate(project, make_module, ALL_KINDS)
    (project.root / "buf.yaml").write_text("version: v2\nlint:\n  use:\n    - BASIC\n")
    result = subprocess.run(
        [buf, "lint"], cwd=project.root, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_only_action_messages_are_retired_not_what_other_features_generate():
    from catalog.models import Book

    from django_grpc_bus.protogen.actions import build_actions
    from django_grpc_bus.protogen.schema import Numbering

    previous = {
        "BookWatchRequest": Numbering({"since": 2}),  # a Watch turned off
        "BookFilter": Numbering({"title": 1}),  # filters dropped
        "BookData.AuthorDetail": Numbering({"name": 1}),  # a nested message
        "BookPublishRequest": Numbering({"title": 1}),  # an action removed
    }
    built = build_actions(Book, None, previous, ["BookData"], {})
    (retired,) = built.messages
    assert (retired.name, retired.fields, retired.reserved_numbers) == (
        "BookPublishRequest",
        (),
        (1,),
    )
    assert retired.reserved_names == ("title",)
    assert built.rpcs == ()


RESTOCK = """
@grpc_action(request=RestockSerializer)
def restock(self, request, context):
    pass

@grpc_action(request=[("year", "int32"), ("tags", "repeated string"), ("book", "BookData")])
def report(self, request, context):
    pass
"""
RESTOCK_SERIALIZER = """
class RestockSerializer(serializers.Serializer):
    copies = serializers.IntegerField()
    title = serializers.CharField()
    active = serializers.BooleanField()
    note = serializers.CharField(required=False)
"""


def message_classes(project, relpath):
    """The generated file's message classes, compiled by protoc into a pool of their own."""
    out = project.base / "with_imports.pb"
    run_protoc([f"-I{project.root}", "--include_imports", f"--descriptor_set_out={out}", relpath])
    pool = descriptor_pool.DescriptorPool()
    for file_proto in descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file:
        pool.Add(file_proto)
    return lambda name: message_factory.GetMessageClass(pool.FindMessageTypeByName(name))


def test_a_requests_scalars_have_presence_so_omitted_is_not_zero(project, make_module):
    """An action's request message, from a serializer or from pairs: every scalar is
    ``optional``, so an omitted required field is DRF's "required" (not 0, "" or false) and a
    partial validation changes only what was given."""
    module = make_module(
        HANDLER_MODULE.format(
            body=textwrap.indent(textwrap.dedent(RESTOCK), "    "), extra=RESTOCK_SERIALIZER
        )
    )
    project.write_meta(book_meta())
    project.configure(ROOT_HANDLERS_HOOK=f"{module}.handler")
    project.call("generateproto")
    proto = parsed(project)
    restock = {f.name: f for f in message(proto, "BookRestockRequest").field}
    assert all(f.proto3_optional for f in restock.values()), restock
    report = {f.name: f for f in message(proto, "BookReportRequest").field}
    assert report["year"].proto3_optional
    assert report["tags"].label == FieldProto.LABEL_REPEATED and not report["tags"].proto3_optional
    assert report["book"].type_name == ".catalog.BookData" and not report["book"].proto3_optional

    request_class = message_classes(project, "catalog/Book.proto")("catalog.BookRestockRequest")
    service_class = __import__(module).BookService
    service = type("Calling", (), {"action": "restock", "restock": service_class.restock})()
    with pytest.raises(serializers.ValidationError) as missing:
        validate_request(service, request_class())
    assert {name: [str(e) for e in errors] for name, errors in missing.value.detail.items()} == {
        name: ["This field is required."] for name in ("copies", "title", "active")
    }
    zeros = validate_request(service, request_class(copies=0, title="t", active=False))
    assert dict(zeros.validated_data) == {"copies": 0, "title": "t", "active": False}
    partial = validate_request(service, request_class(title="new"), partial=True)
    assert dict(partial.validated_data) == {"title": "new"}


def test_presence_added_to_an_older_request_keeps_its_numbers(project, make_module):
    """A file written before request scalars had presence (no ``optional``) regenerates with
    the same numbers: ``optional`` is no change of wire type."""
    generate(project, make_module, RESTOCK, extra=RESTOCK_SERIALIZER)
    path = project.root / "catalog/Book.proto"
    before = numbers(message(parsed(project), "BookRestockRequest"))
    older = path.read_text().replace("optional int64 copies", "int64 copies")
    older = older.replace("optional bool active", "bool active")
    assert older != path.read_text()
    path.write_text(older)
    project.call("generateproto")
    restock = message(parsed(project), "BookRestockRequest")
    assert numbers(restock) == before
    assert all(f.proto3_optional for f in restock.field)
