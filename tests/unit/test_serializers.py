"""django_grpc_bus.serializers with the catalog models, and the pure helpers of mixins/generics."""

from __future__ import annotations

import base64
import datetime as dt
import importlib
import tempfile
import types
import uuid
from decimal import Decimal

import django
import grpc
import pytest
from rest_framework import serializers as drf_serializers

from django_grpc_bus import serializers as proto_serializers
from django_grpc_bus.conversion.messages import build_message, message_to_dict
from django_grpc_bus.errors import GrpcError
from django_grpc_bus.generics import snake_case
from django_grpc_bus.pagination import decode_page_token, encode_page_token
from django_grpc_bus.serializers import (
    FileNameField,
    ModelProtoSerializer,
    ProtoSerializer,
    SerializerPlan,
)

UTC = dt.timezone.utc
INT64_MAX = 2**63 - 1


@pytest.fixture
def pb(compiled):
    """The generated message modules of the catalog app."""
    return types.SimpleNamespace(
        everything=importlib.import_module("generated_grpc.grpc.Everything_pb2"),
        tag=importlib.import_module("generated_grpc.grpc.Tag_pb2"),
        author=importlib.import_module("generated_grpc.grpc.Author_pb2"),
        book=importlib.import_module("generated_grpc.grpc.catalog_Book_pb2"),
    )


@pytest.fixture
def catalog(compiled):
    """catalog.serializers (it imports generated_grpc, so only after `compiled`)."""
    return importlib.import_module("catalog.serializers")


@pytest.fixture
def tmp_file_path():
    # Everything.f_filepath is a FilePathField(path="/tmp"): valid values are files there.
    with tempfile.NamedTemporaryFile(dir="/tmp", suffix=".txt") as handle:
        yield handle.name


def has_generated_field() -> bool:
    from catalog.models import Everything

    return any(field.name == "f_generated" for field in Everything._meta.get_fields())


def make_everything(**overrides):
    from catalog.models import Author, Everything, Tag, Token

    author = Author.objects.create(name="Ursula")
    editor = Author.objects.create(name="Ed")
    row = dict(
        f_int=-(2**31),
        f_bigint=INT64_MAX,
        f_smallint=-32768,
        f_posint=2**31 - 1,
        f_possmall=32767,
        f_posbig=INT64_MAX,
        f_float=0.1 + 0.2,
        f_decimal=Decimal("1234.5678901234"),
        f_bool=True,
        f_char="héllo ✓",
        f_text="line 1\nline 2",
        f_slug="a-slug",
        f_email="a@example.com",
        f_url="https://example.com/x?y=1",
        f_uuid=uuid.UUID("12345678-1234-5678-1234-567812345678"),
        f_ip="2001:db8::1",
        f_filepath="/tmp/a.txt",
        f_file="files/a.txt",
        f_image="images/b.png",
        f_date=dt.date(1999, 12, 31),
        f_datetime=dt.datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=UTC),
        f_time=dt.time(13, 14, 15, 161718),
        f_duration=dt.timedelta(days=-1, seconds=5, microseconds=7),
        f_binary=b"\x00\x01\xffbytes",
        f_json={"list": [1, 2.5, None, True, "x"], "nested": {"k": []}},
        f_choice_int=2,
        f_choice_str="b",
        f_custom="lower",
        f_null_int=0,
        f_null_char="",
        f_null_decimal=Decimal("0.00"),
        f_null_bool=False,
        f_null_datetime=dt.datetime(1970, 1, 1, tzinfo=UTC),
        f_null_date=dt.date(1970, 1, 1),
        f_null_json=[],
        f_default_int=0,
        f_blank_char="",
        author=author,
        editor=editor,
        token=Token.objects.create(label="t"),
    )
    row.update(overrides)
    instance = Everything.objects.create(**row)
    instance.tags.set([Tag.objects.create(name="tag-a"), Tag.objects.create(name="tag-b")])
    return Everything.objects.get(pk=instance.pk)


# -- ModelProtoSerializer.to_message -------------------------------------------------------------


