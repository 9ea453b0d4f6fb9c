"""Retrieve's message straight from the row's column values, without a model instance.

Where a service reads one model's plain columns (its serializer's plan has ``columns``: no
declared field, no ``to_representation`` of the user's, no relation but foreign keys) through
the stock ``get_queryset``/``filter_queryset``/``get_object`` and an unfiltered queryset, the
row is read by a query compiled once per connection and lookup (the ORM's own SQL and column
converters, as ``values_list`` would run them) and the message filled from the values, as List
fills its rows. Anything else, and any row that is not found exactly once, goes the usual way
(``get_object()`` and ``to_message``), so errors and permissions stay what they are.

Both Retrieve and List (:func:`list_rows`) fill messages from the rows as the database driver
gives them, by a filler generated once per serializer plan, columns and connection
(:func:`row_filler`): one function with a statement per column, which calls the column's own
converters (``from_db_value``, the backend's) directly and writes the message field, and which
leaves out the converters whose result the field would not show (SQLite's for integers,
booleans and dates, its datetimes read in UTC). Any value it does not take (a type it does not
expect, one out of range) sends the row the general way, the ORM's converters and the plan's
writers, so a message and an error are what they would be without it.
"""

from __future__ import annotations

import datetime as dt
import keyword
import threading
import uuid
import weakref
from collections.abc import Callable, Iterator, Sequence
from decimal import Decimal
from itertools import chain
from typing import TYPE_CHECKING, Any, NamedTuple

import grpc
from django.conf import settings
from django.core.exceptions import FieldDoesNotExist
from django.db import connections
from django.db.models import Q, QuerySet
from django.db.models.expressions import Col
from django.db.models.query import ModelIterable, ValuesListIterable
from django.db.models.sql.constants import MULTI
from rest_framework.permissions import BasePermission

from django_grpc_bus.conversion import fieldtypes, scalars, wellknown
from django_grpc_bus.errors import GrpcError

if TYPE_CHECKING:
    from django_grpc_bus.generics import GenericService


class CompiledRead(NamedTuple):
    """One lookup's SELECT on one connection: SQL, the lookup fields, the column converters."""

    sql: str
    fields: tuple[Any, ...]
    converters: tuple[tuple[int, tuple[Any, ...], Any], ...]


_compiled: weakref.WeakKeyDictionary[Any, dict[Any, CompiledRead | None]] = (
    weakref.WeakKeyDictionary()
)
_compiled_lock = threading.Lock()


def row_readable(service_class: type[GenericService], serializer_class: Any) -> bool:
    """Whether the class's Retrieve may read rows (worked out once per class)."""
    cached = service_class.__dict__.get("_row_readable")
    if cached is None:
        cached = _row_readable(service_class, serializer_class)
        service_class._row_readable = cached  # type: ignore[attr-defined]
    return cached


def _row_readable(service_class: type[GenericService], serializer_class: Any) -> bool:
    from django_grpc_bus.generics import GenericService

    for hook in ("get_queryset", "filter_queryset", "get_object", "get_serializer_class"):
        if getattr(service_class, hook) is not getattr(GenericService, hook):
            return False  # the user's own: it decides which row, or how it is read
    if serializer_class is not service_class.serializer_class:
        return False
    queryset = service_class.queryset
    if type(queryset) is not QuerySet or queryset._iterable_class is not ModelIterable:
        return False
    query = queryset.query
    if (
        query.where
        or query.select_related
        or query.annotations
        or query.extra
        or query.distinct
        or query.is_sliced
        or query.deferred_loading != (frozenset(), True)
        or queryset._prefetch_related_lookups  # type: ignore[attr-defined]
    ):
        return False
    if serializer_class is None:
        return False
    plan = serializer_class.plan()
    return plan.columns is not None and not getattr(serializer_class, "_declared_fields", None)


