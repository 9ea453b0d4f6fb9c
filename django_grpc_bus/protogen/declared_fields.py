"""A serializer's declared fields -> fields of its model's data message (SPEC §9).

A field declared on the service's serializer (``rating = SerializerMethodField()``,
``author_name = CharField(source="author.name")``, ``author_detail = AuthorSerializer(...)``)
becomes a field of ``<Model>Data``. Its proto type comes from the DRF field class (the first
class of its MRO in :data:`DRF_FIELD_TYPES`), from a ``SerializerMethodField``'s return
annotation, or, for a field that says nothing of its type (``ReadOnlyField``), from the model
field its ``source`` names. A nested serializer becomes a message nested in the data message,
named after the field (``author_detail`` -> ``BookData.AuthorDetail``), with the nested
serializer's fields, and ``repeated`` for ``many=True``. A field whose type cannot be known is a
:class:`DeclaredFieldError` naming the serializer, the field and the fix: never dropped.
"""

from __future__ import annotations

import datetime as dt
import decimal
import types
import typing
import uuid
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import FieldDoesNotExist, ImproperlyConfigured
from django.db import models
from rest_framework import fields as drf
from rest_framework import relations, serializers

from django_grpc_bus.conf import bus_settings
from django_grpc_bus.conversion import fieldtypes
from django_grpc_bus.conversion.fieldtypes import ProtoType
from django_grpc_bus.meta import ModelSelection, Selection
from django_grpc_bus.protogen.declarations import generated_service_model, registered_services
from django_grpc_bus.protogen.schema import tracks_presence

# DRF field class -> proto type. Looked up along each field class's MRO, so a subclass of a
# listed class (a user's EmailField, a RegexField) maps as its ancestor does.
DRF_FIELD_TYPES: dict[type[drf.Field], ProtoType] = {
    drf.BooleanField: fieldtypes.BOOL,
    drf.CharField: fieldtypes.STRING,
    drf.IntegerField: fieldtypes.INT64,
    drf.FloatField: fieldtypes.DOUBLE,
    drf.DecimalField: fieldtypes.DECIMAL,
    drf.UUIDField: fieldtypes.UUID,
    drf.DateField: fieldtypes.DATE,
    drf.TimeField: fieldtypes.TIME,
    drf.DateTimeField: fieldtypes.DATETIME,
    drf.DurationField: fieldtypes.DURATION,
    drf.JSONField: fieldtypes.JSON,
    drf.DictField: fieldtypes.JSON,
    drf.HStoreField: fieldtypes.JSON,
    drf.FileField: fieldtypes.FILE,
    drf.FilePathField: fieldtypes.STRING,
    relations.StringRelatedField: fieldtypes.STRING,
    relations.HyperlinkedRelatedField: fieldtypes.STRING,
}

# A SerializerMethodField's return annotation -> proto type.
ANNOTATION_TYPES: dict[Any, ProtoType] = {
    int: fieldtypes.INT64,
    float: fieldtypes.DOUBLE,
    bool: fieldtypes.BOOL,
    str: fieldtypes.STRING,
    bytes: fieldtypes.BYTES,
    decimal.Decimal: fieldtypes.DECIMAL,
    uuid.UUID: fieldtypes.UUID,
    dt.date: fieldtypes.DATE,
    dt.time: fieldtypes.TIME,
    dt.datetime: fieldtypes.DATETIME,
    dt.timedelta: fieldtypes.DURATION,
    dict: fieldtypes.JSON,
    typing.Any: fieldtypes.JSON,
}
ANNOTATION_NAMES = (
    "int, float, bool, str, bytes, Decimal, UUID, date, time, datetime, timedelta, dict"
)


class DeclaredFieldError(ImproperlyConfigured):
    """A declared serializer field whose proto type cannot be known; says which and the fix."""


@dataclass(frozen=True)
class DeclaredMessage:
    """The message generated for a nested serializer (nested in the data message)."""

    name: str
    comment: str
    fields: tuple[DeclaredField, ...]


@dataclass(frozen=True)
class DeclaredField:
    """One field of a message, from a serializer field."""

    name: str
    type: str  # as written in the .proto: "int64", ".google.protobuf.Timestamp", "AuthorDetail"
    optional: bool
    repeated: bool
    comment: str
    imports: frozenset[str] = frozenset()
    nested: DeclaredMessage | None = None


