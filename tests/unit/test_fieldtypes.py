"""The type map (conversion.fieldtypes): every built-in field type, presence, relations, custom
and unmappable fields."""

import importlib

import pytest
from catalog.models import Everything
from django.db import models
from django.test.utils import isolate_apps
from google.protobuf.descriptor import FieldDescriptor as FD

from django_grpc_bus.conversion import fieldtypes
from django_grpc_bus.conversion.messages import repeated
from django_grpc_bus.protogen.schema import tracks_presence

# field name -> (proto type, label) as compiled; label: "optional", "repeated", "" or "message".
EXPECTED = {
    "id": ("int64", "optional"),
    "f_int": ("int32", ""),
    "f_bigint": ("int64", ""),
    "f_smallint": ("int32", ""),
    "f_posint": ("int32", ""),
    "f_possmall": ("int32", ""),
    "f_posbig": ("int64", ""),
    "f_float": ("double", ""),
    "f_decimal": ("string", ""),
    "f_bool": ("bool", ""),
    "f_char": ("string", ""),
    "f_text": ("string", ""),
    "f_slug": ("string", ""),
    "f_email": ("string", ""),
    "f_url": ("string", ""),
    "f_uuid": ("string", ""),
    "f_ip": ("string", ""),
    "f_filepath": ("string", ""),
    "f_file": ("string", ""),
    "f_image": ("string", ""),
    "f_date": ("string", ""),
    "f_datetime": ("google.protobuf.Timestamp", "message"),
    "f_time": ("string", ""),
    "f_duration": ("google.protobuf.Duration", "message"),
    "f_binary": ("bytes", "optional"),  # BinaryField is editable=False in Django
    "f_json": ("google.protobuf.Value", "message"),
    "f_choice_int": ("int32", ""),
    "f_choice_str": ("string", ""),
    "f_custom": ("string", ""),
    "f_null_int": ("int32", "optional"),
    "f_null_char": ("string", "optional"),
    "f_null_decimal": ("string", "optional"),
    "f_null_bool": ("bool", "optional"),
    "f_null_datetime": ("google.protobuf.Timestamp", "message"),
    "f_null_date": ("string", "optional"),
    "f_null_json": ("google.protobuf.Value", "message"),
    "f_default_int": ("int32", "optional"),
    "f_blank_char": ("string", "optional"),
    "f_auto_now": ("google.protobuf.Timestamp", "message"),
    "author": ("int32", ""),  # catalog.Author has an AutoField
    "editor": ("int32", "optional"),
    "token": ("string", "optional"),  # catalog.Token has a UUID primary key
    "tags": ("int32", "repeated"),  # catalog.Tag has a SmallAutoField
}
if hasattr(models, "GeneratedField"):
    EXPECTED["f_generated"] = ("int64", "optional")

SCALAR_NAMES = {
    FD.TYPE_INT32: "int32",
    FD.TYPE_INT64: "int64",
    FD.TYPE_DOUBLE: "double",
    FD.TYPE_BOOL: "bool",
    FD.TYPE_STRING: "string",
    FD.TYPE_BYTES: "bytes",
}


def test_every_concrete_field_of_the_model_is_covered():
    names = {f.name for f in [*Everything._meta.concrete_fields, *Everything._meta.many_to_many]}
    assert names == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_compiled_message_field(compiled, name):
    module = importlib.import_module("generated_grpc.grpc.Everything_pb2")
    field = module.EverythingData.DESCRIPTOR.fields_by_name[name]
    proto, label = EXPECTED[name]
    if field.type == FD.TYPE_MESSAGE:
        assert (field.message_type.full_name, "message") == (proto, label)
        return
    actual_label = "repeated" if repeated(field) else "optional" if field.has_presence else ""
    assert (SCALAR_NAMES[field.type], actual_label) == (proto, label)


def test_every_built_in_field_class_has_a_mapping():
    concrete = {
        cls
        for cls in vars(models).values()
        if isinstance(cls, type)
        and issubclass(cls, models.Field)
        and not issubclass(cls, models.fields.related.RelatedField)
        and cls.__module__.startswith("django.db.models.fields")
        and cls not in (models.Field, getattr(models, "CompositePrimaryKey", models.Field))
    }
    unmapped = []
    for cls in concrete:
        if not any(klass in fieldtypes.FIELD_TYPES for klass in cls.__mro__):
            unmapped.append(cls.__name__)
    # GeneratedField maps through its output_field; nothing else may be missing.
    assert set(unmapped) <= {"GeneratedField"}


def test_float_is_double_and_decimal_is_exact_string():
    assert fieldtypes.proto_type(Everything._meta.get_field("f_float")).proto == "double"
    decimal = fieldtypes.proto_type(Everything._meta.get_field("f_decimal"))
    assert (decimal.proto, decimal.kind) == ("string", "decimal")


def test_custom_subclass_maps_through_nearest_base():
    assert fieldtypes.proto_type(Everything._meta.get_field("f_custom")) == fieldtypes.STRING

    class Percent(models.PositiveSmallIntegerField):
        pass

    class Money(Percent):
        pass

    with isolate_apps("catalog"):

        class Priced(models.Model):
            price = Money()

            class Meta:
                app_label = "catalog"

        assert fieldtypes.proto_type(Priced._meta.get_field("price")) == fieldtypes.INT32


def test_unmappable_field_is_a_clear_error_naming_it():
    class Point(models.Field):
        def db_type(self, connection):
            return "point"

    with isolate_apps("catalog"):

        class Place(models.Model):
            where = Point()

            class Meta:
                app_label = "catalog"

        with pytest.raises(fieldtypes.UnmappableField) as caught:
            fieldtypes.proto_type(Place._meta.get_field("where"))
    message = str(caught.value)
    assert "catalog.Place.where" in message
    assert "Point" in message
    assert "exclude" in message


def test_postgres_array_field_is_repeated_and_nested_array_is_refused():
    from django.contrib.postgres.fields import ArrayField

    with isolate_apps("catalog"):

        class Scores(models.Model):
            values = ArrayField(models.IntegerField())
            grid = ArrayField(ArrayField(models.IntegerField()))

            class Meta:
                app_label = "catalog"

        values = Scores._meta.get_field("values")
        assert fieldtypes.is_repeated(values)
        assert fieldtypes.proto_type(values) == fieldtypes.INT32
        with pytest.raises(fieldtypes.UnmappableField, match=r"catalog\.Scores\.grid"):
            fieldtypes.proto_type(Scores._meta.get_field("grid"))


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        (models.IntegerField(), False),
        (models.IntegerField(null=True), True),
        (models.IntegerField(default=0), True),
        (models.CharField(max_length=3, blank=True), True),
        (models.DateTimeField(auto_now_add=True), True),
        (models.AutoField(primary_key=True), True),
        (models.CharField(max_length=3), False),
    ],
)
def test_presence_tracking(field, expected):
    assert tracks_presence(field) is expected
