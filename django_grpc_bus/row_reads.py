"""Retrieve's message straight from the row's column values, without a model instance.

Where a service reads one model's plain columns (its serializer's plan has ``columns``: no
declared field, no ``to_representation`` of the user's, no relation but foreign keys) through
the stock ``get_queryset``/``filter_queryset``/``get_object`` and an unfiltered queryset, the
row is read by a query compiled once per connection and lookup (the ORM's own SQL and column
converters, as ``values_list`` would run them) and the message filled from the values, as List
fills its rows. Anything else, and any row that is not found exactly once, goes the usual way
(``get_object()`` and ``to_message``), so errors and permissions stay what they are.
"""

from __future__ import annotations

import threading
import uuid
import weakref
from typing import TYPE_CHECKING, Any, NamedTuple

import grpc
from django.core.exceptions import FieldDoesNotExist
from django.db import connections
from django.db.models import Q, QuerySet
from django.db.models.query import ModelIterable
from rest_framework.permissions import BasePermission

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
    row = list(rows[0])
    for position, functions, expression in compiled.converters:
        value = row[position]
        for convert in functions:
            value = convert(value, expression, connection)
        row[position] = value
    return plan.fill_row(plan.message_class(), tuple(row))


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