@pytest.mark.django_db
def test_to_message_carries_every_field_value(catalog, pb):
    instance = make_everything()
    message = catalog.EverythingSerializer.to_message(instance)
    assert isinstance(message, pb.everything.EverythingData)
    result = message_to_dict(message)
    tags = result.pop("tags")
    expected = {
        "id": instance.pk,
        "f_int": -(2**31),
        "f_bigint": INT64_MAX,
        "f_smallint": -32768,
        "f_posint": 2**31 - 1,
        "f_possmall": 32767,
        "f_posbig": INT64_MAX,
        "f_float": 0.1 + 0.2,
        "f_decimal": "1234.5678901234",
        "f_bool": True,
        "f_char": "héllo ✓",
        "f_text": "line 1\nline 2",
        "f_slug": "a-slug",
        "f_email": "a@example.com",
        "f_url": "https://example.com/x?y=1",
        "f_uuid": "12345678-1234-5678-1234-567812345678",
        "f_ip": "2001:db8::1",
        "f_filepath": "/tmp/a.txt",
        "f_file": "files/a.txt",
        "f_image": "images/b.png",
        "f_date": "1999-12-31",
        "f_datetime": dt.datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=UTC),
        "f_time": "13:14:15.161718",
        "f_duration": dt.timedelta(days=-1, seconds=5, microseconds=7),
        "f_binary": b"\x00\x01\xffbytes",
        "f_json": {"list": [1, 2.5, None, True, "x"], "nested": {"k": []}},
        "f_choice_int": 2,
        "f_choice_str": "b",
        "f_custom": "lower",
        "f_null_int": 0,
        "f_null_char": "",
        "f_null_decimal": "0.00",
        "f_null_bool": False,
        "f_null_datetime": dt.datetime(1970, 1, 1, tzinfo=UTC),
        "f_null_date": "1970-01-01",
        "f_null_json": [],
        "f_default_int": 0,
        "f_blank_char": "",
        "f_auto_now": instance.f_auto_now,
        "author": instance.author_id,
        "editor": instance.editor_id,
        "token": str(instance.token_id),
    }
    if has_generated_field():
        expected["f_generated"] = -(2**31) + 1
    assert result == expected
    assert sorted(tags) == sorted(instance.tags.values_list("pk", flat=True))
    assert len(tags) == 2
    # the zero values of nullable fields are set, not confused with null
    for name in ("f_null_int", "f_null_char", "f_null_bool", "f_null_decimal", "f_default_int"):
        assert message.HasField(name), name
    assert message.f_auto_now.ToDatetime(tzinfo=UTC) == instance.f_auto_now


@pytest.mark.django_db
def test_to_message_leaves_nulls_unset(catalog):
    instance = make_everything(
        f_null_int=None,
        f_null_char=None,
        f_null_decimal=None,
        f_null_bool=None,
        f_null_datetime=None,
        f_null_date=None,
        f_null_json=None,
        editor=None,
        token=None,
    )
    instance.tags.clear()
    message = catalog.EverythingSerializer.to_message(instance)
    for name in (
        "f_null_int",
        "f_null_char",
        "f_null_decimal",
        "f_null_bool",
        "f_null_datetime",
        "f_null_date",
        "f_null_json",
        "editor",
        "token",
    ):
        assert not message.HasField(name), name
        assert message_to_dict(message)[name] is None
    assert list(message.tags) == []


@pytest.mark.django_db
def test_foreign_keys_carry_the_related_primary_key(catalog):
    from catalog.models import Author, Book

    author = Author.objects.create(name="A")
    for _ in range(3):  # so that the author's pk differs from the book's
        Author.objects.create(name="filler")
    book = Book.objects.create(title="T", author=author, isbn="1")
    message = catalog.BookSerializer.to_message(book)
    assert message.author == author.pk
    assert message.id == book.pk

    instance = make_everything()
    message = catalog.EverythingSerializer.to_message(instance)
    assert message.token == str(instance.token.key)  # a UUID primary key, as text
    assert message.editor == instance.editor.pk