def retrieve_message(service: GenericService) -> Any | None:
    """The Retrieve response read from the row's values; None where it must go the usual way."""
    serializer_class = service.get_serializer_class()
    if not row_readable(type(service), serializer_class):
        return None
    for permission in service.get_permissions():
        if type(permission).has_object_permission is not BasePermission.has_object_permission:
            return None  # it needs the instance
    found = service.get_lookup(service.request)
    queryset = service.queryset
    assert queryset is not None  # row_readable
    alias = queryset.db
    connection = connections[alias]
    names = tuple(model_lookup for model_lookup, _name, _value in found)
    plan = serializer_class.plan()
    assert plan.columns is not None  # row_readable
    compiled = _compiled_read(queryset, connection, names, plan.columns)
    if compiled is None:
        return None
    try:
        params = [
            field.get_db_prep_value(field.get_prep_value(value), connection, prepared=True)
            for field, (_lookup, _name, value) in zip(compiled.fields, found, strict=True)
        ]
    except Exception:
        return None  # not a valid value: get_object() says how, as always
    with connection.cursor() as cursor:
        cursor.execute(compiled.sql, params)
        rows = cursor.fetchmany(2)
    if len(rows) != 1:
        if not rows:
            described = ", ".join(f"{lookup}={value!r}" for lookup, _name, value in found)
            raise GrpcError(
                grpc.StatusCode.NOT_FOUND,
                f"No {queryset.model._meta.label} with {described}.",
            )
        return None  # several rows: get_object() raises as always
    fill = row_filler(plan, queryset.model, compiled.converters, connection)
    return fill(plan.message_class(), rows[0])


def _compiled_read(
    queryset: QuerySet, connection: Any, names: tuple[str, ...], columns: tuple[str, ...]
) -> CompiledRead | None:
    per_connection = _compiled.get(connection)
    key = (queryset.model, names, columns)
    if per_connection is not None and key in per_connection:
        return per_connection[key]
    compiled = _compile(queryset, connection, names, columns)
    with _compiled_lock:
        _compiled.setdefault(connection, {})[key] = compiled
    return compiled


def _compile(
    queryset: QuerySet, connection: Any, names: tuple[str, ...], columns: tuple[str, ...]
) -> CompiledRead | None:
    """The SELECT of `columns` for the row whose fields `names` equal parameters, or None."""
    opts = queryset.model._meta
    fields = []
    for name in names:
        try:
            field = opts.pk if name == "pk" else opts.get_field(name)
        except FieldDoesNotExist:
            return None  # a path through a relation (author__name), a lookup: the ORM's way
        if not field.concrete or field.is_relation:
            return None  # a lookup through a relation: the ORM's own way
        fields.append(field)
    # Placeholders of each field's own type, so the ORM compiles the lookups it would.
    try:
        # One Q with its children in `names`' order (keyword arguments would be sorted by
        # name), so the SQL's parameters come in the order the values are given.
        sample = queryset.filter(
            Q(*((name, _sample(f)) for name, f in zip(names, fields, strict=True)))
        )
        compiler = sample.values_list(*columns).query.get_compiler(connection=connection)
        sql, params = compiler.as_sql()
    except Exception:
        return None  # a key type the samples do not cover: the ORM's own way
    if len(params) != len(names):
        return None
    converters = compiler.get_converters([expression for expression, *_ in compiler.select])
    return CompiledRead(
        sql=sql,
        fields=tuple(fields),
        converters=tuple(
            (position, tuple(functions), expression)
            for position, (functions, expression) in converters.items()
        ),
    )


def _sample(field: Any) -> Any:
    """Some value of `field`'s type, for compiling its lookup (never sent to the database)."""
    internal = field.get_internal_type()
    if internal == "UUIDField":
        return uuid.UUID(int=1)
    if "Integer" in internal or internal.endswith("AutoField"):
        return 1
    return "x"


# -- messages from rows ---------------------------------------------------------------------------

RowFiller = Callable[[Any, Sequence[Any]], Any]
Converters = tuple[tuple[int, tuple[Any, ...], Any], ...]  # (position, functions, expression)

_fillers: weakref.WeakKeyDictionary[Any, dict[Any, RowFiller]] = weakref.WeakKeyDictionary()
EPOCH_NAIVE = wellknown.EPOCH.replace(tzinfo=None)


