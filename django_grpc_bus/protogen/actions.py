"""A service's ``@grpc_action`` methods -> RPCs and messages of its model's ``.proto`` (SPEC §9).

Each action is an RPC named after its method (``bulk_create`` -> ``BulkCreate``). A request or
response given as a serializer class or as ``(name, type)`` pairs becomes a message of its own,
``<Model><Rpc>Request`` / ``<Model><Rpc>Response``, numbered as every generated message is (a
field keeps its number; a removed field's number and name become ``reserved``). A message given
by name is used as it is: the model's own (``BookData``), another selected model's
(``catalog.AuthorData``) or a well-known type (``google.protobuf.Empty``).

Removing an action removes its RPC. Its messages stay in the file, emptied, with every field
number and name they had ``reserved`` (proto has no ``reserved`` for RPCs or messages): an
action added again under the same name never gives an old number a new meaning.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db import models
from rest_framework import serializers
from rest_framework.relations import ManyRelatedField, PrimaryKeyRelatedField

from django_grpc_bus.conversion import fieldtypes
from django_grpc_bus.decorators import ActionSpec
from django_grpc_bus.protogen import naming
from django_grpc_bus.protogen.schema import (
    Numbering,
    ProtoFile,
    ProtoMessage,
    ProtoRpc,
    _FieldPlan,
    number_fields,
)

SCALARS = frozenset(
    "double float int32 int64 uint32 uint64 sint32 sint64 fixed32 fixed64 sfixed32 sfixed64 "
    "bool string bytes".split()
)
# Well-known types an action may name, and the file that defines each.
WELL_KNOWN = {
    "Empty": "google/protobuf/empty.proto",
    "Timestamp": "google/protobuf/timestamp.proto",
    "Duration": "google/protobuf/duration.proto",
    "Struct": "google/protobuf/struct.proto",
    "Value": "google/protobuf/struct.proto",
    "ListValue": "google/protobuf/struct.proto",
    "FieldMask": "google/protobuf/field_mask.proto",
    **{
        name: "google/protobuf/wrappers.proto"
        for name in (
            "DoubleValue FloatValue Int64Value UInt64Value Int32Value UInt32Value BoolValue "
            "StringValue BytesValue".split()
        )
    },
}
# RPCs every generated service has (Watch: SPEC §11): an action cannot take their names.
RESERVED_RPCS = frozenset(
    {"List", "Count", "Create", "Retrieve", "Update", "PartialUpdate", "Destroy", "Watch"}
)
FIELD_NAME = re.compile(r"[a-z][a-z0-9]*(_[a-z0-9]+)*")
METHOD_NAME = re.compile(r"[a-z][a-z0-9]*(_[a-z][a-z0-9]*)*")


class ActionDeclarationError(ImproperlyConfigured):
    """An action's request or response cannot become proto text."""


@dataclass(frozen=True)
class ModelActions:
    """The actions one service declares for its model, and where they come from."""

    service: str  # the service class's dotted path, for messages
    actions: tuple[ActionSpec, ...]


@dataclass(frozen=True)
class ActionProto:
    """What a model's actions add to its file."""

    messages: tuple[ProtoMessage, ...] = ()
    rpcs: tuple[ProtoRpc, ...] = ()
    imports: frozenset[str] = frozenset()


def rpc_name(method: str) -> str:
    """``bulk_create`` -> ``BulkCreate`` (snake_case of it is the method again)."""
    return "".join(part[:1].upper() + part[1:] for part in method.split("_"))