@pytest.mark.django_db
def test_many_to_many_is_a_list_of_primary_keys(catalog):
    from catalog.models import Everything, Tag

    instance = make_everything()
    extra = Tag.objects.create(name="tag-c")
    instance.tags.add(extra)
    message = catalog.EverythingSerializer.to_message(instance)
    assert sorted(message.tags) == sorted(Tag.objects.values_list("pk", flat=True))
    # a prefetched relation is used as it is
    prefetched = Everything.objects.prefetch_related("tags").get(pk=instance.pk)
    assert sorted(catalog.EverythingSerializer.to_message(prefetched).tags) == sorted(message.tags)
    assert catalog.EverythingSerializer.plan().prefetch == ("tags",)


@pytest.mark.django_db
def test_to_messages_builds_one_message_per_instance(catalog):
    from catalog.models import Tag

    tags = [Tag.objects.create(name=name) for name in ("x", "y", "z")]
    result = catalog.TagSerializer.to_messages(tags)
    assert [(m.id, m.name) for m in result] == [(t.pk, t.name) for t in tags]


# -- file fields ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_file_fields_are_file_name_fields_carrying_the_storage_name(catalog):
    fields = catalog.EverythingSerializer().fields
    assert type(fields["f_file"]) is FileNameField
    assert type(fields["f_image"]) is FileNameField
    instance = make_everything(f_file="files/deep/report.pdf", f_image="images/i.png")
    message = catalog.EverythingSerializer.to_message(instance)
    assert message.f_file == "files/deep/report.pdf"
    assert message.f_image == "images/i.png"
    assert catalog.EverythingSerializer(instance).data["f_file"] == "files/deep/report.pdf"


@pytest.mark.django_db
def test_file_fields_validate_and_save_from_a_name_string(catalog, tmp_file_path):
    instance = make_everything()
    serializer = catalog.EverythingSerializer(
        instance,
        data={"f_file": "files/new.txt", "f_image": "images/new.png"},
        partial=True,
    )
    assert serializer.is_valid(), serializer.errors
    assert serializer.validated_data["f_file"] == "files/new.txt"
    saved = serializer.save()
    saved.refresh_from_db()
    assert saved.f_file.name == "files/new.txt"
    assert saved.f_image.name == "images/new.png"
    assert serializer.message.f_file == "files/new.txt"


def test_file_name_field_representation():
    field = FileNameField()
    assert field.to_representation(types.SimpleNamespace(name="a/b.txt")) == "a/b.txt"
    assert field.to_representation(types.SimpleNamespace(name=None)) == ""
    assert field.to_representation("plain/name") == "plain/name"
    assert field.to_internal_value("files/x") == "files/x"


@pytest.mark.django_db
def test_an_empty_file_field_is_an_empty_string(catalog):
    instance = make_everything(f_file="")
    assert catalog.EverythingSerializer.to_message(instance).f_file == ""


# -- declared fields -----------------------------------------------------------------------------


def _upper_tag_serializer(catalog):
    class UpperTagSerializer(catalog.TagSerializer):
        name = drf_serializers.SerializerMethodField()

        def get_name(self, obj):
            return obj.name.upper()

    return UpperTagSerializer


@pytest.mark.django_db
def test_a_serializer_method_field_goes_through_to_representation(catalog):
    from catalog.models import Tag

    serializer_class = _upper_tag_serializer(catalog)
    tag = Tag.objects.create(name="hello")
    message = serializer_class.to_message(tag)
    assert message.name == "HELLO"
    assert message.id == tag.pk
    # the parent still copies the model attribute
    assert catalog.TagSerializer.to_message(tag).name == "hello"


@pytest.mark.django_db
def test_a_declared_field_with_source_reads_through_its_source(catalog, pb):
    from catalog.models import Author, Book

    class AuthorNameAsTitle(catalog.BookSerializer):
        title = drf_serializers.CharField(source="author.name", read_only=True)
        isbn = drf_serializers.CharField(write_only=True)

    book = Book.objects.create(title="T", author=Author.objects.create(name="Ursula"), isbn="9")
    message = AuthorNameAsTitle.to_message(book)
    assert message.title == "Ursula"
    assert message.isbn == ""  # write-only fields are not sent
    assert message.author == book.author_id


# -- Meta without fields/exclude -----------------------------------------------------------------


