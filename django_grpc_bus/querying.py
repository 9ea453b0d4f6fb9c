"""A List or Count request's ``filter``, ``search`` and ``order_by``, as DRF's filter backends.

SPEC §8. What a DRF view with ``DjangoFilterBackend``, ``SearchFilter`` and ``OrderingFilter``
would do with the same declarations (``filterset_fields`` or ``filterset_class``,
``search_fields``, ``ordering_fields`` and ``ordering``), with the same classes:

- ``filter``: the FilterSet ``DjangoFilterBackend.get_filterset_class`` builds for the service,
  bound to the data a query string would give it (each field set, under django-filter's name
  for it, as text), validated, then ``filterset.qs``;
- ``search``: DRF's ``SearchFilter``, with the text as its query parameter;
- ``order_by``: the terms DRF's ``OrderingFilter`` accepts, else its default ``ordering``.

Where DRF would quietly ignore part of a request, this refuses it with INVALID_ARGUMENT, so a
client never takes unfiltered rows for filtered ones: an ``order_by`` term ``OrderingFilter``
would drop, a filter field no filter reads (a proto older or newer than the service), a search
on a service with no ``search_fields``, and a value the database query cannot be built from
(django-filter accepts ``year`` 2147483647; Django cannot make a date of it). A search of more
than ``MAX_SEARCH_TERMS`` terms is refused too.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from django.core.exceptions import NON_FIELD_ERRORS, EmptyResultSet, FullResultSet
from django.db.models import QuerySet
from django.http import QueryDict
from django.utils.duration import duration_string
from django_filters import filters as df
from django_filters.rest_framework import DjangoFilterBackend, FilterSet
from google.protobuf import descriptor as _descriptor
from google.protobuf import unknown_fields
from rest_framework import exceptions as drf_exceptions
from rest_framework.filters import OrderingFilter, SearchFilter

from django_grpc_bus.conversion.messages import repeated
from django_grpc_bus.conversion.wellknown import duration_to_timedelta, timestamp_to_datetime
from django_grpc_bus.errors import GrpcError, flatten_errors
from django_grpc_bus.identifiers import proto_filter_name

INVALID = grpc.StatusCode.INVALID_ARGUMENT
FD = _descriptor.FieldDescriptor

# The actions whose request is a <Model>ListRequest.
# Watch (and its asyncio twin) filters its rows and events as List does (SPEC §11).
QUERY_ACTIONS = frozenset({"list", "count", "watch", "awatch"})

FILTERS = DjangoFilterBackend()
SEARCH = SearchFilter()
ORDERING = OrderingFilter()

# Each search term is a condition on every search field, all of them joined by AND: SQLite
# refuses expressions nested 1000 deep, and thousands of terms take seconds to build.
MAX_SEARCH_TERMS = 100

# What a value that cannot go into the SQL raises while Django builds it (ArithmeticError:
# decimal.InvalidOperation and OverflowError).
UNUSABLE = (ValueError, TypeError, ArithmeticError)


def filter_queryset(service: Any, queryset: QuerySet) -> QuerySet:
    """`queryset` filtered, searched and ordered as the service's List request asks."""
    request = service.request
    refuse_unknown_fields(request)
    queryset = apply_filter(service, queryset, request)
    queryset = apply_search(service, queryset, request)
    return apply_ordering(service, queryset, request)


def refuse_unknown_fields(request: Any) -> None:
    """INVALID_ARGUMENT for fields of the request or of its ``filter`` that this server's proto
    does not have (a client's newer one): ignored, as protobuf would, they would not filter."""
    message = _query_part(request, "filter", "message")
    for path, part in (("", request), ("filter", message)):
        if part is None:
            continue
        unknown = unknown_fields.UnknownFieldSet(part)
        numbers = sorted({unknown[index].field_number for index in range(len(unknown))})
        if numbers:
            names = ", ".join(map(str, numbers))
            raise GrpcError(
                INVALID,
                f"{path or 'The request'} has fields this server does not know (numbers "
                f"{names}): the client's proto is newer than the server's.",
                [(path, f"Unknown field numbers: {names}.")],
            )