def list_rows(
    queryset: QuerySet, plan: Any, chunk_size: int
) -> tuple[Iterator[Sequence[Any]], RowFiller] | None:
    """A List's rows as the driver gives them, and the filler of a message from one.

    `queryset` is ``values_list(*plan.columns)``; its rows are read as its ``iterator()``
    would read them (the same query, `chunk_size` rows at a time) but left unconverted: the
    filler converts. None where it selects anything else (then iterate the queryset).
    """
    query = queryset.query
    if (
        queryset._iterable_class is not ValuesListIterable
        or queryset._fields != tuple(plan.columns)  # type: ignore[attr-defined]
        or query.extra_select
        or query.annotation_select
    ):
        return None
    connection = connections[queryset.db]
    compiler = query.get_compiler(using=queryset.db)
    chunked = not connection.settings_dict.get("DISABLE_SERVER_SIDE_CURSORS")
    results = compiler.execute_sql(MULTI, chunked_fetch=chunked, chunk_size=chunk_size)
    selected = [expression for expression, *_ in compiler.select[: compiler.col_count]]
    converters = tuple(
        (position, tuple(functions), expression)
        for position, (functions, expression) in compiler.get_converters(selected).items()
    )
    return chain.from_iterable(results), row_filler(plan, queryset.model, converters, connection)


def row_filler(plan: Any, model: Any, converters: Converters, connection: Any) -> RowFiller:
    """fill(message, row) for rows of ``plan.columns`` of `model` read on `connection`, whose
    columns convert by `converters` (the compiler's); one per plan, model and connection."""
    use_tz = bool(getattr(settings, "USE_TZ", True))
    key = (plan, model, use_tz, connection.timezone_name)
    per_connection = _fillers.get(connection)
    fill = per_connection.get(key) if per_connection is not None else None
    if fill is None:
        fill = _generated_filler(plan, model, converters, connection, use_tz)
        with _compiled_lock:
            _fillers.setdefault(connection, {})[key] = fill
    return fill


def _general_filler(plan: Any, converters: Converters, connection: Any) -> RowFiller:
    """The ORM's converters, then the plan's writers: what the generated filler falls back to."""

    def fill(message: Any, row: Sequence[Any]) -> Any:
        message.Clear()
        values = list(row)
        for position, functions, expression in converters:
            value = values[position]
            for convert in functions:
                value = convert(value, expression, connection)
            values[position] = value
        return plan.fill_row(message, tuple(values))

    return fill


def _generated_filler(
    plan: Any, model: Any, converters: Converters, connection: Any, use_tz: bool
) -> RowFiller:
    general = _general_filler(plan, converters, connection)
    by_attname = {field.attname: field for field in model._meta.concrete_fields}
    fields = [by_attname.get(column) for column in plan.columns]
    proto_fields = plan.message_class.DESCRIPTOR.fields_by_name
    by_position = {
        position: (functions, expression) for position, functions, expression in converters
    }
    if (
        any(field is None or field.name not in proto_fields for field in fields)
        or len(plan.row_writers) != len(fields)
        or any(not isinstance(expression, Col) or expression.target is not fields[position]
               for position, (_functions, expression) in by_position.items())
    ):  # fmt: skip
        return general
    namespace: dict[str, Any] = {
        "general": general,
        "connection": connection,
        "Decimal": Decimal,
        "date": dt.date,
        "datetime": dt.datetime,
        "EPOCH": wellknown.EPOCH,
        "EPOCH_NAIVE": EPOCH_NAIVE,
        "MIN_SECONDS": wellknown.MIN_TIMESTAMP_SECONDS,
        "MAX_SECONDS": wellknown.MAX_TIMESTAMP_SECONDS,
    }
    lines = []
    for position, field in enumerate(fields):
        assert field is not None
        functions, expression = by_position.get(position, ((), None))
        namespace[f"write_{position}"] = plan.row_writers[position]
        namespace[f"expression_{position}"] = expression
        lines += _column_code(position, field, functions, namespace, connection, use_tz=use_tz)
    names = ", ".join(f"v{position}" for position in range(len(fields)))
    source = (
        "def fill(message, row):\n"
        f"    ({names},) = row\n"
        "    try:\n" + "".join(f"        {line}\n" for line in lines) + "    except Exception:\n"
        "        return general(message, row)\n"
        "    return message\n"
    )
    label = f"<row filler of {model._meta.label} for {plan.message_class.DESCRIPTOR.full_name}>"
    exec(compile(source, label, "exec"), namespace)
    filler: RowFiller = namespace["fill"]
    return filler