def test_meta_without_fields_uses_the_proto_fields(catalog, pb):
    from catalog.models import Book, Everything

    assert list(catalog.AuthorSerializer().fields) == ["id", "name"]

    class LookupSerializer(ModelProtoSerializer):
        class Meta:
            model = Everything
            proto_class = pb.everything.EverythingLookupRequest

    assert list(LookupSerializer().fields) == ["id", "token"]

    class BookAsTag(ModelProtoSerializer):
        class Meta:
            model = Book
            proto_class = pb.tag.TagData

    # `name` is a field of the message but not of the model
    assert list(BookAsTag().fields) == ["id"]

    class BookAsTagWithName(BookAsTag):
        name = drf_serializers.SerializerMethodField()

        def get_name(self, obj):
            return obj.title

        class Meta(BookAsTag.Meta):
            pass

    assert list(BookAsTagWithName().fields) == ["id", "name"]


def test_meta_with_fields_is_drf_as_usual(catalog):
    assert list(catalog.BookSerializer().fields) == ["id", "title", "author", "isbn"]
    assert list(catalog.TagSerializer().fields) == ["id", "name"]


def test_a_serializer_without_proto_class_is_refused(catalog):
    from catalog.models import Tag

    class NoProto(ModelProtoSerializer):
        class Meta:
            model = Tag
            fields = ["id", "name"]

    with pytest.raises(AssertionError, match=r"NoProto\.Meta needs a `proto_class`"):
        NoProto.plan()


# -- data_from_message ---------------------------------------------------------------------------


def test_data_from_message_leaves_out_unset_fields_with_presence(catalog, pb):
    message = pb.everything.EverythingData(f_char="x", f_null_int=5)
    data = catalog.EverythingSerializer.data_from_message(message)
    assert data["f_char"] == "x"
    assert data["f_null_int"] == 5
    for name in ("id", "f_null_char", "f_null_bool", "editor", "token", "f_datetime", "f_json"):
        assert name not in data, name


def test_data_from_message_keeps_zero_values_of_plain_scalars(catalog, pb):
    data = catalog.EverythingSerializer.data_from_message(pb.everything.EverythingData())
    assert data["f_int"] == 0
    assert data["f_bool"] is False
    assert data["f_char"] == ""
    assert data["f_float"] == 0.0
    assert "author" not in data  # a required relation's 0 is no key: not given
    assert data["tags"] == []


def test_the_zero_value_of_a_required_relation_is_not_given(pb):
    from catalog.models import Author, Tag, Token

    class Keyed(ProtoSerializer):
        # BookData's plain (no presence) int64 author, and strings isbn and title.
        author = drf_serializers.PrimaryKeyRelatedField(queryset=Author.objects.all())
        isbn = drf_serializers.PrimaryKeyRelatedField(queryset=Token.objects.all())  # UUID key
        title = drf_serializers.SlugRelatedField(slug_field="name", queryset=Tag.objects.all())

        class Meta:
            proto_class = pb.book.BookData

    assert Keyed.plan().zero_means_absent == {"author": 0, "isbn": "", "title": ""}
    assert Keyed.data_from_message(pb.book.BookData()) == {}
    given = pb.book.BookData(author=3, isbn="k", title="t")
    assert Keyed.data_from_message(given) == {"author": 3, "isbn": "k", "title": "t"}


def test_data_from_message_converts_well_known_types(catalog, pb):
    message = build_message(
        pb.everything.EverythingData,
        {
            "f_datetime": dt.datetime(2024, 1, 1, tzinfo=UTC),
            "f_duration": dt.timedelta(seconds=3),
            "f_json": {"a": [1]},
            "tags": [3, 4],
        },
    )
    data = catalog.EverythingSerializer.data_from_message(message)
    assert data["f_datetime"] == dt.datetime(2024, 1, 1, tzinfo=UTC)
    assert data["f_duration"] == dt.timedelta(seconds=3)
    assert data["f_json"] == {"a": [1]}
    assert data["tags"] == [3, 4]


def test_data_from_message_nulls_makes_unset_fields_explicit(catalog, pb):
    message = pb.everything.EverythingData(f_null_int=5)
    data = catalog.EverythingSerializer.data_from_message(
        message, nulls=["f_null_int", "f_null_char", "editor"]
    )
    assert data["f_null_char"] is None
    assert data["editor"] is None
    assert data["f_null_int"] == 5  # a set value is not replaced by null
    assert "f_null_bool" not in data


