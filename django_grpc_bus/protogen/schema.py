"""A selected model -> the messages, fields and RPCs of its ``.proto`` file.

Field numbers are part of the wire contract, so they are kept stable: a field keeps the number
it had in the file on disk, a new field takes the next free number, and a removed field's
number and name become ``reserved`` so they are never reused.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from django.db import models
from django.db.models.fields import NOT_PROVIDED, AutoFieldMixin
from django.utils import translation

from django_grpc_bus.conversion import fieldtypes
from django_grpc_bus.meta import ModelSelection, primary_key_fields
from django_grpc_bus.protogen import naming
from django_grpc_bus.protogen.query import ListQuery

if TYPE_CHECKING:
    from django_grpc_bus.protogen.declared_fields import DeclaredField

EMPTY_IMPORT = "google/protobuf/empty.proto"
FIELD_MASK_IMPORT = "google/protobuf/field_mask.proto"
TIMESTAMP_IMPORT = fieldtypes.TIMESTAMP_IMPORT


COMMENT_WIDTH = 92


class Commented:
    """Gives the template a comment as lines that fit the file's width."""

    comment: str

    @property
    def comment_lines(self) -> list[str]:
        return textwrap.wrap(self.comment, COMMENT_WIDTH, break_long_words=False)


@dataclass(frozen=True)
class Numbering:
    """The field numbers and reservations of one message as found on disk."""

    numbers: dict[str, int] = field(default_factory=dict)
    reserved_numbers: frozenset[int] = frozenset()
    reserved_names: frozenset[str] = frozenset()
    # Each field's wire type as `wire_type` writes it ("int64", "repeated AuthorDetail").
    types: dict[str, str] = field(default_factory=dict)


def wire_type(type_name: str, repeated: bool) -> str:
    """A field's type as far as the wire cares: its scalar or message name, and repeated."""
    return ("repeated " if repeated else "") + type_name.rsplit(".", 1)[-1]


@dataclass(frozen=True)
class ProtoField(Commented):
    name: str
    number: int
    type: str
    optional: bool = False
    repeated: bool = False
    comment: str = ""

    @property
    def label(self) -> str:
        return "repeated " if self.repeated else "optional " if self.optional else ""


@dataclass(frozen=True)
class ProtoMessage(Commented):
    name: str
    fields: tuple[ProtoField, ...]
    comment: str = ""
    reserved_numbers: tuple[int, ...] = ()
    reserved_names: tuple[str, ...] = ()
    # Messages declared inside this one (for nested serializers), written before its fields.
    nested: tuple[ProtoMessage, ...] = ()

    @property
    def reserved_numbers_text(self) -> str:
        return ", ".join(str(n) for n in self.reserved_numbers)

    @property
    def nested_lines(self) -> list[str]:
        """The text of the nested messages, one line each, indented as inside this message."""
        return [line for message in self.nested for line in message.lines()]

    def lines(self) -> list[str]:
        """This message as ``.proto`` lines (as the template writes top-level ones)."""
        lines = [f"// {line}" for line in self.comment_lines]
        lines.append(f"message {self.name} {{")
        if self.reserved_numbers:
            lines.append(f"  reserved {self.reserved_numbers_text};")
        if self.reserved_names:
            lines.append(f"  reserved {self.reserved_names_text};")
        lines += [f"  {line}" for line in self.nested_lines]
        for f in self.fields:
            lines += [f"  // {line}" for line in f.comment_lines]
            lines.append(f"  {f.label}{f.type} {f.name} = {f.number};")
        lines.append("}")
        return lines

    @property
    def reserved_names_text(self) -> str:
        return ", ".join(f'"{n}"' for n in self.reserved_names)


# The reads' MethodOptions: clients may retry them (client/service_config.py).
READ_ONLY = "idempotency_level = NO_SIDE_EFFECTS"