def build_actions(
    model: type[models.Model],
    declared: ModelActions | None,
    previous: Mapping[str, Numbering],
    own_messages: Iterable[str],
    other_messages: Mapping[str, str],
) -> ActionProto:
    """The RPCs and messages of `model`'s actions (`declared`), numbered as `previous` was.

    `own_messages` are the names the model's file already defines (``BookData``, ...);
    `other_messages` maps the full names of other selected models' messages
    (``catalog.AuthorData``) to the file that defines each. Messages of actions that are gone
    stay, emptied, with their numbers reserved (see the module's docstring).
    """
    name = model.__name__
    package = model._meta.app_label
    own = set(own_messages)
    resolver = _Resolver(package, own, other_messages)
    messages: list[ProtoMessage] = []
    rpcs: list[ProtoRpc] = []
    generated: set[str] = set()
    for spec in declared.actions if declared else ():
        where = f"{declared.service if declared else name}.{spec.method}"
        rpc = _check_method(spec, where)
        types = []
        for role, given in (("request", spec.request), ("response", spec.response)):
            message_name = f"{name}{rpc}{role.capitalize()}"
            if isinstance(given, str):
                types.append(resolver.message(given, f"{where} {role}"))
                continue
            if message_name in own:
                raise ActionDeclarationError(
                    f"{where}: its {role} message would be {package}.{message_name}, which "
                    f"the generated file already defines. Rename the method."
                )
            plans = (
                _serializer_plans(given, role, where, resolver)
                if isinstance(given, type)
                else _pair_plans(given, where, role, resolver)
            )
            comment = f"The {role} of {rpc} ({spec.kind}), from {_origin(given)}."
            messages.append(number_fields(message_name, plans, dict(previous), comment))
            generated.add(message_name)
            types.append(message_name)
        rpcs.append(
            ProtoRpc(
                rpc,
                types[0],
                types[1],
                server_streaming=spec.response_stream,
                client_streaming=spec.request_stream,
                comment=_rpc_comment(spec),
                options=("idempotency_level = IDEMPOTENT",) if spec.idempotent else (),
            )
        )
    messages += _retired(name, previous, own | generated)
    return ActionProto(tuple(messages), tuple(rpcs), frozenset(resolver.imports))


def _rpc_comment(spec: ActionSpec) -> str:
    notes = [spec.doc.rstrip(".") if spec.doc else f"The action {spec.method}"]
    if spec.idempotent:
        notes.append("idempotent: clients may retry it")
    if spec.atomic:
        notes.append("one database transaction")
    return "; ".join(notes) + "."


def _origin(given: Any) -> str:
    if isinstance(given, type):
        return f"{given.__module__}.{given.__qualname__}"
    return "the fields its grpc_action declares"


def _check_method(spec: ActionSpec, where: str) -> str:
    if not METHOD_NAME.fullmatch(spec.method):
        raise ActionDeclarationError(
            f"{where}: an action's method name is lower snake_case (letters and digits, words "
            "joined by _, each starting with a letter), so that its RPC name maps back to it. "
            "Rename the method."
        )
    rpc = rpc_name(spec.method)
    if rpc in RESERVED_RPCS:
        raise ActionDeclarationError(
            f"{where}: {rpc} is an RPC every generated service has. Give the action another name."
        )
    return rpc


def _retired(name: str, previous: Mapping[str, Numbering], keep: set[str]) -> list[ProtoMessage]:
    """The messages of removed actions: no fields, every number and name they had reserved."""
    # Messages the generator writes for other reasons (a Watch turned off, filters dropped)
    # are theirs to keep or drop, never an action's to retire.
    generated = {
        name + suffix
        for suffix in (*naming.SYMBOL_SUFFIXES, naming.FILTER_SUFFIX, "WatchRequest", "Event")
    }
    retired = []
    for message_name in sorted(previous):
        if message_name in keep or message_name in generated or "." in message_name:
            continue
        if not message_name.startswith(name):
            continue
        if not message_name.endswith(("Request", "Response")):
            continue
        retired.append(
            number_fields(
                message_name,
                [],
                dict(previous),
                "Retired: the action that used this message was removed. Its field numbers "
                "and names stay reserved, so an action added again under its name never reuses "
                "them with another meaning.",
            )
        )
    return retired


# -- resolving message names ---------------------------------------------------------------------