def read_data_fields(selection: Selection) -> dict[type[models.Model], tuple[DeclaredField, ...]]:
    """The declared fields of the serializers of the services ROOT_HANDLERS_HOOK registers, by
    model. Without a hook, or with one that cannot be imported, none (generation says why, in
    ``Declarations.note``)."""
    hook = bus_settings.raw("ROOT_HANDLERS_HOOK")
    if not hook:
        return {}
    try:
        services = registered_services(hook)
    except Exception:  # reported by read_declarations, which imports the same hook
        return {}
    selections = {selected.model: selected for selected in selection}
    found: dict[type[models.Model], tuple[DeclaredField, ...]] = {}
    owners: dict[type[models.Model], str] = {}
    for service_class in services:
        model = generated_service_model(service_class)
        serializer_class = getattr(service_class, "serializer_class", None)
        if model is None or model not in selections or not isinstance(serializer_class, type):
            continue
        fields = declared_data_fields(serializer_class, selections)
        path = f"{service_class.__module__}.{service_class.__qualname__}"
        if model in found and found[model] != fields:
            raise DeclaredFieldError(
                f"{owners[model]} and {path} both serve {model._meta.label} with serializers "
                "that declare different fields, but share one data message. Register one of "
                "them only, or declare the same fields on both."
            )
        found[model], owners[model] = fields, path
    return found


def declared_data_fields(
    serializer_class: type, selections: dict[type[models.Model], ModelSelection]
) -> tuple[DeclaredField, ...]:
    """The fields `serializer_class` declares, as fields of its model's data message.

    `selections` are the selected models (a nested serializer that follows its model's
    generated message, with no ``Meta.fields``, takes that model's selected fields).
    """
    declared = getattr(serializer_class, "_declared_fields", {})
    where = serializer_class.__qualname__
    model = _serializer_model(serializer_class)
    fields = tuple(
        _plan(f"{where}.{name}", name, field, model, selections, serializer_class)
        for name, field in declared.items()
        if not isinstance(field, drf.HiddenField)
    )
    _refuse_twin_messages(where, fields)
    return fields


def _refuse_twin_messages(where: str, fields: tuple[DeclaredField, ...]) -> None:
    """Two nested fields whose message names coincide (``author_detail``, ``authorDetail``)."""
    seen: dict[str, str] = {}
    for f in fields:
        if f.nested is not None:
            other = seen.setdefault(f.nested.name, f.name)
            if other != f.name:
                raise DeclaredFieldError(
                    f"{where}: the nested fields {other} and {f.name} would both make the "
                    f"message {f.nested.name}. Rename one of them."
                )


def _serializer_model(serializer_class: type) -> type[models.Model] | None:
    model = getattr(getattr(serializer_class, "Meta", None), "model", None)
    return model if isinstance(model, type) and issubclass(model, models.Model) else None


def _plan(
    where: str,
    name: str,
    field: drf.Field,
    model: type[models.Model] | None,
    selections: dict[type[models.Model], ModelSelection],
    owner: type,
) -> DeclaredField:
    """`field` (named `name`, of `owner`, a serializer of `model`) as a message field."""
    notes = []
    if field.read_only:
        notes.append("read-only")
    elif field.write_only:
        notes.append("write-only")
    if isinstance(field, serializers.ListSerializer):
        assert isinstance(field.child, serializers.BaseSerializer)
        nested = _nested_message(where, name, field.child, selections)
        notes.insert(0, f"{type(field.child).__name__}, many")
        return DeclaredField(name, nested.name, False, True, "; ".join(notes), nested=nested)
    if isinstance(field, serializers.BaseSerializer):
        nested = _nested_message(where, name, field, selections)
        notes.insert(0, type(field).__name__)
        if field.allow_null:
            notes.append("nullable: unset means null")
        return DeclaredField(name, nested.name, False, False, "; ".join(notes), nested=nested)
    ptype, repeated, nullable = _scalar_type(where, name, field, model, owner)
    if isinstance(field, drf.SerializerMethodField):
        notes.insert(0, "computed")
    if nullable or getattr(field, "allow_null", False):
        notes.append("nullable: unset means null")
    optional = not repeated and not ptype.is_message and (nullable or not field.required)
    return DeclaredField(
        name,
        f".{ptype.proto}" if ptype.is_message else ptype.proto,
        optional,
        repeated,
        "; ".join(notes),
        frozenset({ptype.import_path}) if ptype.import_path else frozenset(),
    )