@dataclass(frozen=True)
class ProtoRpc(Commented):
    name: str
    request: str
    response: str
    server_streaming: bool = False
    comment: str = ""
    client_streaming: bool = False
    # MethodOptions written in the rpc's body, e.g. "idempotency_level = IDEMPOTENT".
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class ProtoFile:
    """Everything the template needs to write one model's ``.proto`` file."""

    relpath: str
    package: str
    model_label: str
    imports: tuple[str, ...]
    messages: tuple[ProtoMessage, ...]
    service: str
    rpcs: tuple[ProtoRpc, ...]


@dataclass
class _FieldPlan:
    name: str
    type: str
    optional: bool
    repeated: bool
    comment: str
    imports: set[str]


def tracks_presence(field_: models.Field) -> bool:
    """Whether an unset value must be told apart from the zero value (proto3 ``optional``).

    True where "not given" means something other than 0/""/false: nullable fields (unset is
    NULL), fields with a default or that may be blank (unset lets the model decide), and fields
    the database fills (auto primary keys, ``auto_now``, generated columns).
    """
    return bool(
        field_.null
        or field_.has_default()
        or getattr(field_, "db_default", NOT_PROVIDED) is not NOT_PROVIDED
        or field_.blank
        or not field_.editable
        or isinstance(field_, AutoFieldMixin)
    )


def _comment(field_: models.Field, pk_fields: list[models.Field]) -> str:
    notes = []
    with translation.override(None):
        if field_.help_text:
            notes.append(" ".join(str(field_.help_text).split()))
        if field_.choices:
            values = ", ".join(str(value) for value, _label in field_.flatchoices)
            notes.append(f"choices: {values}")
    if field_ in pk_fields:
        notes.append("primary key" if len(pk_fields) == 1 else "part of the primary key")
    elif field_.is_relation and field_.related_model is not None:
        related = field_.related_model
        notes.append(f"primary key of {related._meta.app_label}.{related.__name__}")
    if not field_.editable:
        notes.append("read-only")
    if field_.null and not fieldtypes.is_repeated(field_):
        notes.append("nullable: unset means null")
    return "; ".join(notes)


def _plan_field(field_: models.Field, pk_fields: list[models.Field]) -> _FieldPlan:
    ptype = fieldtypes.proto_type(field_)
    repeated = fieldtypes.is_repeated(field_)
    type_name = f".{ptype.proto}" if ptype.is_message else ptype.proto
    return _FieldPlan(
        name=field_.name,
        type=type_name,
        optional=not repeated and not ptype.is_message and tracks_presence(field_),
        repeated=repeated,
        comment=_comment(field_, pk_fields),
        imports={ptype.import_path} if ptype.import_path else set(),
    )


def number_fields(
    message: str, plans: list[_FieldPlan], previous: dict[str, Numbering], comment: str = ""
) -> ProtoMessage:
    """Give each planned field its number, keeping the numbers `previous` had for `message`."""
    old = previous.get(message, Numbering())
    wanted = {plan.name for plan in plans}
    removed = {name: number for name, number in old.numbers.items() if name not in wanted}
    reserved_numbers = set(old.reserved_numbers) | set(removed.values())
    reserved_names = (set(old.reserved_names) | set(removed)) - wanted
    taken = set(old.numbers.values()) | reserved_numbers
    next_number = max(taken, default=0) + 1
    fields = []
    for plan in plans:
        number = old.numbers.get(plan.name)
        if number is None:
            number, next_number = next_number, next_number + 1
        fields.append(
            ProtoField(plan.name, number, plan.type, plan.optional, plan.repeated, plan.comment)
        )
    return ProtoMessage(
        name=message,
        fields=tuple(sorted(fields, key=lambda f: f.number)),
        comment=comment,
        reserved_numbers=tuple(sorted(reserved_numbers)),
        reserved_names=tuple(sorted(reserved_names)),
    )


