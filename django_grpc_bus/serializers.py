"""Serializers between model instances and protobuf messages, validating as DRF does.

``ModelProtoSerializer`` is a DRF ``ModelSerializer`` with ``Meta.proto_class``: ``.message``
builds the message of ``.instance`` and ``data_from_message()`` turns a request message into
the ``data`` DRF validates. Model fields are copied straight from instance attributes to message
fields (no JSON, no per-field DRF call); declared fields (``SerializerMethodField``, ``source=``)
go through their own ``to_representation``. The per-class plan is built once.
"""

from __future__ import annotations

import copy
import datetime as dt
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, cast

from django.core.exceptions import FieldDoesNotExist
from django.db import models
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message
from rest_framework import serializers

from django_grpc_bus import validation_plan
from django_grpc_bus.conversion import fieldtypes, messages, scalars, wellknown

if TYPE_CHECKING:
    from rest_framework.utils.model_meta import FieldInfo

Getter = Callable[[Any], Any]

# DRF fields whose values travel as proto strings but are never the empty string.
NOT_BLANK_TEXT = (
    serializers.DecimalField,
    serializers.DateField,
    serializers.TimeField,
    serializers.DateTimeField,
    serializers.UUIDField,
    serializers.IPAddressField,
)


class FileNameField(serializers.CharField):
    """A file or image field as its storage name: gRPC messages carry no uploads."""

    def to_representation(self, value: Any) -> str:
        return scalars.file_name(value)


class SerializerPlan:
    """What one serializer class does with messages, worked out once.

    ``fill(message, instance)`` copies the readable fields of an instance into a message;
    ``writable``/``nullable``/``fields`` answer questions about the fields without building
    them per call; ``prefetch`` names the many-to-many fields a list should prefetch.

    When every readable field is a plain model column, ``columns`` names them (attnames) and
    ``fill_row(message, row)`` fills a message from a ``values_list()`` tuple, so a List need
    not build a model instance per row. A serializer that overrides ``to_representation``
    keeps it: its messages are built from what that returns.
    """

    __slots__ = (
        "blank_means_absent",
        "columns",
        "fields",
        "getters",
        "given_nested",
        "message_class",
        "nullable",
        "prefetch",
        "row_writers",
        "select_related",
        "serializer_class",
        "writable",
        "zero_means_absent",
    )

    def __init__(
        self, serializer: serializers.Serializer[Any], message_class: type[Message]
    ) -> None:
        self.message_class = message_class
        # The stubs give DESCRIPTOR the pure-Python or the upb class; at run time they are one.
        descriptor = cast(Descriptor, message_class.DESCRIPTOR)
        proto_writers = messages.plan_for(descriptor).writers
        model = getattr(getattr(serializer, "Meta", None), "model", None)
        declared = getattr(serializer, "_declared_fields", {})
        fields = serializer.fields
        self.fields = frozenset(fields)
        # Writable nested serializers: their messages' data is read as given (unset is absent).
        self.given_nested = frozenset(
            name
            for name, field in fields.items()
            if not field.read_only and isinstance(field, serializers.BaseSerializer)
        )
        self.writable = frozenset(name for name, field in fields.items() if not field.read_only)
        self.nullable = frozenset(name for name in self.writable if fields[name].allow_null)
        # Values carried as text that can never be "": an empty one is a field not given.
        self.blank_means_absent = frozenset(
            name
            for name in self.writable
            if isinstance(fields[name], NOT_BLANK_TEXT)
            and not getattr(fields[name], "allow_blank", False)
        )
        # Relations the message carries without presence (required ones), whose proto3 zero
        # value is never a valid key: a 0 or "" there is a relation not given.
        proto_fields = message_class.DESCRIPTOR.fields_by_name
        zeros = {name: absent_key(fields[name], proto_fields.get(name)) for name in self.writable}
        self.zero_means_absent = {name: zero for name, zero in zeros.items() if zero is not None}
        self.serializer_class = type(serializer)
        self.getters: list[tuple[str, Getter, messages.Writer]] = []
        prefetch = []
        columns: list[str] | None = []
        row_writers: list[messages.Writer] = []
        for name, field in fields.items():
            if field.write_only or name not in proto_writers:
                continue
            getter = None
            writer = proto_writers[name]
            nested = nested_parts(field, descriptor.fields_by_name[name])
            if nested is not None:
                getter, writer = nested
                columns = None  # a nested message is no column
            elif model is not None and name not in declared and field.source == name:
                getter = _model_getter(model, name)
                if getter is not None:
                    model_field = model._meta.get_field(name)
                    if model_field.many_to_many:
                        prefetch.append(name)
                    else:
                        kind = fieldtypes.proto_type(model_field).kind
                        writer = direct_writer(kind, name, writer)
                        if columns is not None:
                            columns.append(model_field.attname)
                            row_writers.append(writer)
            if getter is None or name in prefetch:
                columns = None  # a value that is not a column: rows need instances
            self.getters.append((name, getter or _drf_getter(field), writer))
        select, more = relation_paths(model, fields)
        self.select_related = select
        self.prefetch = (*prefetch, *more)
        if overrides_representation(type(serializer)):
            columns = None
            self.getters = [("", _representation_getter(serializer), _fill_from_dict)]
        self.columns = tuple(columns) if columns else None
        self.row_writers = tuple(row_writers)

    def fill(self, message: Any, instance: Any) -> Any:
        for _name, getter, write in self.getters:
            value = getter(instance)
            if value is not None:
                write(message, value)
        return message

    def fill_row(self, message: Any, row: tuple) -> Any:
        """Fill `message` from a ``values_list(*columns)`` row."""
        for value, write in zip(row, self.row_writers, strict=True):
            if value is not None:
                write(message, value)
        return message

    def build(self, instance: Any) -> Any:
        return self.fill(self.message_class(), instance)