def test_data_from_message_only_restricts(catalog, pb):
    message = pb.everything.EverythingData(f_char="x", f_int=3, f_null_int=1)
    data = catalog.EverythingSerializer.data_from_message(
        message, only=["f_char", "f_null_char", "editor"], nulls=["editor", "f_null_bool"]
    )
    assert data == {"f_char": "x", "editor": None}


def test_data_from_message_only_accepts_any_iterable(catalog, pb):
    message = pb.tag.TagData(id=1, name="n")
    assert catalog.TagSerializer.data_from_message(message, only=iter(["name"])) == {"name": "n"}
    assert catalog.TagSerializer.data_from_message(message, only=()) == {}


# -- validation is DRF's -------------------------------------------------------------------------


@pytest.mark.django_db
def test_required_fields_missing_from_the_message_are_errors(catalog, pb):
    data = catalog.EverythingSerializer.data_from_message(pb.everything.EverythingData())
    serializer = catalog.EverythingSerializer(data=data)
    assert not serializer.is_valid()
    errors = serializer.errors
    for name in ("f_datetime", "f_duration", "f_json"):
        assert [e.code for e in errors[name]] == ["required"], name
    # unset optional fields are not required: they are nullable or have a default
    for name in ("f_null_int", "f_null_char", "f_default_int", "f_blank_char", "editor", "token"):
        assert name not in errors, name
    # the zero value of a required relation to an auto key names no row: not given either
    assert [e.code for e in errors["author"]] == ["required"]


@pytest.mark.django_db
def test_validate_field_methods_run(catalog, pb):
    message = pb.everything.EverythingData(f_char="forbidden")
    data = catalog.EverythingSerializer.data_from_message(message, only=["f_char"])
    serializer = catalog.EverythingSerializer(data=data, partial=True)
    assert not serializer.is_valid()
    assert serializer.errors == {"f_char": ["This word is not allowed."]}

    ok = catalog.EverythingSerializer(data={"f_char": "allowed"}, partial=True)
    assert ok.is_valid(), ok.errors


@pytest.mark.django_db
def test_unique_validators_run(catalog, pb):
    from catalog.models import Tag

    Tag.objects.create(name="taken")
    data = catalog.TagSerializer.data_from_message(pb.tag.TagData(name="taken"))
    serializer = catalog.TagSerializer(data=data)
    assert not serializer.is_valid()
    assert [e.code for e in serializer.errors["name"]] == ["unique"]


@pytest.mark.django_db
def test_field_validation_errors(catalog, pb):
    message = pb.everything.EverythingData(f_email="not an email", f_choice_str="z", f_posint=-1)
    data = catalog.EverythingSerializer.data_from_message(
        message, only=["f_email", "f_choice_str", "f_posint"]
    )
    serializer = catalog.EverythingSerializer(data=data, partial=True)
    assert not serializer.is_valid()
    # Django 5.0+ gives PositiveIntegerField a MinValueValidator(0) on every backend (DRF turns
    # it into min_value); Django 4.2 leaves it to the database's CHECK constraint.
    expected = {"f_email", "f_choice_str"} | ({"f_posint"} if django.VERSION >= (5, 0) else set())
    assert set(serializer.errors) == expected