def build_file(
    selected: ModelSelection,
    previous: dict[str, Numbering] | None = None,
    query: ListQuery | None = None,
    declared: Sequence[DeclaredField] = (),
) -> ProtoFile:
    """The complete description of `selected`'s ``.proto`` file.

    `query` is what the model's service declares for filtering, ordering and searching its
    rows (SPEC §8); each declared part adds its field to the List request, none adds nothing.
    `declared` are the fields the service's serializer declares (SPEC §9): fields of the data
    message, in place of a model field of the same name.
    """
    previous = previous or {}
    model = selected.model
    name = model.__name__
    label = selected.label
    data, lookup = f"{name}Data", f"{name}LookupRequest"
    pk_fields = primary_key_fields(model)
    plans = [_plan_field(field_, pk_fields) for field_ in selected.fields]
    imports = {EMPTY_IMPORT, FIELD_MASK_IMPORT}
    for plan in plans:
        imports |= plan.imports
    if query is not None:
        imports |= {f.import_path for f in query.filters if f.import_path}

    pk_names = ", ".join(f.name for f in pk_fields)
    lookup_plans = [
        _FieldPlan(p.name, p.type, True, False, p.comment, set())
        for p, f in zip(plans, selected.fields, strict=True)
        if (f in pk_fields or f.unique) and not p.repeated and not p.type.startswith(".")
    ]
    data_message = _data_message(data, label, plans, declared, previous)
    imports |= _declared_imports(declared)
    messages: tuple[ProtoMessage, ...] = (
        data_message,
        number_fields(
            lookup,
            lookup_plans,
            previous,
            f"Which {label} to retrieve or destroy: by primary key ({pk_names}) or by "
            "another unique field (the service's lookup_field).",
        ),
        _list_request(name, label, query, previous),
        *_filter_message(name, label, query, previous),
        ProtoMessage(
            f"{name}ListResponse",
            (
                ProtoField("results", 1, data, repeated=True),
                ProtoField("next_page_token", 2, "string", comment="empty on the last page"),
            ),
            comment="One batch of rows; List streams as many batches as it takes.",
        ),
        ProtoMessage(
            f"{name}CountResponse",
            (ProtoField("count", 1, "int64", comment="the number of matching rows"),),
            comment=f"How many {label} rows a List request matches.",
        ),
        ProtoMessage(
            f"{name}PartialUpdateRequest",
            (
                ProtoField("data", 1, data, comment="the primary key and the new values"),
                ProtoField(
                    "update_mask",
                    2,
                    ".google.protobuf.FieldMask",
                    comment="the fields of data to change; no others are touched",
                ),
            ),
            comment=f"Change some fields of one {label} row.",
        ),
    )
    rpcs: tuple[ProtoRpc, ...] = (
        ProtoRpc(
            "List",
            f"{name}ListRequest",
            f"{name}ListResponse",
            True,
            "Stream every row, in batches.",
            options=(READ_ONLY,),
        ),
        ProtoRpc(
            "Count",
            f"{name}ListRequest",
            f"{name}CountResponse",
            comment="Count the rows List would stream for this request, without streaming them.",
            options=(READ_ONLY,),
        ),
        ProtoRpc("Create", data, data, comment="Create a row; returns it as stored."),
        ProtoRpc("Retrieve", lookup, data, comment="Read one row.", options=(READ_ONLY,)),
        ProtoRpc("Update", data, data, comment="Replace every field of one row."),
        ProtoRpc(
            "PartialUpdate",
            f"{name}PartialUpdateRequest",
            data,
            comment="Change the fields named in update_mask.",
        ),
        ProtoRpc("Destroy", lookup, ".google.protobuf.Empty", comment="Delete one row."),
    )
    if selected.watch:
        watch_messages, watch_rpc = _watch_parts(name, label, query)
        messages, rpcs = (*messages, *watch_messages), (*rpcs, watch_rpc)
        imports |= {FIELD_MASK_IMPORT, TIMESTAMP_IMPORT}
    return ProtoFile(
        relpath=naming.proto_relpath(model),
        package=naming.proto_package(model),
        model_label=label,
        imports=tuple(sorted(imports)),
        messages=messages,
        service=name,
        rpcs=rpcs,
    )