class BackendRequest:
    """The call as a DRF filter backend reads a request: ``query_params`` are the query's."""

    def __init__(self, call: Any, query_params: Any) -> None:
        self._call = call
        self.query_params = query_params

    def __getattr__(self, name: str) -> Any:
        return getattr(self._call, name)


def _query_part(request: Any, name: str, kind: str) -> Any:
    """The request's `name` field if it is the kind a generated ListRequest has, else None.

    A hand-written request may have fields of these names meaning something else (an AIP-160
    ``string filter``): those are left to the service.
    """
    field = request.DESCRIPTOR.fields_by_name.get(name)
    if field is None:
        return None
    if kind == "message" and field.message_type is not None and not repeated(field):
        return getattr(request, name)
    if field.type == FD.TYPE_STRING and repeated(field) == (kind == "strings"):
        return getattr(request, name)
    return None


# -- filter: django-filter -------------------------------------------------------------------------


def apply_filter(service: Any, queryset: QuerySet, request: Any) -> QuerySet:
    """django-filter's ``filterset.qs`` for the request's ``filter``, or INVALID_ARGUMENT."""
    message = _query_part(request, "filter", "message")
    given = message.ListFields() if message is not None else []
    filterset_class = filterset_class_for(service, queryset)
    if filterset_class is None:
        if given:
            _refuse([(field.name, _no_filter(service)) for field, _value in given])
        return queryset
    if not given and not getattr(service, "filterset_class", None):
        # A FilterSet made from filterset_fields filters nothing without data: save its cost.
        return queryset
    inputs = filter_inputs(filterset_class, message.DESCRIPTOR) if message is not None else {}
    data = filter_data(service, inputs, given)
    call: Any = BackendRequest(service.call, data)  # what DRF backends take as a request
    filterset = filterset_class(**FILTERS.get_filterset_kwargs(call, queryset, service))
    if not filterset.is_valid():
        proto_names = {entry.name: proto for proto, entry in inputs.items()}
        _refuse(
            [
                (proto_names.get(name, proto_filter_name(name)), error["message"])
                for name, errors in filterset.form.errors.get_json_data().items()
                for error in errors
            ]
        )
    filtered = filterset.qs
    if _build_error(filtered) is not None:
        _refuse(_unusable_filters(filterset, queryset))
    return filtered


def filterset_class_for(service: Any, queryset: QuerySet) -> type[FilterSet] | None:
    """The FilterSet ``DjangoFilterBackend.get_filterset_class`` gives the service, or None.

    One made from ``filterset_fields`` is kept per service class and model while those stay
    the same object, since django-filter builds a new class each time (milliseconds for a model
    with many filters); a declared ``filterset_class`` is the backend's to return as it is.
    """
    fields = getattr(service, "filterset_fields", None)
    if getattr(service, "filterset_class", None) or not fields:
        return FILTERS.get_filterset_class(service, queryset)
    key = (type(service), queryset.model)
    cached = _AUTO_FILTERSETS.get(key)
    if cached is None or cached[0] is not fields:
        cached = _AUTO_FILTERSETS[key] = (fields, FILTERS.get_filterset_class(service, queryset))
    return cached[1]


_AUTO_FILTERSETS: dict[tuple[type, type], tuple[Any, type[FilterSet] | None]] = {}


class Shape(enum.Enum):
    """How a filter's form field reads its value from query-string data."""

    ONE = "one"  # one text
    CSV = "csv"  # `in` and `range` lookups: one text, values separated by commas
    LIST = "list"  # multiple choices: the key repeated (``getlist``)
    SUFFIXED = "suffixed"  # from-to ranges: one key per end (``price_min``, ``price_max``)


@dataclass(frozen=True)
class FilterInput:
    """Where one field of ``<Model>Filter`` goes in the FilterSet's data."""

    name: str  # django-filter's name of the filter
    shape: Shape
    keys: tuple[str, ...]  # the data keys: the name, or one per end of a range