class _Resolver:
    """Message names as an action gives them -> the type written in the file (and imports)."""

    def __init__(self, package: str, own: set[str], others: Mapping[str, str]) -> None:
        self.package = package
        self.own = own
        self.others = others
        self.imports: set[str] = set()

    def message(self, given: str, where: str) -> str:
        text = given.strip().lstrip(".")
        if text.startswith("google.protobuf."):
            short = text.removeprefix("google.protobuf.")
            if short in WELL_KNOWN:
                self.imports.add(WELL_KNOWN[short])
                return f".{text}"
        bare = text.removeprefix(f"{self.package}.")
        if bare in self.own:
            return bare
        for full_name in (text, f"{self.package}.{text}"):  # another model's, same app or not
            if full_name in self.others:
                self.imports.add(self.others[full_name])
                return f".{full_name}"
        known = (
            sorted(self.own) + sorted(self.others) + [f"google.protobuf.{n}" for n in WELL_KNOWN]
        )
        raise ActionDeclarationError(
            f"{where}: no message {given!r}. Name one of {', '.join(known)}; or give a "
            "serializer class or a list of (name, proto type) pairs to generate one."
        )

    def type_of(self, given: str, where: str) -> tuple[str, bool, bool]:
        """A pair's type -> (proto type, optional, repeated)."""
        words = given.split()
        label = words[0] if len(words) == 2 and words[0] in ("repeated", "optional") else ""
        base = words[-1] if words else ""
        if len(words) not in (1, 2) or (len(words) == 2 and not label):
            raise ActionDeclarationError(
                f"{where}: {given!r} is not a proto type; write a scalar ('string', 'int64'), "
                "'repeated <type>', 'optional <scalar>', or a message name such as 'BookData'."
            )
        if base in SCALARS:
            return base, label == "optional", label == "repeated"
        if label == "optional":
            raise ActionDeclarationError(
                f"{where}: 'optional' applies to scalars only; a message field ({base}) tells "
                "unset from empty by itself. Drop 'optional'."
            )
        return self.message(base, where), False, label == "repeated"


def _pair_plans(
    pairs: tuple[tuple[str, str], ...] | Any, where: str, role: str, resolver: _Resolver
) -> list[_FieldPlan]:
    plans = []
    seen: set[str] = set()
    for field_name, type_text in pairs:
        at = f"{where} {role} field {field_name!r}"
        _check_field_name(field_name, at, seen)
        proto, optional, repeated = resolver.type_of(type_text, at)
        # A request's scalars have presence (HasField tells "not given" from 0, "" or false).
        optional = optional or (role == "request" and proto in SCALARS and not repeated)
        plans.append(_FieldPlan(field_name, proto, optional, repeated, "", set()))
    return plans


def _check_field_name(name: str, where: str, seen: set[str]) -> None:
    if not FIELD_NAME.fullmatch(name):
        raise ActionDeclarationError(
            f"{where}: a proto field name is lower_snake_case (no double or trailing "
            "underscore). Rename it."
        )
    if name in seen:
        raise ActionDeclarationError(f"{where}: the field is declared twice.")
    seen.add(name)


# -- serializers -> fields -----------------------------------------------------------------------


def _serializer_plans(
    serializer_class: type, role: str, where: str, resolver: _Resolver
) -> list[_FieldPlan]:
    """One field per serializer field that travels in `role` (not read-only in a request, not
    write-only in a response)."""
    try:
        fields = serializer_class().fields
    except Exception as exc:  # the project's serializer may raise anything when built
        raise ActionDeclarationError(
            f"{where}: {serializer_class.__qualname__}() cannot be built to read its fields "
            f"({type(exc).__name__}: {exc})."
        ) from exc
    model = getattr(getattr(serializer_class, "Meta", None), "model", None)
    plans = []
    seen: set[str] = set()
    for field_name, field in fields.items():
        if isinstance(field, serializers.HiddenField):
            continue
        if field.read_only if role == "request" else field.write_only:
            continue
        at = f"{where} {role} field {serializer_class.__qualname__}.{field_name}"
        _check_field_name(field_name, at, seen)
        ptype, repeated = drf_proto_type(field, model, at)
        if ptype.import_path:
            resolver.imports.add(ptype.import_path)
        type_name = f".{ptype.proto}" if ptype.is_message else ptype.proto
        # Every scalar of a request has presence: an omitted value is "not given" (DRF's
        # "required", a partial update leaving it alone), never 0, "" or false.
        presence = field.allow_null or role == "request"
        plans.append(
            _FieldPlan(
                field_name,
                type_name,
                presence and not repeated and not ptype.is_message,
                repeated,
                _field_comment(field, role),
                set(),
            )
        )
    return plans


