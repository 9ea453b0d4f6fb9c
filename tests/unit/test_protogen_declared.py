"""generateproto and SPEC §9: a serializer's declared fields (nested serializers, computed
fields, typed DRF fields) in the data message; stable numbers; a bad declaration named."""

import subprocess
import textwrap

import pytest
from django.core.management.base import CommandError
from google.protobuf import descriptor_pb2

from unit.test_protogen import descriptor, find_buf, message, numbers, reserved_numbers

FieldProto = descriptor_pb2.FieldDescriptorProto

HANDLER_MODULE = """
import datetime
from decimal import Decimal

from rest_framework import serializers

from catalog.models import Author, Book, Tag
from django_grpc_bus.generics import ModelService
from django_grpc_bus.handlers import BasicHandler
from django_grpc_bus.serializers import ModelProtoSerializer


class AuthorSerializer(ModelProtoSerializer):
    class Meta:
        model = Author
        fields = ["id", "name"]


class FollowingAuthorSerializer(ModelProtoSerializer):
    # no Meta.fields: follows its model's generated message, as generateservices writes it
    class Meta:
        model = Author
        proto_class = None


class BookSerializer(ModelProtoSerializer):
{body}

    class Meta:
        model = Book
        proto_class = None


class BookService(ModelService):
    queryset = Book.objects.all()
    serializer_class = BookSerializer


handler = BasicHandler()
handler.register(BookService)
"""

META = {"apps": [{"name": "catalog", "models": [{"name": "Book"}, {"name": "Author"}]}]}


def generate(project, make_module, body):
    source = HANDLER_MODULE.format(body=textwrap.indent(textwrap.dedent(body), "    "))
    project.write_meta(META)
    project.configure(ROOT_HANDLERS_HOOK=f"{make_module(source)}.handler")
    return project.call("generateproto")


def book_data(project):
    return message(descriptor(project, "catalog/Book.proto"), "BookData")


def fields(msg):
    """{name: (type or type_name, label, proto3_optional)}"""
    return {
        f.name: (f.type_name or FieldProto.Type.Name(f.type), FieldProto.Label.Name(f.label))
        + ((True,) if f.proto3_optional else ())
        for f in msg.field
    }


def nested(msg, name):
    return next(m for m in msg.nested_type if m.name == name)


FULL_BODY = """
author_detail = AuthorSerializer(source="author", read_only=True)
co_authors = AuthorSerializer(source="author", many=True, read_only=True)
rating = serializers.SerializerMethodField()
maybe = serializers.SerializerMethodField()
tags_seen = serializers.SerializerMethodField()
author_name = serializers.CharField(source="author.name", read_only=True)
author_id_copy = serializers.ReadOnlyField(source="author.id")
price = serializers.DecimalField(max_digits=6, decimal_places=2, required=False)
seen_at = serializers.DateTimeField(read_only=True)
grade = serializers.ChoiceField(choices=[(1, "one"), (2, "two")], required=False)
kinds = serializers.MultipleChoiceField(choices=["a", "b"], required=False)

def get_rating(self, obj) -> int:
    return 5

def get_maybe(self, obj) -> Decimal | None:
    return None

def get_tags_seen(self, obj) -> list[str]:
    return []
"""


def test_declared_fields_become_typed_fields_and_nested_messages(project, make_module):
    generate(project, make_module, FULL_BODY)
    data = book_data(project)
    found = fields(data)
    assert found["author_detail"] == (".catalog.BookData.AuthorDetail", "LABEL_OPTIONAL")
    assert found["co_authors"] == (".catalog.BookData.CoAuthors", "LABEL_REPEATED")
    assert found["rating"] == ("TYPE_INT64", "LABEL_OPTIONAL", True)
    assert found["maybe"] == ("TYPE_STRING", "LABEL_OPTIONAL", True)  # Decimal, as text
    assert found["tags_seen"] == ("TYPE_STRING", "LABEL_REPEATED")
    assert found["author_name"] == ("TYPE_STRING", "LABEL_OPTIONAL", True)
    assert found["author_id_copy"] == ("TYPE_INT32", "LABEL_OPTIONAL", True)  # Author.id
    assert found["price"] == ("TYPE_STRING", "LABEL_OPTIONAL", True)
    assert found["seen_at"] == (".google.protobuf.Timestamp", "LABEL_OPTIONAL")
    assert found["grade"] == ("TYPE_INT64", "LABEL_OPTIONAL", True)
    assert found["kinds"] == ("TYPE_STRING", "LABEL_REPEATED")
    # the model's own fields are still there, numbered first
    assert [f.name for f in data.field][:4] == ["id", "title", "author", "isbn"]
    detail = nested(data, "AuthorDetail")
    assert fields(detail) == {
        "id": ("TYPE_INT32", "LABEL_OPTIONAL", True),
        "name": ("TYPE_STRING", "LABEL_OPTIONAL"),
    }
    assert numbers(detail) == {"id": 1, "name": 2}
    text = (project.root / "catalog/Book.proto").read_text()
    assert "  message AuthorDetail {" in text
    assert "// computed; read-only" in text