@functools.lru_cache(maxsize=512)
def filter_inputs(filterset_class: type[FilterSet], descriptor: Any) -> dict[str, FilterInput]:
    """Proto field name -> its filter's input, for the filters the message has a field for."""
    inputs: dict[str, FilterInput] = {}
    for name, filter_ in filterset_class.base_filters.items():
        proto = proto_filter_name(name)
        if proto in descriptor.fields_by_name and proto not in inputs:
            inputs[proto] = _filter_input(name, filter_)
    return inputs


def _filter_input(name: str, filter_: Any) -> FilterInput:
    if isinstance(filter_, df.BaseCSVFilter):
        return FilterInput(name, Shape.CSV, (name,))
    if isinstance(filter_, df.MultipleChoiceFilter):
        return FilterInput(name, Shape.LIST, (name,))
    widget = filter_.extra.get("widget") or filter_.field_class.widget
    suffixes = getattr(widget, "suffixes", None)
    if suffixes:  # as django-filter's SuffixedMultiWidget names them
        keys = tuple(f"{name}_{suffix}" if suffix else name for suffix in suffixes)
        return FilterInput(name, Shape.SUFFIXED, keys)
    return FilterInput(name, Shape.ONE, (name,))


def filter_data(
    service: Any, inputs: dict[str, FilterInput], given: list[tuple[Any, Any]]
) -> QueryDict:
    """The query-string data django-filter would get for the fields set (INVALID_ARGUMENT for
    a value no query string could carry)."""
    data = QueryDict(mutable=True)
    problems: list[tuple[str, str]] = []
    for field, value in given:
        entry = inputs.get(field.name)
        if entry is None:
            problems.append((field.name, _no_filter(service)))
            continue
        many = repeated(field)
        try:
            texts = [_text(field, item) for item in (value if many else [value])]
        except (ValueError, TypeError, OverflowError) as exc:
            problems.append((field.name, f"Not a valid value: {_clause(exc)}."))
            continue
        problem = _place(data, entry, texts, many)
        if problem:
            problems.append((field.name, problem))
    if problems:
        _refuse(problems)
    data._mutable = False  # as request.query_params is
    return data


def _text(field: Any, value: Any) -> str:
    """One value as a query string would carry it (the text django-filter's form field parses)."""
    if field.type == FD.TYPE_BOOL:
        return "true" if value else "false"
    if field.type == FD.TYPE_MESSAGE:
        kind = field.message_type.full_name
        if kind == "google.protobuf.Timestamp":
            return timestamp_to_datetime(value).isoformat()
        if kind == "google.protobuf.Duration":
            return duration_string(duration_to_timedelta(value))
        raise TypeError(f"a {kind} is not a value a filter takes")
    if field.type == FD.TYPE_BYTES:
        raise TypeError("bytes are not a value a filter takes")
    return str(value)  # numbers; strings (decimals, dates, times, UUIDs) as they are


def _place(data: QueryDict, entry: FilterInput, texts: list[str], many: bool) -> str | None:
    """Put one filter's texts into `data` as its form field reads them; a problem, or None."""
    if entry.shape is Shape.CSV:
        if many and any("," in text for text in texts):
            return "A value cannot contain a comma (values are separated by commas)."
        data[entry.name] = ",".join(texts)
    elif entry.shape is Shape.LIST:
        data.setlist(entry.name, texts)
    elif entry.shape is Shape.SUFFIXED:
        if len(texts) != len(entry.keys):
            return "Give two values, from and to (an empty one leaves that end open)."
        for key, text in zip(entry.keys, texts, strict=True):
            data[key] = text
    else:
        if len(texts) != 1:
            return "Give one value."
        data[entry.name] = texts[0]
    return None


def _build_error(queryset: QuerySet) -> Exception | None:
    """What building the queryset's SQL raises for a value it cannot use (None: it builds)."""
    try:
        queryset.query.get_compiler(using=queryset.db).as_sql()
    except (EmptyResultSet, FullResultSet):
        return None
    except UNUSABLE as exc:
        return exc
    return None


