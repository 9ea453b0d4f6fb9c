"""A service's query declarations -> the typed fields of its model's List request.

SPEC §8: ``filterset_fields`` / ``filterset_class`` (django-filter), ``ordering_fields`` and
``ordering`` (DRF's ``OrderingFilter``) and ``search_fields`` (DRF's ``SearchFilter``), declared
on the service as on a DRF view. django-filter itself expands the filter declarations, exactly
as its DRF backend does for a view (``DjangoFilterBackend.get_filterset_class``); each filter of
the resulting ``base_filters`` becomes one field of ``<Model>Filter``, named after the filter
with ``__`` written ``_`` (``price__lt`` -> ``price_lt``, an exact lookup is the field's name),
typed as the model field it reads (through the type map, ``conversion.fieldtypes``), or by its
filter class where no model field backs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from django.core.exceptions import FieldError, ImproperlyConfigured
from django.db import models
from django.db.models import QuerySet
from django.db.models.fields.reverse_related import ForeignObjectRel
from django_filters import FilterSet
from django_filters import filters as df
from django_filters.exceptions import FieldLookupError
from django_filters.rest_framework import DjangoFilterBackend
from django_filters.utils import get_model_field, resolve_field

from django_grpc_bus.conversion import fieldtypes
from django_grpc_bus.identifiers import proto_filter_name


class QueryDeclarationError(ImproperlyConfigured):
    """A service's filter, ordering or search declaration cannot become request fields."""


@dataclass(frozen=True)
class FilterField:
    """One field of ``<Model>Filter``: a django-filter filter as a typed proto field."""

    name: str  # the proto field's name
    filter_name: str  # django-filter's name for it (``price__lt``)
    type: str  # a scalar name, or ``.google.protobuf.Timestamp`` for a message type
    repeated: bool
    comment: str = ""
    import_path: str | None = None

    @property
    def optional(self) -> bool:
        """Scalars are proto3 ``optional`` (unset does not filter); message types track presence."""
        return not self.repeated and not self.type.startswith(".")


@dataclass(frozen=True)
class ListQuery:
    """What one service declares for querying its model's rows (List and Count)."""

    service: str  # dotted path of the service class, for messages and comments
    filters: tuple[FilterField, ...] = ()
    filters_from: str = ""  # "filterset_fields" or "filterset_class BookFilterSet"
    ordering_fields: tuple[str, ...] | None = None  # None: not declared, no order_by
    ordering: tuple[str, ...] = ()  # the default order
    search_fields: tuple[str, ...] = ()


def service_path(service_class: type) -> str:
    return f"{service_class.__module__}.{service_class.__qualname__}"


def list_query(service_class: type, model: type[models.Model]) -> ListQuery | None:
    """What `service_class` declares for querying `model`'s rows; None when it declares none."""
    filters, filters_from = filter_fields(service_class, model)
    ordering_fields = _names(getattr(service_class, "ordering_fields", None))
    search_fields = _names(getattr(service_class, "search_fields", None)) or ()
    if not (filters or ordering_fields or search_fields):
        return None
    return ListQuery(
        service=service_path(service_class),
        filters=filters,
        filters_from=filters_from,
        ordering_fields=ordering_fields or None,
        ordering=_names(getattr(service_class, "ordering", None)) or (),
        search_fields=search_fields,
    )


def _names(value: Any) -> tuple[str, ...] | None:
    """A declaration as a tuple of names: ``"title"``, ``["title", ...]``, DRF's (name, label)."""
    if not value:
        return None
    if isinstance(value, str):
        return (value,)
    return tuple(item if isinstance(item, str) else str(item[0]) for item in value)


def filterset_class_for(service_class: type, model: type[models.Model]) -> type[FilterSet] | None:
    """The FilterSet django-filter's DRF backend would use for `service_class`, or None.

    Built by ``DjangoFilterBackend.get_filterset_class`` itself, from ``filterset_class`` or
    ``filterset_fields`` and the service's queryset (its model's default manager when the
    service sets only ``serializer_class``).
    """
    queryset = getattr(service_class, "queryset", None)
    if not isinstance(queryset, QuerySet):
        queryset = model._default_manager.all()
    try:
        return DjangoFilterBackend().get_filterset_class(service_class, queryset)
    except (AssertionError, TypeError, AttributeError, FieldError, FieldLookupError) as exc:
        declared = getattr(service_class, "filterset_class", None)
        source = "filterset_class" if declared else "filterset_fields"
        raise QueryDeclarationError(
            f"{service_path(service_class)}.{source} cannot be used by django-filter: "
            f"{_sentence(exc)}"
        ) from exc


