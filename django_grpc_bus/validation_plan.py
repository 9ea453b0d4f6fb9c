"""A ModelProtoSerializer's input validation, worked out once per class: DRF's, minus its cost.

DRF validates a request by building and binding every field of a fresh serializer, then
running each field's ``run_validation`` (empty values, conversion, validators). The plan keeps
what does not change between calls (which fields are writable, required, nullable, which
converter and validators each has) and runs only the per-value part, for the common case: a
value of the type the message gives, which converts and passes every validator.

Any other case is handed to DRF itself, per field: a value that is absent and required, a null
that is not allowed, a blank, a value that does not convert or fails a validator, or a field
the plan does not know how to run (see ``fallback_reason``). So every error is DRF's own,
message and code, and a value the plan accepts is the one DRF's ``run_validation`` returns
(the differential test, tests/unit/test_validation_plan.py, runs both on generated inputs).
``validate_<field>`` methods, ``validate()``, serializer validators (unique together) and
``Meta.validators`` run as DRF runs them. A serializer whose fields may differ per instance (an
``__init__`` of the user's, fields changed after construction: ``fields_fixed_per_class``) is
validated by DRF alone.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import fields as drf_fields
from rest_framework import relations, serializers
from rest_framework.exceptions import ValidationError
from rest_framework.fields import SkipField, empty, get_error_detail

# DRF 3.16 added BigIntegerField; on 3.15 the set simply lacks it.
_BIG_INTEGER = getattr(drf_fields, "BigIntegerField", drf_fields.IntegerField)

# Field classes (exactly these, not subclasses: a subclass may change any step) whose
# ``to_internal_value`` reads only the field's own configuration, never its parent or context.
CONVERTED_BY_DRF = frozenset(
    {
        drf_fields.BooleanField,
        drf_fields.IntegerField,
        _BIG_INTEGER,
        drf_fields.FloatField,
        drf_fields.DecimalField,
        drf_fields.DateField,
        drf_fields.DateTimeField,
        drf_fields.TimeField,
        drf_fields.DurationField,
        drf_fields.UUIDField,
        drf_fields.ChoiceField,
        drf_fields.IPAddressField,
        relations.PrimaryKeyRelatedField,  # its conversion is the existence query
    }
)
# CharField and its subclasses whose conversion is CharField's (str, stripped).
PLAIN_TEXT = frozenset(
    {
        drf_fields.CharField,
        drf_fields.EmailField,
        drf_fields.SlugField,
        drf_fields.URLField,
        drf_fields.RegexField,
    }
)


class Defer(Exception):
    """The plan does not decide this value: DRF's own field validation does."""


def fallback_reason(field: serializers.Field) -> str | None:
    """Why the plan hands every value of `field` to DRF; None when it runs the field itself."""
    kind = type(field)
    if kind not in CONVERTED_BY_DRF and kind not in PLAIN_TEXT:
        return f"{kind.__name__} is not a field class the plan runs"
    if field.source_attrs != [field.field_name]:
        return "its source is not its own name"
    if field.default is not empty:
        return "it has a default (which may need the call's context)"
    for validator in field.validators:
        if getattr(validator, "requires_context", False):
            return f"its validator {type(validator).__name__} needs the serializer"
    return None


def field_step(field: serializers.Field) -> Callable[[Any], Any]:
    """The function validating one value of `field`, raising Defer where DRF must decide."""
    if fallback_reason(field) is not None:

        def defer(value: Any) -> Any:
            raise Defer

        return defer
    kind = type(field)
    required = field.required
    allow_null = field.allow_null
    # None of them needs context (fallback_reason): each is called with the value alone.
    validators: tuple[Callable[[Any], Any], ...] = tuple(field.validators)  # type: ignore[arg-type]
    text = kind in PLAIN_TEXT or kind is drf_fields.IPAddressField
    trim = getattr(field, "trim_whitespace", False)
    allow_blank = getattr(field, "allow_blank", False)
    decimal = kind is drf_fields.DecimalField
    related = kind is relations.PrimaryKeyRelatedField
    integer = kind in (drf_fields.IntegerField, _BIG_INTEGER)
    convert = None if kind in PLAIN_TEXT else field.to_internal_value

    def step(value: Any) -> Any:
        if value is empty:
            if required:
                raise Defer  # "This field is required."
            raise SkipField  # no default (fallback_reason): the model's applies
        if value is None:
            if not allow_null:
                raise Defer
            return None
        if text:
            # CharField.run_validation: a blank value is "" (or an error) without validators.
            if type(value) is not str:
                raise Defer
            stripped = value.strip()
            if value == "" or (trim and stripped == ""):
                if not allow_blank:
                    raise Defer
                return ""
            if convert is None:
                value = stripped if trim else value
            else:
                try:
                    value = convert(value)
                except Exception:
                    raise Defer from None
        elif integer and type(value) is int:
            pass  # int(str(value)) is value
        else:
            if decimal and type(value) is str and value.strip() == "":
                raise Defer  # DecimalField.validate_empty_values
            if related and value == "":
                raise Defer  # RelatedField.run_validation: "" is None
            try:
                value = convert(value)  # type: ignore[misc]
            except Exception:
                raise Defer from None
        try:
            for validator in validators:
                validator(value)
        except Exception:
            raise Defer from None
        return value

    return step