def _scalar_type(
    where: str, name: str, field: drf.Field, model: type[models.Model] | None, owner: type
) -> tuple[ProtoType, bool, bool]:
    """(proto type, repeated, nullable) of a field that is not a nested serializer."""
    if isinstance(field, drf.SerializerMethodField):
        return _annotated_type(where, name, field, owner)
    if isinstance(field, relations.ManyRelatedField):
        ptype, _repeated, _nullable = _scalar_type(where, name, field.child_relation, model, owner)
        return ptype, True, False
    if isinstance(field, drf.ListField):
        ptype, repeated, _nullable = _scalar_type(where, name, field.child, model, owner)
        if repeated:
            raise DeclaredFieldError(
                f"{where} ({type(field).__name__}) is a list of lists, which protobuf cannot "
                "express. Make it a JSONField (google.protobuf.Value) or flatten it."
            )
        return ptype, True, False
    if isinstance(field, drf.ChoiceField) and not isinstance(field, drf.FilePathField):
        keys = list(field.choices)
        numbers = keys and all(isinstance(k, int) and not isinstance(k, bool) for k in keys)
        ptype = fieldtypes.INT64 if numbers else fieldtypes.STRING
        return ptype, isinstance(field, drf.MultipleChoiceField), False
    if isinstance(field, (relations.PrimaryKeyRelatedField, relations.SlugRelatedField)):
        return _related_key_type(where, field), False, False
    for klass in type(field).__mro__:
        found = DRF_FIELD_TYPES.get(klass)
        if found is not None:
            return found, False, False
    source_field = _source_model_field(model, field.source or name)
    if source_field is not None:
        return (
            fieldtypes.proto_type(source_field),
            fieldtypes.is_repeated(source_field),
            bool(source_field.null),
        )
    raise DeclaredFieldError(
        f"{where} is a {type(field).__name__}, whose proto type cannot be known: it derives "
        f"from no DRF field with a known type, and its source "
        f"{field.source or name!r} is no model field. Declare it as a typed DRF field "
        "(CharField, IntegerField, DecimalField, DateTimeField, ...; e.g. "
        f"`{name} = serializers.CharField(read_only=True)`), or as a SerializerMethodField "
        "whose get_ method has a return annotation."
    )


def _related_key_type(where: str, field: drf.Field) -> ProtoType:
    queryset = getattr(field, "queryset", None)
    related = getattr(queryset, "model", None)
    if related is None:
        raise DeclaredFieldError(
            f"{where} ({type(field).__name__}) has no queryset, so the type of its key cannot "
            "be known. Give it `queryset=...` (read_only fields too, for generation)."
        )
    slug = getattr(field, "slug_field", None)
    try:
        target = related._meta.pk if slug is None else related._meta.get_field(slug)
    except FieldDoesNotExist:
        raise DeclaredFieldError(
            f"{where}: {related._meta.label} has no field {slug!r} (its slug_field)."
        ) from None
    return fieldtypes.proto_type(target)


def _source_model_field(model: type[models.Model] | None, source: str) -> models.Field | None:
    """The model field a dotted `source` ends at (``author.name``), or None."""
    if model is None or source == "*":
        return None
    current: Any = model
    found = None
    for part in source.split("."):
        if current is None:
            return None
        try:
            found = current._meta.get_field(part)
        except FieldDoesNotExist:
            return None
        if not getattr(found, "concrete", False):
            return None
        current = found.related_model if found.is_relation else None
    return found