def filter_fields(
    service_class: type, model: type[models.Model]
) -> tuple[tuple[FilterField, ...], str]:
    """The fields of ``<Model>Filter`` for `service_class`, and which declaration gave them."""
    filterset = filterset_class_for(service_class, model)
    if filterset is None:
        return (), ""
    declared = getattr(service_class, "filterset_class", None)
    source = f"filterset_class {declared.__name__}" if declared else "filterset_fields"
    where = f"{service_path(service_class)} ({source})"
    fields = tuple(
        _filter_field(name, filter_, model, where)
        for name, filter_ in filterset.base_filters.items()
    )
    _refuse_collisions(fields, model, where)
    return fields, source


# -- one filter -> one field ----------------------------------------------------------------------

# Filters whose value is a list: `in` and `range` lookups (comma-separated in a query string),
# multiple choices (many-to-many, reverse relations), django-filter's own OrderingFilter.
MULTIPLE_VALUES = (df.BaseCSVFilter, df.MultipleChoiceFilter)
# Filters of two form fields, from and to, either of which may be left empty.
FROM_TO = (df.RangeFilter, df.NumericRangeFilter)

# The value type of a filter no model field backs, by its class (first hit in its MRO). A
# NumberFilter parses a decimal, so its text keeps every digit, as a DecimalField's does.
BY_FILTER_CLASS: dict[type, fieldtypes.ProtoType] = {
    df.BooleanFilter: fieldtypes.BOOL,
    df.CharFilter: fieldtypes.STRING,
    df.UUIDFilter: fieldtypes.UUID,
    df.ChoiceFilter: fieldtypes.STRING,
    df.TypedChoiceFilter: fieldtypes.STRING,
    df.MultipleChoiceFilter: fieldtypes.STRING,
    df.NumberFilter: fieldtypes.DECIMAL,
    df.DateFilter: fieldtypes.DATE,
    df.DateTimeFilter: fieldtypes.DATETIME,
    df.TimeFilter: fieldtypes.TIME,
    df.DurationFilter: fieldtypes.DURATION,
}


def _filter_field(name: str, filter_: Any, model: type[models.Model], where: str) -> FilterField:
    notes = [name] if proto_filter_name(name) != name else []
    if isinstance(filter_, df.LookupChoiceFilter):
        raise QueryDeclarationError(
            f"{where}: filter {name!r} is a LookupChoiceFilter (a value and a lookup chosen per "
            "request), which has no single proto type. Declare one filter per lookup instead, "
            "e.g. filterset_fields = {'field': ['exact', 'icontains']}."
        )
    if isinstance(filter_, FROM_TO):
        notes.append('two values, from and to; "" leaves that end open')
        return _field(name, fieldtypes.STRING, True, notes)

    model_field, lookup = _model_field(model, filter_)
    if lookup == "isnull" or isinstance(filter_, df.BooleanFilter):
        if lookup == "isnull":
            notes.append("true: only rows where it is null; false: only rows where it is not")
        return _field(name, fieldtypes.BOOL, False, notes)
    repeated = isinstance(filter_, MULTIPLE_VALUES)
    if lookup == "in":
        notes.append("any of these values")
    elif isinstance(filter_, df.MultipleChoiceFilter):
        notes.append("all of these values" if filter_.conjoined else "any of these values")
    elif lookup == "range":
        notes.append("two values, from and to, both included")

    ptype = _queryset_type(filter_, notes)
    if ptype is None and model_field is not None:
        ptype = _model_field_type(model_field, notes)
    if ptype is None:
        ptype = next(
            (BY_FILTER_CLASS[k] for k in type(filter_).__mro__ if k in BY_FILTER_CLASS), None
        )
    if ptype is None:
        raise QueryDeclarationError(
            f"{where}: filter {name!r} ({type(filter_).__name__}) has no proto type: no field "
            f"of {model._meta.label} backs it (field_name {filter_.field_name!r}) and its class "
            "says nothing of its value. Give it a field_name of a model field, or declare it "
            "with a typed filter class (CharFilter, NumberFilter, BooleanFilter, DateFilter, "
            "...), e.g. CharFilter(method=...)."
        )
    return _field(name, ptype, repeated, notes)