def _column_code(
    position: int,
    field: Any,
    functions: tuple[Any, ...],
    namespace: dict[str, Any],
    connection: Any,
    *,
    use_tz: bool,
) -> list[str]:
    """The filler's lines for one column: `v<position>` into the message field of `field`."""
    name = field.name
    target = (
        f"message.{name}"
        if name.isidentifier() and not keyword.iskeyword(name)
        else f"getattr(message, {name!r})"
    )
    kind = fieldtypes.proto_type(field).kind
    value = f"v{position}"
    skipped = _needless_converters(functions, kind, connection, use_tz)
    calls = [function for function in functions if function not in skipped]
    converted = value
    for index, function in enumerate(calls):
        namespace[f"convert_{position}_{index}"] = function
        converted = f"convert_{position}_{index}({converted}, expression_{position}, connection)"
    x = f"x{position}"
    lines = [f"{x} = {converted}"] if calls else []
    if not calls:
        x = value
    setter = (
        f"message.{name} = {{}}"
        if target.startswith("message.")
        else f"setattr(message, {name!r}, {{}})"
    )
    if kind in ("int", "float", "str", "bytes", "bool"):
        body = [setter.format(x)]  # what the plan's writer does with a value it takes
    elif kind == "decimal":
        namespace[f"encode_{position}"] = scalars.ENCODERS["decimal"]
        body = [
            setter.format(
                f"format({x}, 'f') if {x}.__class__ is Decimal else encode_{position}({x})"
            )
        ]
    elif kind == "date":
        body = [setter.format(f"{x}.isoformat()")]
    elif kind == "datetime":
        naive_is_utc = bool(skipped)  # the skipped converter made a naive value UTC
        naive_or_aware, epoch = ("None", "EPOCH_NAIVE") if naive_is_utc else ("not None", "EPOCH")
        body = [
            f"if {x}.__class__ is datetime and {x}.tzinfo is {naive_or_aware}:",
            f"    d = {x} - {epoch}",
            "    s = d.days * 86400 + d.seconds",
            "    if not MIN_SECONDS <= s <= MAX_SECONDS:",
            "        raise ValueError(s)",
            f"    t = {target}",
            "    t.seconds = s",
            "    t.nanos = d.microseconds * 1000",
            "    if not (s or d.microseconds):",
            "        t.SetInParent()",
            "else:",
            # A value the skipped converter would have changed: the general way.
            "    raise ValueError" if naive_is_utc else f"    write_{position}(message, {x})",
        ]
    else:
        body = [f"write_{position}(message, {x})"]
    # The plan writes nothing for a None; the converters kept take None to None.
    return [*lines, f"if {x} is not None:", *(f"    {line}" for line in body)]


def _needless_converters(
    functions: tuple[Any, ...], kind: str, connection: Any, use_tz: bool
) -> frozenset[Any]:
    """Converters of SQLite's whose result the message field would not show: booleans (the
    field takes 0 and 1 as false and true), dates (the driver gives them as dates already), and
    datetimes made aware in UTC (read here as UTC, the same instant)."""
    if connection.vendor != "sqlite" or len(functions) != 1:
        return frozenset()
    ops = connection.ops
    (function,) = functions
    if kind == "bool" and function == ops.convert_booleanfield_value:
        return frozenset(functions)
    if kind == "date" and function == ops.convert_datefield_value:
        return frozenset(functions)  # what is not a date has no isoformat(): the general way
    if (
        kind == "datetime"
        and function == ops.convert_datetimefield_value
        and use_tz
        and connection.timezone_name == "UTC"
    ):
        return frozenset(functions)
    return frozenset()