def _data_message(
    data: str,
    label: str,
    plans: list[_FieldPlan],
    declared: Sequence[DeclaredField],
    previous: dict[str, Numbering],
) -> ProtoMessage:
    """``<Model>Data``: the model's fields, the serializer's declared fields, their messages."""
    names = {d.name for d in declared}
    plans = [plan for plan in plans if plan.name not in names] + [
        _FieldPlan(d.name, d.type, d.optional, d.repeated, d.comment, set(d.imports))
        for d in declared
    ]
    old = previous.get(data)
    if old is not None:
        # A field whose wire type changed (a declared `author = AuthorSerializer()` in place of
        # the foreign key, or back) takes a new number; the old one is reserved.
        changed = {
            plan.name
            for plan in plans
            if old.types.get(plan.name, wire_type(plan.type, plan.repeated))
            != wire_type(plan.type, plan.repeated)
            and plan.name in old.numbers
        }
        if changed:
            previous = {
                **previous,
                data: replace(
                    old,
                    numbers={n: v for n, v in old.numbers.items() if n not in changed},
                    reserved_numbers=old.reserved_numbers | {old.numbers[name] for name in changed},
                ),
            }
    message = number_fields(data, plans, previous, f"One {label} row: the fields exposed for it.")
    return replace(message, nested=_nested_messages(data, declared, previous))


def _nested_messages(
    scope: str, declared: Sequence[DeclaredField], previous: dict[str, Numbering]
) -> tuple[ProtoMessage, ...]:
    """The messages of the nested serializers among `declared`, numbered as any message (under
    their dotted names, ``BookData.AuthorDetail``)."""
    result: dict[str, ProtoMessage] = {}
    for d in declared:
        if d.nested is None:
            continue
        key = f"{scope}.{d.nested.name}"
        if d.nested.name in result:
            raise ValueError(f"Two declared fields of {scope} make the message {key}")
        plans = [
            _FieldPlan(f.name, f.type, f.optional, f.repeated, f.comment, set(f.imports))
            for f in d.nested.fields
        ]
        message = number_fields(key, plans, previous, d.nested.comment)
        result[d.nested.name] = replace(
            message, name=d.nested.name, nested=_nested_messages(key, d.nested.fields, previous)
        )
    return tuple(result.values())


def _declared_imports(declared: Sequence[DeclaredField]) -> set[str]:
    found: set[str] = set()
    for d in declared:
        found |= d.imports
        if d.nested is not None:
            found |= _declared_imports(d.nested.fields)
    return found


def _list_request(
    name: str, label: str, query: ListQuery | None, previous: dict[str, Numbering]
) -> ProtoMessage:
    """``<Model>ListRequest``: the page, and the query fields the service declares.

    ``page_size`` and ``page_token`` come first (1 and 2 in a new file); ``filter``,
    ``order_by`` and ``search`` only when declared, numbered as any field (a dropped one's
    number and name become reserved).
    """
    plans = [
        _FieldPlan("page_size", "int32", False, False, "rows per page; 0 streams every row", set()),
        _FieldPlan("page_token", "string", False, False, "next_page_token of the last page", set()),
    ]
    if query is not None and query.filters:
        plans.append(
            _FieldPlan(
                "filter",
                f"{name}Filter",
                False,
                False,
                "only rows that match every filter set in it",
                set(),
            )
        )
    if query is not None and query.ordering_fields:
        plans.append(_FieldPlan("order_by", "string", False, True, _order_by_comment(query), set()))
    if query is not None and query.search_fields:
        fields = ", ".join(query.search_fields)
        plans.append(
            _FieldPlan(
                "search",
                "string",
                False,
                False,
                f"search terms, separated by spaces or commas; a row matches when every term is "
                f"in one of: {fields} (as DRF's SearchFilter does)",
                set(),
            )
        )
    return number_fields(f"{name}ListRequest", plans, previous, f"Which {label} rows to list.")