def _field(name: str, ptype: fieldtypes.ProtoType, repeated: bool, notes: list[str]) -> FilterField:
    return FilterField(
        name=proto_filter_name(name),
        filter_name=name,
        type=f".{ptype.proto}" if ptype.is_message else ptype.proto,
        repeated=repeated,
        comment="; ".join(notes),
        import_path=ptype.import_path,
    )


def _model_field(model: type[models.Model], filter_: Any) -> tuple[Any, str | None]:
    """The field whose values the filter compares (after transforms such as ``year``), and the
    final lookup, resolved by django-filter; ``(None, None)`` when no model field backs it."""
    field_name = getattr(filter_, "field_name", None)
    field = get_model_field(model, field_name) if isinstance(field_name, str) else None
    if field is None:
        return None, None
    try:
        return resolve_field(field, filter_.lookup_expr or "exact")
    except (FieldLookupError, FieldError, AttributeError, TypeError):
        return None, None


def _model_field_type(field: Any, notes: list[str]) -> fieldtypes.ProtoType | None:
    if isinstance(field, ForeignObjectRel):  # a reverse relation: the related rows' keys
        related = field.related_model
        notes.append(f"primary key of {related._meta.label}")
        field = related._meta.pk
    elif getattr(field, "is_relation", False) and getattr(field, "related_model", None):
        notes.append(f"primary key of {field.related_model._meta.label}")
    try:
        return fieldtypes.proto_type(field)
    except (ImproperlyConfigured, AttributeError):  # AttributeError: an unbound output field
        return None


def _queryset_type(filter_: Any, notes: list[str]) -> fieldtypes.ProtoType | None:
    """A model choice filter's value is a key of its queryset's rows (``to_field_name``, else
    the primary key), when the queryset is fixed rather than computed per request."""
    if not isinstance(filter_, df.QuerySetRequestMixin):
        return None
    queryset = getattr(filter_, "queryset", None)
    related = getattr(queryset, "model", None)
    if related is None:
        return None
    # The mixin is only ever part of a Filter, whose options `extra` holds.
    to_field = cast(df.Filter, filter_).extra.get("to_field_name")
    try:
        field = related._meta.get_field(to_field) if to_field else related._meta.pk
    except FieldError:
        return None
    if field.primary_key:
        notes.append(f"primary key of {related._meta.label}")
    else:
        notes.append(f"{field.name} of {related._meta.label}")
    try:
        return fieldtypes.proto_type(field)
    except ImproperlyConfigured:
        return None


# -- collisions --------------------------------------------------------------------------------


def json_name(name: str) -> str:
    """protoc's JSON name of a field (``price_lt`` -> ``priceLt``); two equal ones are refused."""
    parts = name.split("_")
    return parts[0] + "".join(part[:1].upper() + part[1:] for part in parts[1:])


def _refuse_collisions(
    fields: tuple[FilterField, ...], model: type[models.Model], where: str
) -> None:
    """Refuse two filters that would be one field of ``<Model>Filter`` (protoc also refuses
    two fields whose JSON names coincide, ``price_lt`` and ``priceLt``)."""
    message = f"{model._meta.app_label}.{model.__name__}Filter"
    for key, what in (
        (lambda f: f.name, "the field"),
        (lambda f: json_name(f.name), "the JSON name"),
    ):
        seen: dict[str, FilterField] = {}
        for field in fields:
            other = seen.setdefault(key(field), field)
            if other is not field:
                raise QueryDeclarationError(
                    f"{where}: the filters {other.filter_name!r} and {field.filter_name!r} would "
                    f"both be {what} {key(field)} of {message} (a filter's `__` is written `_`). "
                    "Rename one of them (a declared filter), or drop one of the lookups."
                )


def _sentence(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if text.endswith(".") else text + "."