def _field_comment(field: serializers.Field, role: str) -> str:
    notes = []
    if field.help_text:
        notes.append(" ".join(str(field.help_text).split()))
    if role == "request" and not field.required:
        notes.append("not required")
    if field.allow_null:
        notes.append("nullable: unset means null")
    return "; ".join(notes)


def drf_proto_type(
    field: serializers.Field, model: type[models.Model] | None, where: str
) -> tuple[fieldtypes.ProtoType, bool]:
    """A DRF field's proto type and whether it is repeated; an unknown one is an error."""
    if isinstance(field, ManyRelatedField):
        element, _ = drf_proto_type(field.child_relation, model, where)
        return element, True
    if isinstance(field, serializers.ListField) or isinstance(
        field, serializers.MultipleChoiceField
    ):
        child = getattr(field, "child", None)
        if isinstance(field, serializers.MultipleChoiceField):
            return _choice_type(field), True
        if child is None or isinstance(child, serializers.ListField | serializers.ListSerializer):
            raise _unknown(field, where, "is a list of lists, which a proto field cannot be")
        element, _ = drf_proto_type(child, model, where)
        return element, True
    if isinstance(field, serializers.ChoiceField):
        return _choice_type(field), False
    if isinstance(field, PrimaryKeyRelatedField):
        related = getattr(getattr(field, "queryset", None), "model", None)
        if related is not None:
            return fieldtypes.proto_type(related._meta.pk), False
    if model is not None and isinstance(field.source, str) and "." not in field.source:
        try:
            model_field = model._meta.get_field(field.source)
        except Exception:  # not a model field: a declared one, mapped by its DRF class
            model_field = None
        if isinstance(model_field, models.Field) and not model_field.is_relation:
            return fieldtypes.proto_type(model_field), fieldtypes.is_repeated(model_field)
    # The data message's own table (declared_fields imports the declarations, which import
    # this module: read it here). The nearest mapped ancestor class decides.
    from django_grpc_bus.protogen.declared_fields import DRF_FIELD_TYPES

    for klass in type(field).__mro__:
        found = DRF_FIELD_TYPES.get(klass)
        if found is not None:
            return found, False
    raise _unknown(field, where, "has no proto mapping")


def _choice_type(field: serializers.ChoiceField) -> fieldtypes.ProtoType:
    keys = list(field.choices)
    if keys and all(isinstance(k, int) and not isinstance(k, bool) for k in keys):
        return fieldtypes.INT64
    return fieldtypes.STRING


def _unknown(field: serializers.Field, where: str, why: str) -> ActionDeclarationError:
    return ActionDeclarationError(
        f"{where} ({type(field).__name__}) {why}. Declare it as a field with a known type "
        "(CharField, IntegerField, FloatField, DecimalField, BooleanField, DateTimeField, "
        "DateField, UUIDField, JSONField, ListField of those, a PrimaryKeyRelatedField), or give "
        "the action's message as (name, proto type) pairs."
    )


# -- into the file -------------------------------------------------------------------------------


def add_actions(
    proto: ProtoFile,
    model: type[models.Model],
    declared: ModelActions | None,
    previous: Mapping[str, Numbering] | None,
    other_messages: Mapping[str, str],
) -> ProtoFile:
    """`proto` with `model`'s actions: their messages after the file's own, their RPCs last."""
    extra = build_actions(
        model, declared, previous or {}, [m.name for m in proto.messages], other_messages
    )
    if not (extra.messages or extra.rpcs):
        return proto
    return dataclasses.replace(
        proto,
        imports=tuple(sorted(set(proto.imports) | extra.imports)),
        messages=proto.messages + extra.messages,
        rpcs=proto.rpcs + extra.rpcs,
    )


def selected_messages(models_: Iterable[type[models.Model]]) -> dict[str, str]:
    """``{"catalog.AuthorData": "catalog/Author.proto", ...}``: what actions may name of other
    selected models (their data, lookup and list messages)."""
    found = {}
    for model in models_:
        for suffix in naming.SYMBOL_SUFFIXES:
            if suffix:
                full_name = f"{naming.proto_package(model)}.{model.__name__}{suffix}"
                found[full_name] = naming.proto_relpath(model)
    return found