def _order_by_comment(query: ListQuery) -> str:
    fields = query.ordering_fields or ()
    allowed = "any field" if "__all__" in fields else "one of " + ", ".join(fields)
    text = (
        f"the order of the rows, as DRF's OrderingFilter takes it: {allowed}; a leading - "
        "sorts descending (-name)"
    )
    if query.ordering:
        text += f"; unset: {', '.join(query.ordering)}"
    return text


def _filter_message(
    name: str, label: str, query: ListQuery | None, previous: dict[str, Numbering]
) -> tuple[ProtoMessage, ...]:
    """``<Model>Filter``, one field per django-filter filter; none when no filters are declared."""
    if query is None or not query.filters:
        return ()
    plans = [
        _FieldPlan(f.name, f.type, f.optional, f.repeated, f.comment, set()) for f in query.filters
    ]
    comment = (
        f"Filters of {label} rows, applied as django-filter does (from {query.service} "
        f"{query.filters_from}); an unset field does not filter."
    )
    return (number_fields(f"{name}Filter", plans, previous, comment),)


def template_context(proto: ProtoFile) -> dict[str, Any]:
    return {"file": proto, "header": naming.GENERATED_HEADER}


# -- Watch (SPEC §11) ------------------------------------------------------------------------------

# <Model>Event.Type: fixed values, part of the wire contract.
WATCH_EVENT_TYPES = (
    ("TYPE_UNSPECIFIED", 0),
    ("CREATED", 1),
    ("UPDATED", 2),
    ("DELETED", 3),
    ("SNAPSHOT_COMPLETE", 4),
    ("BOOKMARK", 5),  # no data: a cursor to resume from, at the start and while idle
)


@dataclass(frozen=True)
class EventMessage(ProtoMessage):
    """``<Model>Event``: a message with the nested ``enum Type`` of its event types."""

    @property
    def enum_lines(self) -> list[str]:
        values = [f"  {value_name} = {number};" for value_name, number in WATCH_EVENT_TYPES]
        return ["enum Type {", *values, "}"]


def _watch_parts(
    name: str, label: str, query: ListQuery | None
) -> tuple[tuple[ProtoMessage, ...], ProtoRpc]:
    """``<Model>WatchRequest``, ``<Model>Event`` and the ``Watch`` RPC (fixed field numbers)."""
    request_fields = []
    if query is not None and query.filters:
        request_fields.append(
            ProtoField(
                "filter",
                1,
                f"{name}Filter",
                comment="only rows that match every filter set in it, as List's filter",
            )
        )
    request_fields += [
        ProtoField("since", 2, "string", comment="cursor of an earlier event; empty: from now"),
        ProtoField(
            "snapshot",
            3,
            "bool",
            comment="first every matching row (as CREATED), then SNAPSHOT_COMPLETE, then changes",
        ),
    ]
    request = ProtoMessage(
        f"{name}WatchRequest", tuple(request_fields), comment=f"Which {label} changes to stream."
    )
    event = EventMessage(
        f"{name}Event",
        (
            ProtoField("type", 1, "Type"),
            ProtoField("data", 2, f"{name}Data", comment="the row; for DELETED, as it was"),
            ProtoField(
                "changed",
                3,
                ".google.protobuf.FieldMask",
                comment="the fields an UPDATED changed, where known",
            ),
            ProtoField("cursor", 4, "string", comment="opaque; resume with since=cursor"),
            ProtoField("time", 5, ".google.protobuf.Timestamp", comment="when it was recorded"),
            ProtoField("id", 6, "string", comment="the event's id: a redelivery has the same"),
        ),
        comment=f"One committed change of a {label} row, in commit order.",
    )
    rpc = ProtoRpc(
        "Watch",
        f"{name}WatchRequest",
        f"{name}Event",
        True,
        "Stream the changes of rows, from a cursor or from now (SPEC §11).",
    )
    return (request, event), rpc