def _unusable_filters(filterset: Any, queryset: QuerySet) -> list[tuple[str, str]]:
    """The filters whose values, each applied alone, the SQL cannot be built from (a filter
    left unset returns the queryset as it is, which builds)."""
    problems = []
    for name, value in filterset.form.cleaned_data.items():
        error = _build_error(filterset.filters[name].filter(queryset, value))
        if error is not None:
            problems.append(
                (proto_filter_name(name), f"Not a value this filter can use: {_clause(error)}.")
            )
    return problems or [("", "These filters cannot be used together.")]


def _clause(exc: BaseException) -> str:
    """An exception's text to go inside a sentence: one line, no final period."""
    return " ".join(str(exc).split()).rstrip(".") or type(exc).__name__


def _no_filter(service: Any) -> str:
    return (
        f"{type(service).__name__} has no filter for this field (is the compiled proto the "
        "service's? run generateproto and generategrpc)."
    )


def _refuse(problems: list[tuple[str, str]], prefix: str = "filter") -> None:
    """INVALID_ARGUMENT with a violation per problem, each under ``filter.`` (or `prefix`)."""
    violations = [
        (f"{prefix}.{name}" if name and name != NON_FIELD_ERRORS else prefix, text)
        for name, text in problems
    ]
    readable = "; ".join(f"{path}: {text}" for path, text in violations)
    raise GrpcError(INVALID, readable, violations)


# -- search: DRF's SearchFilter --------------------------------------------------------------------


def apply_search(service: Any, queryset: QuerySet, request: Any) -> QuerySet:
    """DRF's ``SearchFilter`` with the request's ``search`` as its query parameter."""
    text = _query_part(request, "search", "string")
    if not text:
        return queryset
    call: Any = BackendRequest(service.call, {SEARCH.search_param: text})
    if not SEARCH.get_search_fields(service, call):
        raise GrpcError(
            INVALID,
            f"search: {type(service).__name__} declares no search_fields.",
            [("search", "This service does not search.")],
        )
    try:
        terms = SEARCH.get_search_terms(call)
        if len(terms) > MAX_SEARCH_TERMS:
            raise drf_exceptions.ValidationError(
                f"Give at most {MAX_SEARCH_TERMS} terms to search for ({len(terms)} given)."
            )
        searched = SEARCH.filter_queryset(call, queryset, service)
    except drf_exceptions.ValidationError as exc:
        problems = [message for _path, message, _code in flatten_errors(exc.detail)]
        raise GrpcError(
            INVALID, f"search: {' '.join(problems)}", [("search", text) for text in problems]
        ) from None
    error = _build_error(searched)
    if error is not None:
        raise GrpcError(
            INVALID,
            f"search: {_clause(error)}.",
            [("search", f"Not a text this search can use: {_clause(error)}.")],
        )
    return searched


# -- order_by: DRF's OrderingFilter ----------------------------------------------------------------


def apply_ordering(service: Any, queryset: QuerySet, request: Any) -> QuerySet:
    """The request's ``order_by`` terms that DRF's ``OrderingFilter`` accepts, else the service's
    default ``ordering``; a term it would drop is INVALID_ARGUMENT."""
    given = _query_part(request, "order_by", "strings")
    # As OrderingFilter splits its query parameter: terms separated by commas, trimmed.
    terms = [term.strip() for item in given or () for term in item.split(",")]
    ordering: Sequence[str] | None = terms
    if terms:
        kept = ORDERING.remove_invalid_fields(queryset, terms, service, service.call)
        refused = [term for term in terms if term not in kept]
        if refused:
            valid = [name for name, _label in ORDERING.get_valid_fields(queryset, service)]
            choices = ", ".join(valid) or "none"
            raise GrpcError(
                INVALID,
                f"order_by: {', '.join(map(repr, refused))} cannot be ordered by. Choose from: "
                f"{choices} (a leading - sorts descending).",
                [("order_by", f"{term!r} is not one of: {choices}.") for term in refused],
            )
    else:
        ordering = ORDERING.get_default_ordering(service)
    return queryset.order_by(*ordering) if ordering else queryset