def _annotated_type(
    where: str, name: str, field: drf.SerializerMethodField, serializer_class: type
) -> tuple[ProtoType, bool, bool]:
    method_name = field.method_name or f"get_{name}"
    method = getattr(serializer_class, method_name, None)
    fix = (
        f"Annotate its return type: `def {method_name}(self, obj) -> int:` (one of "
        f"{ANNOTATION_NAMES}, list[...] of one, or one `| None`)."
    )
    if method is None:
        raise DeclaredFieldError(f"{where} (SerializerMethodField) has no method {method_name}.")
    try:
        hints = typing.get_type_hints(method)
    except Exception as exc:  # a forward reference that does not resolve, say
        raise DeclaredFieldError(
            f"{where} (SerializerMethodField): the annotations of {method_name} cannot be read "
            f"({type(exc).__name__}: {exc}). {fix}"
        ) from None
    if "return" not in hints:
        raise DeclaredFieldError(
            f"{where} (SerializerMethodField) has no return annotation on {method_name}, so its "
            f"proto type cannot be known. {fix}"
        )
    annotation = hints["return"]
    nullable = False
    args = typing.get_args(annotation)
    if _is_union(annotation) and type(None) in args:
        rest = [arg for arg in args if arg is not type(None)]
        nullable = True
        annotation = rest[0] if len(rest) == 1 else annotation
    repeated = False
    if typing.get_origin(annotation) in (list, tuple, set, frozenset) or annotation in (
        list,
        tuple,
    ):
        items = [arg for arg in typing.get_args(annotation) if arg is not Ellipsis]
        annotation = items[0] if len(set(items)) == 1 else None
        repeated = True
    if typing.get_origin(annotation) is dict:
        annotation = dict
    found = ANNOTATION_TYPES.get(annotation)
    if found is None or (repeated and found is fieldtypes.JSON and annotation is not dict):
        raise DeclaredFieldError(
            f"{where} (SerializerMethodField): {method_name} returns "
            f"{hints['return']!r}, which has no proto type. {fix}"
        )
    return found, repeated, nullable and not repeated


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _nested_message(
    where: str,
    name: str,
    serializer: serializers.BaseSerializer[Any],
    selections: dict[type[models.Model], ModelSelection],
) -> DeclaredMessage:
    serializer_class = type(serializer)
    type_name = "".join(part[:1].upper() + part[1:] for part in name.split("_") if part)
    if not type_name or not type_name[0].isalpha():
        raise DeclaredFieldError(f"{where}: a field name that makes no message name ({name!r}).")
    model = _serializer_model(serializer_class)
    fields = _nested_fields(where, serializer_class, model, selections)
    planned = tuple(
        _plan(f"{where}.{field_name}", field_name, field_, model, selections, serializer_class)
        if isinstance(field_, drf.Field)  # a declared or non-model field, typed as at top level
        else _model_field(field_, model)
        for field_name, field_ in fields
    )
    _refuse_twin_messages(f"{where} ({serializer_class.__name__})", planned)
    comment = f"{serializer_class.__name__}'s fields, nested in the field {name}."
    return DeclaredMessage(type_name, comment, planned)


def _nested_fields(
    where: str,
    serializer_class: type,
    model: type[models.Model] | None,
    selections: dict[type[models.Model], ModelSelection],
) -> list[tuple[str, Any]]:
    """The nested serializer's fields: (name, model field) for model columns, (name, DRF
    field) for others. One with no ``Meta.fields`` that follows its generated message (a
    ModelProtoSerializer) has its model's selected fields plus its declared ones."""
    meta = getattr(serializer_class, "Meta", None)
    declared = getattr(serializer_class, "_declared_fields", {})
    follows_message = (
        model is not None
        and getattr(meta, "fields", None) is None
        and getattr(meta, "exclude", None) is None
        and hasattr(serializer_class, "get_proto_class")
    )
    if follows_message:
        assert model is not None
        selected = selections.get(model)
        if selected is None:
            raise DeclaredFieldError(
                f"{where} nests {serializer_class.__name__}, which has no Meta.fields (it "
                f"follows its model's message), but {model._meta.label} is not in "
                f"service_meta.yaml. List its fields in {serializer_class.__name__}.Meta.fields, "
                "or select the model."
            )
        names = [f.name for f in selected.fields if f.name not in declared]
        return [(n, model._meta.get_field(n)) for n in names] + [
            (n, f) for n, f in declared.items() if not isinstance(f, drf.HiddenField)
        ]
    try:
        instance_fields = serializer_class().fields
    except Exception as exc:  # the project's serializer may raise anything
        raise DeclaredFieldError(
            f"{where}: the nested {serializer_class.__name__} cannot be built "
            f"({type(exc).__name__}: {exc})."
        ) from None
    result: list[tuple[str, Any]] = []
    for field_name, field_ in instance_fields.items():
        if isinstance(field_, drf.HiddenField):
            continue
        if field_name in declared:
            result.append((field_name, field_))
            continue
        model_field = _source_model_field(model, field_.source) if model else None
        if model_field is not None and not isinstance(field_, serializers.BaseSerializer):
            result.append((field_name, model_field))
        else:
            result.append((field_name, field_))
    return result


def _model_field(field_: models.Field, model: type[models.Model] | None) -> DeclaredField:
    ptype = fieldtypes.proto_type(field_)
    repeated = fieldtypes.is_repeated(field_)
    notes = []
    if field_.is_relation and field_.related_model is not None:
        related = field_.related_model
        notes.append(f"primary key of {related._meta.app_label}.{related.__name__}")
    if field_.null and not repeated:
        notes.append("nullable: unset means null")
    return DeclaredField(
        field_.name,
        f".{ptype.proto}" if ptype.is_message else ptype.proto,
        not repeated and not ptype.is_message and tracks_presence(field_),
        repeated,
        "; ".join(notes),
        frozenset({ptype.import_path}) if ptype.import_path else frozenset(),
    )