def nested_parts(field: serializers.Field, proto_field: Any) -> tuple[Getter, Any] | None:
    """(getter, writer) of a nested serializer's field (``many=True`` too): the related
    object(s) are read as DRF reads them (``source``) and written into the nested message(s)
    by the nested serializer's own plan, with no dict in between. None for other fields."""
    many = isinstance(field, serializers.ListSerializer)
    child = cast(serializers.ListSerializer[Any], field).child if many else field
    if not isinstance(child, serializers.Serializer) or proto_field.message_type is None:
        return None
    plan = SerializerPlan(child, message_factory.GetMessageClass(proto_field.message_type))
    fill, name = plan.fill, proto_field.name

    def get(instance: Any) -> Any:
        try:
            return field.get_attribute(instance)
        except serializers.SkipField:
            return None

    if many:

        def write_many(message: Any, related: Any) -> None:
            target = getattr(message, name)
            items = related.all() if isinstance(related, models.Manager) else related
            for item in items:
                fill(target.add(), item)

        return get, write_many

    def write_one(message: Any, related: Any) -> None:
        target = getattr(message, name)
        target.SetInParent()
        fill(target, related)

    return get, write_one


def relation_paths(
    model: type[models.Model] | None, fields: Mapping[str, serializers.Field]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(select_related, prefetch_related) lookups for what `fields` read through relations.

    A field whose ``source`` goes through to-one relations (``author.name``, a nested
    ``AuthorSerializer(source="author")``) adds a ``select_related``; one through a to-many
    relation (a nested ``many=True``, a reverse foreign key) a ``prefetch_related``; a nested
    serializer's own paths follow, prefixed. A List applies them to each batch of rows, so a
    nested field costs no query per row. What a SerializerMethodField reads is not known:
    select or prefetch it in the service's ``get_queryset``.
    """
    select: list[str] = []
    prefetch: list[str] = []
    if model is None:
        return (), ()
    for field in fields.values():
        if field.write_only or isinstance(field, serializers.SerializerMethodField):
            continue
        attrs = list(getattr(field, "source_attrs", []) or [])
        nested = field.child if isinstance(field, serializers.ListSerializer) else field
        if not isinstance(nested, serializers.BaseSerializer):
            attrs = attrs[:-1]  # the last is the value's own column
        path, to_many, current = [], False, model
        for attr in attrs:
            relation = _relation(current, attr)
            if relation is None:
                break
            path.append(attr)
            to_many = to_many or bool(relation.many_to_many or relation.one_to_many)
            current = relation.related_model
        else:
            if not path:
                continue
            lookup = "__".join(path)
            (prefetch if to_many else select).append(lookup)
            if isinstance(nested, serializers.Serializer):
                inner_select, inner_prefetch = relation_paths(current, nested.fields)
                inner = [f"{lookup}__{p}" for p in inner_select]
                (prefetch if to_many else select).extend(inner)
                prefetch.extend(f"{lookup}__{p}" for p in inner_prefetch)
    return tuple(dict.fromkeys(select)), tuple(dict.fromkeys(prefetch))


def _relation(model: type[models.Model], attr: str) -> Any:
    """The relation `model` reaches through its attribute `attr` (a reverse one by its accessor,
    ``book_set``), or None."""
    for relation in model._meta.get_fields():
        if not relation.is_relation or relation.related_model is None:
            continue
        accessor = (
            relation.get_accessor_name()
            if isinstance(relation, models.ForeignObjectRel)
            else relation.name
        )
        # (Django 6 no longer counts a ManyToManyField as concrete: it has no column.)
        many_to_many = isinstance(relation, models.ManyToManyField)
        if accessor == attr and (relation.concrete or relation.auto_created or many_to_many):
            return relation
    return None


def absent_key(field: serializers.Field, proto_field: Any) -> int | str | None:
    """The zero value of `proto_field` when it stands for a relation `field` not given.

    That is when the message field has no presence (proto3 sends its zero value for "unset")
    and the zero value can never name a row: 0 for a key the database assigns (an auto field),
    "" for a text key that cannot be blank. None otherwise: the value is taken as given.
    """
    if proto_field is None or proto_field.has_presence or messages.repeated(proto_field):
        return None
    if isinstance(field, serializers.PrimaryKeyRelatedField):
        target_name = None
    elif isinstance(field, serializers.SlugRelatedField):
        target_name = field.slug_field
    else:
        return None
    queryset = getattr(field, "queryset", None)
    if queryset is None:
        return None
    opts = queryset.model._meta
    try:
        target = opts.pk if target_name is None else opts.get_field(target_name)
    except FieldDoesNotExist:  # a slug_field that is a path: take the value as given
        return None
    while target.is_relation and getattr(target, "target_field", None) is not None:
        target = target.target_field  # a key that is itself a relation (a one-to-one pk)
    if proto_field.type == messages.FD.TYPE_STRING:
        return "" if not target.blank or isinstance(target, models.UUIDField) else None
    if proto_field.type in scalars.INT_TYPES and isinstance(target, models.AutoField):
        return 0  # AutoField, BigAutoField and SmallAutoField alike
    return None


def overrides_representation(serializer_class: type[serializers.BaseSerializer[Any]]) -> bool:
    """Whether a user's serializer class defines its own ``to_representation``."""
    own = serializer_class.to_representation
    return own not in (
        serializers.ModelSerializer.to_representation,
        serializers.Serializer.to_representation,
    )


def _representation_getter(serializer: serializers.BaseSerializer[Any]) -> Getter:
    serializer_class = type(serializer)

    def represent(instance: Any) -> Any:
        return serializer_class(instance).data

    return represent


def _fill_from_dict(message: Any, data: Any) -> None:
    messages.fill_message(message, {k: v for k, v in data.items() if k in _field_names(message)})


def _field_names(message: Any) -> Any:
    return messages.plan_for(message.DESCRIPTOR).writers


# Kinds whose model values are already what the message field takes (int, str, ...): they are
# assigned as they are, and only a value of another type goes through the coercing writer.
DIRECT_KINDS = frozenset({"int", "float", "bool", "str", "bytes"})


def direct_writer(kind: str, name: str, coercing: messages.Writer) -> messages.Writer:
    """The fastest correct writer for a model field's value of the type map's `kind`.

    A value of the type the model gives is written straight (scalars as they are; decimals,
    dates, UUIDs and files by ``scalars.ENCODERS``; datetimes by
    ``wellknown.datetime_to_timestamp``, a naive one in TIME_ZONE as Django stores it); any
    other value (one a user assigned without saving, say) falls back to the coercing writer.
    """
    if kind in DIRECT_KINDS:

        def write(message: Any, value: Any) -> None:
            try:
                setattr(message, name, value)
            except TypeError:
                coercing(message, value)

        return write
    encode = scalars.ENCODERS.get(kind)
    if encode is not None:

        def write_encoded(message: Any, value: Any) -> None:
            try:
                setattr(message, name, encode(value))
            except (TypeError, ValueError, AttributeError):
                coercing(message, value)

        return write_encoded
    if kind == "datetime":
        to_timestamp = wellknown.datetime_to_timestamp
        stored_to_aware = wellknown.stored_to_aware

        def write_timestamp(message: Any, value: Any) -> None:
            if isinstance(value, dt.datetime):
                to_timestamp(value, getattr(message, name), stored_to_aware)
            else:
                coercing(message, value)

        return write_timestamp
    return coercing


def _model_getter(model: type[models.Model], name: str) -> Getter | None:
    try:
        field = model._meta.get_field(name)
    except Exception:
        return None
    if field.many_to_many and not field.auto_created:
        return lambda instance: [related.pk for related in getattr(instance, name).all()]
    if not field.concrete:  # reverse relations, generic relations
        return None
    attname = field.attname
    return lambda instance: getattr(instance, attname)


def _drf_getter(field: serializers.Field) -> Getter:
    def get(instance: Any) -> Any:
        try:
            attribute = field.get_attribute(instance)
        except serializers.SkipField:
            return None
        return None if attribute is None else field.to_representation(attribute)

    return get


# Fields whose __init__ reads state that may change between calls (FilePathField lists its
# directory), and nested serializers: re-created for every instance, as DRF does.
RECREATED_FIELDS = (serializers.BaseSerializer, serializers.FilePathField)


def clone_field(field: serializers.Field) -> serializers.Field:
    """A fresh, unbound copy of an unbound field, without running its ``__init__`` again.

    DRF builds every field of a ModelSerializer anew for each instance (model introspection,
    ``build_field``); copying a prototype gives the same fields at a tenth of the cost. Lists
    and dicts a user might mutate per instance are copied; nested serializers are deep-copied.
    """
    if isinstance(field, RECREATED_FIELDS):
        return copy.deepcopy(field)  # runs __init__ again
    clone = object.__new__(type(field))  # copy.copy, without its __reduce_ex__ round trip
    clone.__dict__.update(field.__dict__)
    if "_validators" in clone.__dict__:
        clone.__dict__["_validators"] = list(clone.__dict__["_validators"])
    clone.error_messages = dict(clone.error_messages)
    for attribute in ("child_relation", "child"):  # many=True relations, ListField, DictField
        child = clone.__dict__.get(attribute)
        if isinstance(child, serializers.Field):
            # DRF bound the child to its parent in the parent's __init__ (field_name ""):
            # the copy keeps that binding and only needs to point at its new parent.
            copied = clone_field(child)
            # The stubs say a parent is a serializer; a ListField's child's is the ListField.
            copied.parent = clone  # type: ignore[assignment]
            setattr(clone, attribute, copied)
    return clone


class MessageCoverage(NamedTuple):
    """How a serializer's fields and its message's fields fail to match (empty: they do)."""

    unread: tuple[str, ...]  # message fields the serializer does not have
    uncarried: tuple[str, ...]  # declared serializer fields the message does not have


if TYPE_CHECKING:
    # The mixin is always combined with a DRF Serializer (ProtoSerializer, ModelProtoSerializer).
    _SerializerBase = serializers.Serializer[Any]
else:
    _SerializerBase = object


class ProtoSerializerMixin(_SerializerBase):
    """Message conversion for DRF serializers whose ``Meta.proto_class`` is a message class.

    Fields are built once per class and copied per instance (``cache_fields``); set it to False
    on a serializer whose ``get_fields()`` depends on the instance (its context, its request).
    """

    cache_fields = True
    _plans_lock = threading.Lock()
    # Each class's own, read through cls.__dict__ (never a parent's): set on first use.
    _field_prototypes: ClassVar[dict[str, serializers.Field]]
    _validator_prototypes: ClassVar[list[Any]]
    _plan: ClassVar[SerializerPlan]

    def get_fields(self) -> dict[str, serializers.Field]:
        cls = type(self)
        if not cls.cache_fields:
            return super().get_fields()
        prototypes = cls.__dict__.get("_field_prototypes")
        if prototypes is None:
            # Kept unbound: only copies are ever bound to a serializer instance.
            prototypes = super().get_fields()
            cls._field_prototypes = prototypes
        return {name: clone_field(field) for name, field in prototypes.items()}

    def get_validators(self) -> list[Any]:
        cls = type(self)
        if not cls.cache_fields:
            return super().get_validators()
        validators = cls.__dict__.get("_validator_prototypes")
        if validators is None:
            validators = cls._validator_prototypes = list(super().get_validators())
        return list(validators)

    def is_valid(self, *, raise_exception: bool = False) -> bool:
        self.fields_as_class()  # decided before validation builds any field
        return super().is_valid(raise_exception=raise_exception)

    def fields_as_class(self) -> bool:
        """Whether this instance's fields and validators are still its class's: neither built
        nor set before its validation began (a view's ``get_serializer`` or an ``__init__`` may
        change them for one call). Decided once, at the first call (``is_valid``)."""
        decided = self.__dict__.get("_fields_as_class")
        if decided is None:
            decided = "fields" not in self.__dict__ and "_validators" not in self.__dict__
            self._fields_as_class = decided
        return decided

    @classmethod
    def get_proto_class(cls) -> type[Message]:
        meta = getattr(cls, "Meta", None)
        proto_class = getattr(meta, "proto_class", None)
        if proto_class is None:
            raise AssertionError(f"{cls.__name__}.Meta needs a `proto_class` (a message class).")
        return proto_class

    @classmethod
    def plan(cls) -> SerializerPlan:
        """This class's plan, built on first use (each subclass has its own)."""
        plan = cls.__dict__.get("_plan")
        if plan is None:
            with cls._plans_lock:
                plan = cls.__dict__.get("_plan")
                if plan is None:
                    plan = SerializerPlan(cls(), cls.get_proto_class())
                    cls._plan = plan
        return plan

    @classmethod
    def message_coverage(cls) -> MessageCoverage:
        """Which message fields this serializer ignores, and which of its fields have no place.

        A message field that is not a serializer field is dropped from every request and
        never filled in a response; a declared serializer field that the message has no field
        for is computed and thrown away. The system checks report both.
        """
        message_fields = [field.name for field in cls.get_proto_class().DESCRIPTOR.fields]
        serializer_fields = cls().fields
        declared = getattr(cls, "_declared_fields", {})
        return MessageCoverage(
            unread=tuple(name for name in message_fields if name not in serializer_fields),
            uncarried=tuple(name for name in declared if name not in message_fields),
        )

    @classmethod
    def to_message(cls, instance: Any) -> Any:
        """The message for one instance (the fast path used for every response row)."""
        return cls.plan().build(instance)

    @classmethod
    def to_messages(cls, instances: Iterable[Any]) -> list[Any]:
        build = cls.plan().build
        return [build(instance) for instance in instances]

    @property
    def message(self) -> Any:
        """Like DRF's ``.data``, as a message: of the instance, else of the validated data."""
        if self.instance is not None and not getattr(self, "_errors", None):
            return self.to_message(self.instance)
        return messages.build_message(self.get_proto_class(), self.data)

    @classmethod
    def data_from_message(
        cls, message: Any, *, only: Iterable[str] | None = None, nulls: Iterable[str] = ()
    ) -> dict[str, Any]:
        """The ``data`` for DRF validation: the fields the message gave.

        Unset fields with presence are left out ("not given"), unless named in `nulls`, which
        makes them explicit nulls; so are empty strings of fields that cannot be blank (dates,
        decimals, UUIDs), so DRF says "required" rather than "wrong format", and the zero
        value of a required relation that no row can have (0 for an auto key), so DRF says
        "required" rather than "Invalid pk". `only` restricts the result to some fields (a
        FieldMask).
        """
        data = messages.present_fields(message)
        plan = cls.plan()
        for name in plan.given_nested & data.keys():
            value = getattr(message, name)
            data[name] = (
                [messages.given_fields(item) for item in value]
                if isinstance(data[name], list)
                else messages.given_fields(value)
            )
        for name in plan.blank_means_absent:
            if data.get(name) == "":
                del data[name]
        for name, zero in plan.zero_means_absent.items():
            if data.get(name) == zero:
                del data[name]
        for name in nulls:
            data.setdefault(name, None)
        if only is not None:
            wanted = set(only)
            data = {name: value for name, value in data.items() if name in wanted}
        return data


def writes_own_names(serializer_class: type[serializers.Serializer[Any]]) -> bool:
    """Whether every writable field validates into its own name: none has another ``source``
    (``AuthorSerializer(source="book_set", many=True)``), whose value DRF puts under the
    source. Cached per class."""
    cached = serializer_class.__dict__.get("_writes_own_names")
    if cached is None:
        cached = all(
            field.read_only or field.source_attrs == [field.field_name]
            for field in serializer_class().fields.values()
        )
        serializer_class._writes_own_names = cached  # type: ignore[attr-defined]
    return cached


class ProtoSerializer(ProtoSerializerMixin, serializers.Serializer):
    """A plain DRF ``Serializer`` with ``Meta.proto_class``."""


class ModelProtoSerializer(ProtoSerializerMixin, serializers.ModelSerializer):
    """A DRF ``ModelSerializer`` with ``Meta.model`` and ``Meta.proto_class``.

    Without ``Meta.fields``/``Meta.exclude`` it serializes the model fields that the message
    has, so a generated ``<Model>Data`` class is all it needs.
    """

    serializer_field_mapping = {
        **serializers.ModelSerializer.serializer_field_mapping,
        models.FileField: FileNameField,
        models.ImageField: FileNameField,
    }

    def to_internal_value(self, data: Any) -> Any:
        """DRF's, through the class's validation plan where it applies (``validation_plan``)."""
        # Fields built by now (by an override of the user's that ran first) may be changed.
        planned = type(data) is dict and "fields" not in self.__dict__ and self._planned()
        self._validated_by_plan = planned
        if planned:
            return validation_plan.plan_for(type(self)).to_internal_value(self, data)
        return super().to_internal_value(data)

    def run_validators(self, value: Any) -> None:
        if (
            self.__dict__.get("_validated_by_plan")
            and "_validators" not in self.__dict__
            and not validation_plan.plan_for(type(self)).checks_whole
        ):
            return  # no validators, no read-only defaults: DRF's would build every field
        super().run_validators(value)

    def create(self, validated_data: Any) -> Any:
        """DRF's ``ModelSerializer.create``; where the plan validated the data and knows no
        field can be a nested or to-many write, without DRF's per-call checks for those (which
        build every field)."""
        if not (
            self.__dict__.get("_validated_by_plan")
            and validation_plan.plan_for(type(self)).plain_create
        ):
            return super().create(validated_data)
        model: type[models.Model] = self.Meta.model
        manager = model._default_manager
        try:
            return manager.create(**validated_data)
        except TypeError as exc:  # DRF's message, as its create() gives it
            raise TypeError(
                f"Got a `TypeError` when calling `{model.__name__}.{manager.name}"
                f".create()`. This may be because you have a writable field on the serializer "
                f"class that is not a valid argument to `{model.__name__}."
                f"{manager.name}.create()`. You may need to make the field read-only, or "
                f"override the {type(self).__name__}.create() method to handle this "
                f"correctly.\nOriginal exception was:\n {exc}"
            ) from exc

    def _planned(self) -> bool:
        """Whether this call may use the plan: the instance's fields are its class's (see
        ``fields_as_class``), not partial."""
        return (
            not self.partial
            and self.fields_as_class()
            and validation_plan.fields_fixed_per_class(type(self))
            and writes_own_names(type(self))
        )

    def get_field_names(
        self, declared_fields: Mapping[str, serializers.Field], info: FieldInfo
    ) -> list[str]:
        meta = self.Meta
        if getattr(meta, "fields", None) is None and getattr(meta, "exclude", None) is None:
            proto_names = [field.name for field in self.get_proto_class().DESCRIPTOR.fields]
            model: type[models.Model] = meta.model
            model_names = {f.name for f in model._meta.get_fields()} | {"pk"}
            return [name for name in proto_names if name in model_names or name in declared_fields]
        return super().get_field_names(declared_fields, info)

    def build_standard_field(
        self, field_name: str, model_field: models.Field
    ) -> tuple[type[serializers.Field], dict[str, Any]]:
        field_class, field_kwargs = super().build_standard_field(field_name, model_field)
        if field_class is FileNameField:
            # DRF gives file fields upload-specific options a CharField does not take.
            for key in ("allow_empty_file", "use_url"):
                field_kwargs.pop(key, None)
            field_kwargs.setdefault("allow_blank", model_field.blank)
        return field_class, field_kwargs