@pytest.mark.django_db
def test_create_from_a_message_and_message_after_save(catalog, pb, tmp_file_path):
    from catalog.models import Author, Everything, Tag, Token

    author = Author.objects.create(name="A")
    token = Token.objects.create(label="t")
    tags = [Tag.objects.create(name="one"), Tag.objects.create(name="two")]
    request = build_message(
        pb.everything.EverythingData,
        {
            "f_int": 1,
            "f_bigint": INT64_MAX,
            "f_smallint": 0,
            "f_posint": 0,
            "f_possmall": 0,
            "f_posbig": INT64_MAX,
            "f_float": 2.5,
            "f_decimal": Decimal("-0.0000000001"),
            "f_bool": False,
            "f_char": "c",
            "f_text": "t",
            "f_slug": "s",
            "f_email": "a@example.com",
            "f_url": "https://example.com/",
            "f_uuid": uuid.UUID(int=5),
            "f_ip": "10.0.0.1",
            "f_filepath": tmp_file_path,
            "f_file": "files/f.txt",
            "f_image": "images/i.png",
            "f_date": dt.date(2001, 2, 3),
            "f_datetime": "2024-05-06T07:08:09.123456Z",
            "f_time": dt.time(1, 2, 3),
            "f_duration": dt.timedelta(hours=1, microseconds=1),
            "f_json": [1, {"a": None}],
            "f_choice_int": 1,
            "f_choice_str": "a",
            "f_custom": "MiXeD",
            "f_null_int": 0,
            "author": author.pk,
            "token": str(token.pk),
            "tags": [tag.pk for tag in tags],
        },
    )
    data = catalog.EverythingSerializer.data_from_message(request)
    serializer = catalog.EverythingSerializer(data=data)
    assert serializer.is_valid(), serializer.errors
    instance = serializer.save()

    stored = Everything.objects.get(pk=instance.pk)
    assert stored.f_bigint == INT64_MAX
    assert stored.f_decimal == Decimal("-0.0000000001")
    assert stored.f_uuid == uuid.UUID(int=5)
    assert stored.f_datetime == dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    assert stored.f_duration == dt.timedelta(hours=1, microseconds=1)
    assert stored.f_json == [1, {"a": None}]
    assert stored.f_custom == "mixed"
    assert stored.f_null_int == 0  # set zero, not null
    assert stored.f_null_char is None  # unset, nullable: null
    assert stored.f_default_int == 7  # unset: the model default applies
    assert stored.f_blank_char == ""
    assert stored.editor_id is None
    assert stored.token_id == token.pk
    assert sorted(stored.tags.values_list("pk", flat=True)) == sorted(t.pk for t in tags)

    message = serializer.message
    assert isinstance(message, pb.everything.EverythingData)
    assert message.id == instance.pk
    assert message.HasField("f_auto_now")
    got = message_to_dict(message)
    assert got["f_decimal"] == "-0.0000000001"
    assert got["f_datetime"] == dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    assert got["f_custom"] in ("MiXeD", "mixed")  # in memory, or as stored
    assert got["f_null_char"] is None
    assert got["f_default_int"] == 7
    assert sorted(got["tags"]) == sorted(t.pk for t in tags)
    expected = message_to_dict(catalog.EverythingSerializer.to_message(stored))
    for name in got:
        if name not in ("f_custom", "f_generated"):
            assert got[name] == expected[name], name


@pytest.mark.django_db
def test_message_after_an_update(catalog, pb):
    from catalog.models import Tag

    tag = Tag.objects.create(name="old")
    data = catalog.TagSerializer.data_from_message(pb.tag.TagData(id=tag.pk, name="new"))
    serializer = catalog.TagSerializer(tag, data=data)
    assert serializer.is_valid(), serializer.errors
    serializer.save()
    assert serializer.message == pb.tag.TagData(id=tag.pk, name="new")
    tag.refresh_from_db()
    assert tag.name == "new"


# -- the plan ------------------------------------------------------------------------------------


def test_plan_is_built_once_per_class(catalog, monkeypatch):
    class CountedTagSerializer(catalog.TagSerializer):
        pass

    built = []
    real = proto_serializers.SerializerPlan

    def counting(*args, **kwargs):
        built.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(proto_serializers, "SerializerPlan", counting)
    plan = CountedTagSerializer.plan()
    assert isinstance(plan, SerializerPlan)
    assert CountedTagSerializer.plan() is plan
    assert CountedTagSerializer.plan() is plan
    assert len(built) == 1


def test_a_subclass_gets_its_own_plan(catalog, pb):
    parent_plan = catalog.TagSerializer.plan()  # built first, then the subclass
    subclass = _upper_tag_serializer(catalog)
    sub_plan = subclass.plan()
    assert sub_plan is not parent_plan
    assert subclass.plan() is sub_plan
    assert catalog.TagSerializer.plan() is parent_plan
    assert "name" not in sub_plan.writable  # read-only SerializerMethodField
    assert "name" in parent_plan.writable
    tag = types.SimpleNamespace(pk=1, id=1, name="abc")
    assert sub_plan.build(tag).name == "ABC"
    assert parent_plan.build(tag).name == "abc"