class ValidationPlan:
    """The writable fields of one serializer class, each with its compiled step."""

    __slots__ = ("checks_whole", "plain_create", "steps", "unplanned")

    def __init__(self, serializer: serializers.Serializer[Any]) -> None:
        fields = serializer.fields
        self.steps = tuple(
            (name, f"validate_{name}", field_step(field))
            for name, field in fields.items()
            if not field.read_only
        )
        # Fields every value of which goes to DRF, and why (docs/performance.md lists them).
        self.unplanned = {
            name: reason
            for name, field in fields.items()
            if not field.read_only and (reason := fallback_reason(field)) is not None
        }
        # ModelSerializer.create() without its per-call checks: no writable field is nested,
        # dotted, or a to-many relation (set after the row is saved).
        model = getattr(getattr(serializer, "Meta", None), "model", None)
        to_many = set()
        if model is not None:
            to_many = {f.name for f in model._meta.get_fields() if f.many_to_many or f.one_to_many}
        self.plain_create = model is not None and all(
            field.read_only
            or (
                not isinstance(field, (serializers.BaseSerializer, drf_fields.ListField))
                and not isinstance(field, drf_fields.DictField)
                and "." not in (field.source or "")
                and field.source != "*"
                and field.source not in to_many
            )
            for field in fields.values()
        )
        # Serializer-level checks beyond validate(): validators, or read-only defaults that
        # DRF adds to what they see.
        self.checks_whole = bool(serializer.get_validators()) or any(
            field.read_only
            and field.default is not empty
            and field.source != "*"
            and "." not in (field.source or "")
            for field in fields.values()
        )

    def to_internal_value(self, serializer: serializers.Serializer[Any], data: dict) -> dict:
        """What ``Serializer.to_internal_value(data)`` returns or raises, for a dict `data`."""
        ret: dict[str, Any] = {}
        errors: dict[str, Any] = {}
        for name, hook_name, step in self.steps:
            validate_method = getattr(serializer, hook_name, None)
            try:
                try:
                    value = step(data.get(name, empty))
                except Defer:
                    field = serializer.fields[name]
                    value = field.run_validation(field.get_value(data))
                if validate_method is not None:
                    value = validate_method(value)
            except ValidationError as exc:
                errors[name] = exc.detail
            except DjangoValidationError as exc:
                errors[name] = get_error_detail(exc)
            except SkipField:
                pass
            else:
                ret[name] = value
        if errors:
            raise ValidationError(errors)
        return ret


_lock = threading.Lock()


def fields_fixed_per_class(serializer_class: type[serializers.Serializer[Any]]) -> bool:
    """Whether every instance of `serializer_class` starts with its class's fields and
    validators, so that what is worked out once per class (the plan, ``reads_database``) holds
    for each call: fields built once per class (``cache_fields``, the library's own
    ``get_fields``/``get_validators``), and no ``__init__``, ``__new__``, ``fields`` or
    ``validators`` other than DRF's, any of which may change the fields per instance (make one
    read-only for some users, pop one, add a validator). Fields changed after construction are
    caught per instance: built before validation reaches ``ModelProtoSerializer.to_internal_value``
    (see ``ProtoSerializerMixin.fields_as_class``), they are validated by DRF."""
    from django_grpc_bus.serializers import ProtoSerializerMixin  # it imports this module

    if not getattr(serializer_class, "cache_fields", False):
        return False
    cached = serializer_class.__dict__.get("_fields_fixed_per_class")
    if cached is None:
        cached = all(
            getattr(serializer_class, name, None) is getattr(owner, name)
            for name, owner in (
                ("__init__", serializers.BaseSerializer),
                ("__new__", serializers.BaseSerializer),
                ("fields", serializers.Serializer),
                ("validators", drf_fields.Field),
                ("get_fields", ProtoSerializerMixin),
                ("get_validators", ProtoSerializerMixin),
            )
        )
        serializer_class._fields_fixed_per_class = cached  # type: ignore[attr-defined]
    return cached


def plan_for(serializer_class: type[serializers.Serializer[Any]]) -> ValidationPlan:
    """`serializer_class`'s plan, built on first use (each subclass has its own)."""
    plan = serializer_class.__dict__.get("_validation_plan")
    if plan is None:
        with _lock:
            plan = serializer_class.__dict__.get("_validation_plan")
            if plan is None:
                plan = ValidationPlan(serializer_class())
                serializer_class._validation_plan = plan  # type: ignore[attr-defined]
    return plan


def reads_database(serializer_class: type[serializers.Serializer[Any]]) -> bool:
    """Whether validating `serializer_class` may read the database, or might: a relation's
    existence, a unique check, a validator of the serializer's own, a ``validate`` or
    ``validate_<field>`` of the user's (which may query). Such validation runs inside the write
    transaction, so that what it read still holds when the row is written."""
    cached = serializer_class.__dict__.get("_reads_database")
    if cached is not None:
        return cached
    if not fields_fixed_per_class(serializer_class):
        # Its fields may differ per call: what one instance has says nothing of the next.
        serializer_class._reads_database = True  # type: ignore[attr-defined]
        return True
    serializer = serializer_class()
    writable = [field for field in serializer.fields.values() if not field.read_only]
    reads = (
        bool(serializer.get_validators())
        or serializer_class.validate is not serializers.Serializer.validate
        or any(hasattr(serializer_class, f"validate_{field.field_name}") for field in writable)
        or any(
            isinstance(field, (relations.RelatedField, relations.ManyRelatedField))
            or type(field) not in CONVERTED_BY_DRF | PLAIN_TEXT
            or any(getattr(v, "requires_context", False) for v in field.validators)
            for field in writable
        )
    )
    serializer_class._reads_database = reads  # type: ignore[attr-defined]
    return reads
