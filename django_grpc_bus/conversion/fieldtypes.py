"""The type map: the one mapping from Django model fields to protobuf types.

The generator reads it to write ``.proto`` files; the serializer reads a field's `kind` to pick
the writer that copies model values into messages. The client has no models: it goes by the
message descriptors, through the same conversions (``conversion.messages``). A field class
that is not in the table maps through its nearest ancestor that is (so custom subclasses of
built-in fields work); a field with no such ancestor is an :class:`UnmappableField` error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeGuard

from django.core.exceptions import ImproperlyConfigured
from django.db import models

if TYPE_CHECKING:
    from django.contrib.postgres.fields import ArrayField

TIMESTAMP_IMPORT = "google/protobuf/timestamp.proto"
DURATION_IMPORT = "google/protobuf/duration.proto"
STRUCT_IMPORT = "google/protobuf/struct.proto"


@dataclass(frozen=True)
class ProtoType:
    """A protobuf type for a model field, and the kind of value it carries.

    `kind` names the conversion of the model's Python value into the message field
    (``conversion.scalars.ENCODERS``, ``conversion.wellknown``); `import_path` is the
    ``.proto`` file that defines a well-known type.
    """

    proto: str
    kind: str
    import_path: str | None = None

    @property
    def is_message(self) -> bool:
        """Message-typed fields track presence by themselves and cannot be ``optional``."""
        return self.import_path is not None


INT32 = ProtoType("int32", "int")
INT64 = ProtoType("int64", "int")
DOUBLE = ProtoType("double", "float")
BOOL = ProtoType("bool", "bool")
STRING = ProtoType("string", "str")
BYTES = ProtoType("bytes", "bytes")
DECIMAL = ProtoType("string", "decimal")
UUID = ProtoType("string", "uuid")
FILE = ProtoType("string", "file")
DATE = ProtoType("string", "date")
TIME = ProtoType("string", "time")
DATETIME = ProtoType("google.protobuf.Timestamp", "datetime", TIMESTAMP_IMPORT)
DURATION = ProtoType("google.protobuf.Duration", "duration", DURATION_IMPORT)
JSON = ProtoType("google.protobuf.Value", "json", STRUCT_IMPORT)

# Order does not matter: lookup walks each field class's MRO and takes the first hit.
FIELD_TYPES: dict[type[models.Field], ProtoType] = {
    models.AutoField: INT32,
    models.SmallAutoField: INT32,
    models.BigAutoField: INT64,
    models.IntegerField: INT32,
    models.SmallIntegerField: INT32,
    models.BigIntegerField: INT64,
    models.PositiveIntegerField: INT32,
    models.PositiveSmallIntegerField: INT32,
    models.PositiveBigIntegerField: INT64,
    models.FloatField: DOUBLE,
    models.DecimalField: DECIMAL,
    models.BooleanField: BOOL,
    models.CharField: STRING,
    models.TextField: STRING,
    models.SlugField: STRING,
    models.EmailField: STRING,
    models.URLField: STRING,
    models.GenericIPAddressField: STRING,
    models.IPAddressField: STRING,  # removed from use in Django 1.9; kept for old migrations
    models.FilePathField: STRING,
    models.UUIDField: UUID,
    models.FileField: FILE,
    models.ImageField: FILE,
    models.DateField: DATE,
    models.DateTimeField: DATETIME,
    models.TimeField: TIME,
    models.DurationField: DURATION,
    models.BinaryField: BYTES,
    models.JSONField: JSON,
}


class UnmappableField(ImproperlyConfigured):
    """A model field whose type has no protobuf mapping."""


def describe(field: models.Field) -> str:
    """``app_label.Model.field`` for messages that must name a field."""
    model = field.model
    return f"{model._meta.app_label}.{model.__name__}.{field.name}"


def _unmappable(field: models.Field, why: str) -> UnmappableField:
    return UnmappableField(
        f"{describe(field)} ({type(field).__name__}) {why}. Exclude it in service_meta.yaml "
        "(`exclude: [{name}]`), or make the field class subclass a built-in Django field.".format(
            name=field.name
        )
    )


def _is_array_field(field: models.Field) -> TypeGuard[ArrayField]:
    # Compared by name so that django.contrib.postgres (and psycopg) need not be importable.
    return any(
        f"{klass.__module__}.{klass.__qualname__}"
        == "django.contrib.postgres.fields.array.ArrayField"
        for klass in type(field).__mro__
    )


def is_repeated(field: models.Field) -> bool:
    """Whether the field is a ``repeated`` proto field (many-to-many, PostgreSQL arrays)."""
    return field.many_to_many is True or _is_array_field(field)


def proto_type(field: models.Field) -> ProtoType:
    """The proto type of one value of `field` (of one element, for repeated fields)."""
    if field.is_relation:
        related_model = field.related_model
        if field.many_to_many and related_model is not None:
            return proto_type(related_model._meta.pk)
        if (field.many_to_one or field.one_to_one) and isinstance(field, models.ForeignObject):
            return proto_type(field.target_field)
        raise _unmappable(field, "is a relation without a column of its own")
    if _is_array_field(field):
        if _is_array_field(field.base_field):
            raise _unmappable(field, "is a nested array, which protobuf cannot express")
        return proto_type(field.base_field)
    output_field = getattr(field, "output_field", None)
    if isinstance(field, getattr(models, "GeneratedField", ())) and output_field is not None:
        return proto_type(output_field)
    for klass in type(field).__mro__:
        found = FIELD_TYPES.get(klass)
        if found is not None:
            return found
    raise _unmappable(field, "has no protobuf mapping and derives from no mapped field")