def test_plan_knows_writable_and_nullable_fields(catalog):
    plan = catalog.EverythingSerializer.plan()
    assert plan.nullable == {
        "f_null_int",
        "f_null_char",
        "f_null_decimal",
        "f_null_bool",
        "f_null_datetime",
        "f_null_date",
        "f_null_json",
        "editor",
        "token",
    }
    for read_only in ("id", "f_binary", "f_auto_now"):
        assert read_only in plan.fields
        assert read_only not in plan.writable
    assert {"f_int", "f_char", "author", "tags", "f_file"} <= plan.writable
    assert plan.nullable <= plan.writable
    assert plan.message_class is catalog.EverythingSerializer.get_proto_class()


# -- ProtoSerializer (not a model serializer) ----------------------------------------------------


@pytest.fixture
def book_input(pb):
    class BookInput(ProtoSerializer):
        title = drf_serializers.CharField(max_length=10)
        author = drf_serializers.IntegerField(min_value=1)
        isbn = drf_serializers.CharField()

        class Meta:
            proto_class = pb.book.BookData

    return BookInput


def test_proto_serializer_builds_the_message_from_validated_data(book_input, pb):
    serializer = book_input(data={"title": "Dune", "author": 3, "isbn": "123"})
    assert serializer.is_valid(), serializer.errors
    assert serializer.message == pb.book.BookData(title="Dune", author=3, isbn="123")
    assert not serializer.message.HasField("id")


def test_proto_serializer_validates_a_request_message(book_input, pb):
    request = pb.book.BookData(title="far too long a title", author=0)
    serializer = book_input(data=book_input.data_from_message(request))
    assert not serializer.is_valid()
    assert set(serializer.errors) == {"title", "author", "isbn"}
    assert [e.code for e in serializer.errors["title"]] == ["max_length"]
    assert [e.code for e in serializer.errors["author"]] == ["min_value"]
    assert [e.code for e in serializer.errors["isbn"]] == ["blank"]  # a plain string is given

    missing = book_input(data={})
    assert not missing.is_valid()
    assert {name: [e.code for e in errs] for name, errs in missing.errors.items()} == {
        "title": ["required"],
        "author": ["required"],
        "isbn": ["required"],
    }


def test_proto_serializer_message_of_an_instance(book_input, pb):
    instance = types.SimpleNamespace(title="T", author=2, isbn="9")
    assert book_input(instance).message == pb.book.BookData(title="T", author=2, isbn="9")
    assert book_input.to_message(instance) == pb.book.BookData(title="T", author=2, isbn="9")


def test_proto_serializer_with_well_known_and_text_values(pb):
    class EverythingInput(ProtoSerializer):
        f_datetime = drf_serializers.DateTimeField()
        f_decimal = drf_serializers.DecimalField(max_digits=10, decimal_places=2)
        f_uuid = drf_serializers.UUIDField()
        f_date = drf_serializers.DateField()
        f_time = drf_serializers.TimeField()
        f_json = drf_serializers.JSONField()
        f_null_int = drf_serializers.IntegerField(required=False, allow_null=True)

        class Meta:
            proto_class = pb.everything.EverythingData

    serializer = EverythingInput(
        data={
            "f_datetime": "2024-01-02T05:04:05+02:00",
            "f_decimal": "1.5",
            "f_uuid": str(uuid.UUID(int=7)),
            "f_date": "2024-01-02",
            "f_time": "13:14:15",
            "f_json": {"n": 1, "l": [True]},
            "f_null_int": None,
        }
    )
    assert serializer.is_valid(), serializer.errors
    result = message_to_dict(serializer.message)
    assert result["f_datetime"] == dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert result["f_decimal"] == "1.50"
    assert result["f_uuid"] == str(uuid.UUID(int=7))
    assert result["f_date"] == "2024-01-02"
    assert result["f_time"] == "13:14:15"
    assert result["f_json"] == {"n": 1, "l": [True]}
    assert result["f_null_int"] is None


