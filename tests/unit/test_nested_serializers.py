"""Nested serializers at run time (SPEC §9): filling nested messages from instances, the
relations a List selects or prefetches, what a request's nested messages give DRF, and how
a nested list's errors are named."""

from catalog.models import Author, Book, Everything, Tag
from django.test.utils import isolate_apps
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from rest_framework import serializers

from django_grpc_bus.conversion import messages
from django_grpc_bus.errors import flatten_errors
from django_grpc_bus.serializers import ModelProtoSerializer, SerializerPlan, relation_paths

FieldProto = descriptor_pb2.FieldDescriptorProto


def message_classes():
    """BookData with a nested AuthorDetail and a repeated nested Tags, in a pool of its own."""
    file = descriptor_pb2.FileDescriptorProto(name="nested_test.proto", package="nested_test")
    file.syntax = "proto3"
    data = file.message_type.add(name="BookData")
    detail = data.nested_type.add(name="AuthorDetail")
    detail.field.add(name="id", number=1, type=FieldProto.TYPE_INT32)
    detail.field.add(name="name", number=2, type=FieldProto.TYPE_STRING)
    data.field.add(name="id", number=1, type=FieldProto.TYPE_INT64)
    data.field.add(name="title", number=2, type=FieldProto.TYPE_STRING)
    data.field.add(
        name="author_detail",
        number=3,
        type=FieldProto.TYPE_MESSAGE,
        type_name=".nested_test.BookData.AuthorDetail",
    )
    data.field.add(name="words", number=4, type=FieldProto.TYPE_INT64)
    data.field.add(
        name="co_authors",
        number=5,
        type=FieldProto.TYPE_MESSAGE,
        label=FieldProto.LABEL_REPEATED,
        type_name=".nested_test.BookData.AuthorDetail",
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("nested_test.BookData"))


class AuthorBrief(ModelProtoSerializer):
    class Meta:
        model = Author
        fields = ["id", "name"]


class BookWithAuthor(ModelProtoSerializer):
    author_detail = AuthorBrief(source="author", read_only=True)
    words = serializers.SerializerMethodField()
    co_authors = serializers.SerializerMethodField()

    def get_words(self, obj) -> int:
        return len(obj.title.split())

    def get_co_authors(self, obj) -> list[dict]:
        return [{"id": 7, "name": "Seven"}]

    class Meta:
        model = Book
        fields = ["id", "title", "author_detail", "words", "co_authors"]


def test_a_nested_serializer_fills_the_nested_message_from_the_related_instance():
    data_class = message_classes()
    plan = SerializerPlan(BookWithAuthor(), data_class)
    book = Book(id=3, title="A Wizard of Earthsea", author=Author(id=5, name="Le Guin"))
    message = plan.build(book)
    assert message.author_detail == data_class.AuthorDetail(id=5, name="Le Guin")
    assert message.words == 4
    # a computed list of dicts fills the repeated nested message
    assert [(a.id, a.name) for a in message.co_authors] == [(7, "Seven")]
    assert plan.columns is None  # a nested message is not a column: rows need instances
    assert plan.select_related == ("author",)


def test_a_missing_related_instance_leaves_the_nested_message_unset():
    class Nullable(ModelProtoSerializer):
        author_detail = AuthorBrief(source="author", read_only=True, allow_null=True)

        class Meta:
            model = Book
            fields = ["id", "author_detail"]

    plan = SerializerPlan(Nullable(), message_classes())
    message = plan.build(Book(id=1))  # no author set: DRF's get_attribute gives None
    assert not message.HasField("author_detail")


def test_relation_paths_select_to_one_and_prefetch_to_many_with_nested_paths():
    class TagBrief(serializers.ModelSerializer):
        class Meta:
            model = Tag
            fields = ["id", "name"]

    class BookBrief(serializers.ModelSerializer):
        author_name = serializers.CharField(source="author.name")

        class Meta:
            model = Book
            fields = ["id", "title", "author_name"]

    class AuthorWithBooks(serializers.ModelSerializer):
        books = BookBrief(many=True, read_only=True)  # the reverse foreign key (related_name)

        class Meta:
            model = Author
            fields = ["id", "books"]

    class EverythingNested(serializers.ModelSerializer):
        author = AuthorWithBooks(read_only=True)
        editor_name = serializers.CharField(source="editor.name", read_only=True)
        tags = TagBrief(many=True, read_only=True)
        computed = serializers.SerializerMethodField()

        class Meta:
            model = Everything
            fields = ["id", "author", "editor_name", "tags", "computed"]

    select, prefetch = relation_paths(Everything, EverythingNested().fields)
    assert select == ("author", "editor")
    # BookBrief's author.name, inside the prefetched books, comes with that prefetch
    assert prefetch == ("author__books", "author__books__author", "tags")
    select, prefetch = relation_paths(Author, AuthorWithBooks().fields)
    # a to-one relation inside a prefetched list is fetched with that prefetch
    assert (select, prefetch) == ((), ("books", "books__author"))


def test_a_reverse_relation_is_found_by_its_accessor_name():
    with isolate_apps("catalog"):
        from django.db import models

        class Shelf(models.Model):
            class Meta:
                app_label = "catalog"

        class Slot(models.Model):
            shelf = models.ForeignKey(Shelf, on_delete=models.CASCADE)  # no related_name

            class Meta:
                app_label = "catalog"

        class SlotBrief(serializers.ModelSerializer):
            class Meta:
                model = Slot
                fields = ["id"]

        class ShelfNested(serializers.ModelSerializer):
            slots = SlotBrief(source="slot_set", many=True, read_only=True)

            class Meta:
                model = Shelf
                fields = ["id", "slots"]

        assert relation_paths(Shelf, ShelfNested().fields) == ((), ("slot_set",))


def test_a_requests_nested_messages_give_only_their_set_fields():
    data_class = message_classes()
    message = data_class(
        title="T",
        author_detail=data_class.AuthorDetail(name="N"),
        co_authors=[data_class.AuthorDetail(id=2)],
    )
    given = messages.given_fields(message)
    assert given["author_detail"] == {"id": 0, "name": "N"}  # no presence: always given
    assert given["co_authors"] == [{"id": 2, "name": ""}]
    assert "author_detail" not in messages.given_fields(data_class(title="T"))


def test_a_nested_lists_errors_name_the_item():
    detail = {"books": {1: {"price": ["A valid number is required."]}}}
    assert list(flatten_errors(detail)) == [
        ("books[1].price", "A valid number is required.", "invalid")
    ]