def test_nested_serializer_without_meta_fields_follows_its_models_selection(project, make_module):
    generate(project, make_module, "author_detail = FollowingAuthorSerializer(source='author')")
    detail = nested(book_data(project), "AuthorDetail")
    assert [f.name for f in detail.field] == ["id", "name"]


def test_numbers_stay_when_declared_fields_come_and_go(project, make_module):
    generate(project, make_module, FULL_BODY)
    before = numbers(book_data(project))
    detail_before = numbers(nested(book_data(project), "AuthorDetail"))
    # rating and author_name go, a new field comes: the others keep their numbers
    body = FULL_BODY.replace("rating = serializers.SerializerMethodField()\n", "")
    body = body.replace(
        'author_name = serializers.CharField(source="author.name", read_only=True)',
        "newcomer = serializers.IntegerField(read_only=True)",
    )
    generate(project, make_module, body)
    data = book_data(project)
    after = numbers(data)
    for name, number in before.items():
        if name not in ("rating", "author_name"):
            assert after[name] == number, name
    assert {before["rating"], before["author_name"]} <= reserved_numbers(data)
    assert {"rating", "author_name"} <= set(data.reserved_name)
    assert after["newcomer"] == max(before.values()) + 1
    assert numbers(nested(data, "AuthorDetail")) == detail_before


def test_nested_message_keeps_numbers_and_reserves_inside_it(project, make_module):
    generate(project, make_module, "author_detail = AuthorSerializer(source='author')")
    source = HANDLER_MODULE.replace('fields = ["id", "name"]', 'fields = ["name"]', 1)
    source = source.format(body="    author_detail = AuthorSerializer(source='author')")
    project.configure(ROOT_HANDLERS_HOOK=f"{make_module(source)}.handler")
    project.call("generateproto")
    detail = nested(book_data(project), "AuthorDetail")
    assert numbers(detail) == {"name": 2}
    assert reserved_numbers(detail) == {1}
    assert list(detail.reserved_name) == ["id"]


def test_output_is_stable_and_check_passes(project, make_module):
    generate(project, make_module, FULL_BODY)
    first = (project.root / "catalog/Book.proto").read_text()
    out, _ = project.call("generateproto", "--check")
    assert "up to date" in out
    assert (project.root / "catalog/Book.proto").read_text() == first