def test_proto_serializer_message_with_a_duration(pb):
    class DurationInput(ProtoSerializer):
        f_duration = drf_serializers.DurationField()

        class Meta:
            proto_class = pb.everything.EverythingData

    serializer = DurationInput(data={"f_duration": "01:00:00"})
    assert serializer.is_valid(), serializer.errors
    assert message_to_dict(serializer.message)["f_duration"] == dt.timedelta(hours=1)


# -- mixins' page tokens -------------------------------------------------------------------------


@pytest.mark.parametrize("offset", [0, 1, 50, 1000, 10**12])
def test_page_tokens_round_trip(offset):
    token = encode_page_token(offset)
    assert isinstance(token, str)
    assert "=" not in token  # no padding: safe in a URL or a header unquoted
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert decode_page_token(token) == offset


def test_page_tokens_differ_per_offset():
    assert len({encode_page_token(offset) for offset in range(100)}) == 100


def _b64(text: bytes) -> str:
    return base64.urlsafe_b64encode(text).decode().rstrip("=")


@pytest.mark.parametrize(
    "token",
    [
        "",
        "!!!!",
        "not a token",
        _b64(b"o:-1"),
        _b64(b"o:abc"),
        _b64(b"x:5"),
        _b64(b"5"),
        _b64(b"o:"),
        _b64(b"\xff\xfe:1"),
        _b64(b"o:1.5"),
    ],
)
def test_invalid_page_tokens_are_invalid_argument(token):
    with pytest.raises(GrpcError) as info:
        decode_page_token(token)
    assert info.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.violations == [("page_token", "Invalid token.")]
    assert "page_token" in info.value.message


# -- generics.snake_case -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("PartialUpdate", "partial_update"),
        ("List", "list"),
        ("GetHTTPThing", "get_http_thing"),
        ("Retrieve", "retrieve"),
        ("Create", "create"),
        ("Update", "update"),
        ("Destroy", "destroy"),
        ("HTTPGet", "http_get"),
        ("ListBooksByISBN", "list_books_by_isbn"),
        ("GetV2Thing", "get_v2_thing"),
        ("partial_update", "partial_update"),
    ],
)
def test_snake_case(name, expected):
    assert snake_case(name) == expected


# -- a user's own to_representation, and List's column path -------------------------------------


@pytest.mark.django_db
def test_an_overridden_to_representation_is_honoured(compiled):
    from catalog.models import Author
    from catalog.serializers import AuthorSerializer

    class ShoutingAuthorSerializer(AuthorSerializer):
        def to_representation(self, instance):
            data = super().to_representation(instance)
            data["name"] = data["name"].upper()
            return data

    author = Author.objects.create(name="quiet")
    assert ShoutingAuthorSerializer.to_message(author).name == "QUIET"
    assert ShoutingAuthorSerializer.plan().columns is None  # List builds instances for it
    assert AuthorSerializer.to_message(author).name == "quiet"
    assert AuthorSerializer.plan().columns == ("id", "name")


def test_plan_columns_only_for_plain_model_columns(compiled):
    from catalog.serializers import BookSerializer, EverythingSerializer

    assert BookSerializer.plan().columns == ("id", "title", "author_id", "isbn")
    assert EverythingSerializer.plan().columns is None  # tags is many-to-many


@pytest.mark.django_db
def test_list_reads_columns_and_keeps_instances_where_needed(compiled):
    from catalog.models import Author, Book
    from catalog.services import BookService
    from generated_grpc.grpc import catalog_Book_pb2

    author = Author.objects.create(name="A")
    for n in range(3):
        Book.objects.create(title=f"t{n}", author=author, isbn=f"isbn-col-{n}")

    class Context:
        def is_active(self):
            return True

    def rows(service_class):
        service = service_class(
            request=catalog_Book_pb2.BookListRequest(),
            context=Context(),
            action="list",
            response_class=catalog_Book_pb2.BookListResponse,
        )
        return [
            (row.title, row.author, row.isbn)
            for batch in service.list(service.request, service.context)
            for row in batch.results
        ]

    class PrefetchingBookService(BookService):
        def get_queryset(self):  # a user's prefetch: rows must stay model instances
            return super().get_queryset().prefetch_related("author")

    expected = [(f"t{n}", author.pk, f"isbn-col-{n}") for n in range(3)]
    assert rows(BookService) == expected
    assert rows(PrefetchingBookService) == expected