def test_generated_package_compiles_and_buf_lint_basic_is_clean(project, make_module):
    generate(project, make_module, FULL_BODY)
    project.call("generategrpc")
    buf = find_buf()
    if buf is None:
        pytest.skip("buf is not installed (make tools installs it with npm)")
    (project.root / "buf.yaml").write_text("version: v2\nlint:\n  use:\n    - BASIC\n")
    result = subprocess.run(
        [buf, "lint"], cwd=project.root, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


# -- declarations whose type cannot be known ----------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            "rating = serializers.SerializerMethodField()\n"
            "def get_rating(self, obj):\n    return 5\n",
            [
                "BookSerializer.rating (SerializerMethodField) has no return annotation on "
                "get_rating",
                "def get_rating(self, obj) -> int:",
            ],
        ),
        (
            "rating = serializers.SerializerMethodField()\n"
            "def get_rating(self, obj) -> object:\n    return 5\n",
            ["BookSerializer.rating (SerializerMethodField): get_rating returns", "Annotate"],
        ),
        (
            "rating = serializers.SerializerMethodField(method_name='compute')\n",
            ["BookSerializer.rating (SerializerMethodField) has no method compute"],
        ),
        (
            "class Custom(serializers.Field):\n    pass\n\nodd = Custom(read_only=True)\n",
            [
                "BookSerializer.odd is a Custom, whose proto type cannot be known",
                "serializers.CharField(read_only=True)",
            ],
        ),
        (
            "odd = serializers.ReadOnlyField(source='nothing_here')\n",
            ["BookSerializer.odd is a ReadOnlyField", "'nothing_here' is no model field"],
        ),
        (
            "grid = serializers.ListField(child=serializers.ListField(child="
            "serializers.IntegerField()))\n",
            ["BookSerializer.grid (ListField) is a list of lists"],
        ),
        (
            "author_detail = AuthorSerializer(source='author')\n"
            "authorDetail = AuthorSerializer(source='author')\n",
            [
                "the nested fields author_detail and authorDetail would both make the message "
                "AuthorDetail"
            ],
        ),
        (
            "tags_of = serializers.PrimaryKeyRelatedField(read_only=True)\n",
            ["BookSerializer.tags_of (PrimaryKeyRelatedField) has no queryset"],
        ),
    ],
    ids=[
        "no-annotation",
        "unmapped-annotation",
        "no-method",
        "custom-field",
        "unresolvable-source",
        "list-of-lists",
        "twin-messages",
        "no-queryset",
    ],
)
def test_a_field_whose_type_cannot_be_known_is_an_error_naming_it(
    project, make_module, body, expected
):
    with pytest.raises(CommandError) as raised:
        generate(project, make_module, body)
    for text in expected:
        assert text in str(raised.value)
    assert not (project.root / "catalog/Book.proto").exists()  # nothing half-written


def test_nested_following_serializer_of_an_unselected_model_is_an_error(project, make_module):
    source = HANDLER_MODULE.format(
        body="    author_detail = FollowingAuthorSerializer(source='author')"
    )
    project.write_meta({"apps": [{"name": "catalog", "models": [{"name": "Book"}]}]})
    project.configure(ROOT_HANDLERS_HOOK=f"{make_module(source)}.handler")
    with pytest.raises(CommandError) as raised:
        project.call("generateproto")
    assert "FollowingAuthorSerializer, which has no Meta.fields" in str(raised.value)
    assert "catalog.Author is not in service_meta.yaml" in str(raised.value)


def test_a_declared_field_that_changes_a_fields_wire_type_takes_a_new_number(project, make_module):
    generate(project, make_module, "")
    before = numbers(book_data(project))
    # DRF's usual nesting: the foreign key's name, now a message
    generate(project, make_module, "author = AuthorSerializer(read_only=True)")
    data = book_data(project)
    after = numbers(data)
    assert after["author"] == max(before.values()) + 1
    assert before["author"] in reserved_numbers(data)
    assert "author" not in data.reserved_name  # the name is in use
    assert fields(data)["author"] == (".catalog.BookData.Author", "LABEL_OPTIONAL")
    # stable from then on, and back to the key takes a new number again
    generate(project, make_module, "author = AuthorSerializer(read_only=True)")
    assert numbers(book_data(project)) == after
    generate(project, make_module, "")
    data = book_data(project)
    assert numbers(data)["author"] == after["author"] + 1
    assert {before["author"], after["author"]} <= reserved_numbers(data)


def test_removing_a_nested_field_reserves_its_number_and_drops_its_message(project, make_module):
    generate(project, make_module, "author_detail = AuthorSerializer(source='author')")
    number = numbers(book_data(project))["author_detail"]
    generate(project, make_module, "")
    file_proto = descriptor(project, "catalog/Book.proto")
    data = message(file_proto, "BookData")
    assert number in reserved_numbers(data)
    assert "author_detail" in data.reserved_name
    assert not data.nested_type
    assert "AuthorDetail" not in (project.root / "catalog/Book.proto").read_text()
    assert [m.name for m in file_proto.message_type if "Author" in m.name] == []
