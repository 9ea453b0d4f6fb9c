"""The ``filter`` of a List or Count request, spelt as the proto does or as Django does.

The generator names each field of ``<Model>Filter`` after its django-filter filter with ``__``
written ``_`` (``identifiers.proto_filter_name``: ``price__lt`` -> ``price_lt``), so a key is
read the same way: a field's own name is taken as it is, any other key by that rule. Both
spellings of one filter in one request, or a key that names no field, are refused before
sending.

The other way round, reflection carries the field names but not the comments that give
django-filter's names, so ``django_spelling`` rebuilds one from the names alone: a field of the
listed rows followed by Django lookups (``title_icontains`` -> ``title__icontains``,
``published_year_gte`` -> ``published__year__gte``), or by one word more, a field of the
related row (``author_name_icontains`` -> ``author__name__icontains``). A name it cannot
split that way (a longer path, a declared filter) is shown as the proto has it. Either spelling
shown is one the client accepts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from google.protobuf import descriptor

from django_grpc_bus.client.exceptions import RequestError
from django_grpc_bus.conversion.messages import repeated
from django_grpc_bus.identifiers import proto_filter_name

# Django's built-in lookups and transforms (django.contrib.postgres's included): the words a
# filter's name may end with after its field.
LOOKUPS = frozenset(
    {
        *("exact", "iexact", "contains", "icontains", "in", "gt", "gte", "lt", "lte", "range"),
        *("startswith", "istartswith", "endswith", "iendswith", "isnull", "regex", "iregex"),
        *("date", "time", "year", "iso_year", "quarter", "month", "week", "week_day", "day"),
        *("iso_week_day", "hour", "minute", "second"),
        *("has_key", "has_keys", "has_any_keys", "contained_by", "overlap", "len", "search"),
        *("unaccent", "trigram_similar", "trigram_word_similar", "trigram_strict_word_similar"),
    }
)
LONGEST_LOOKUP = max(len(lookup.split("_")) for lookup in LOOKUPS)


def filter_message(request: descriptor.Descriptor) -> descriptor.Descriptor | None:
    """The ``<Model>Filter`` a request carries in its ``filter`` field, or None."""
    field = request.fields_by_name.get("filter")
    if field is None or field.message_type is None or repeated(field):
        return None
    return field.message_type


def row_fields(service: descriptor.ServiceDescriptor, request: descriptor.Descriptor) -> set[str]:
    """The fields of the rows a List taking `request` streams (its ``results``), or none."""
    for method in service.methods:
        results = method.output_type.fields_by_name.get("results")
        same_request = method.input_type.full_name == request.full_name
        if same_request and results is not None and results.message_type is not None:
            return {field.name for field in results.message_type.fields}
    return set()


def django_spelling(name: str, rows: Iterable[str] = ()) -> str:
    """Django's name for filter field `name`: a field of `rows` then lookups, joined by ``__``;
    `name` itself when it does not split so."""
    rows = set(rows)
    if name in rows:
        return name
    words = name.split("_")
    for cut in range(len(words) - 1, 0, -1):
        field = "_".join(words[:cut])
        if field not in rows:
            continue
        lookups = _lookups(words[cut:])
        if lookups is not None:
            return "__".join([field, *lookups])
        # One word then lookups: a field of the related row (author_name_icontains).
        lookups = _lookups(words[cut + 1 :])
        if lookups:
            return "__".join([field, words[cut], *lookups])
    return name


def _lookups(words: list[str]) -> list[str] | None:
    """`words` read as a chain of lookups (``week_day`` is one), or None when they are not."""
    if not words:
        return []
    for size in range(min(LONGEST_LOOKUP, len(words)), 0, -1):
        lookup = "_".join(words[:size])
        if lookup in LOOKUPS:
            rest = _lookups(words[size:])
            if rest is not None:
                return [lookup, *rest]
    return None


def also_spelt(name: str, rows: Iterable[str] = ()) -> str:
    """`` (title__icontains)`` for ``title_icontains``: Django's spelling where it differs."""
    django = django_spelling(name, rows)
    return f" ({django})" if django != name else ""


def described(message: descriptor.Descriptor, rows: Iterable[str] = ()) -> list[str]:
    """Each field of a filter message, with its Django spelling where that differs."""
    rows = set(rows)
    return [field.name + also_spelt(field.name, rows) for field in message.fields]


def proto_keys(
    message: descriptor.Descriptor, given: Mapping[Any, Any], where: str, rows: Iterable[str] = ()
) -> dict[Any, Any]:
    """`given` (a request's ``filter``) with every key as `message` names its field.

    RequestError for a key that names no field, or for two keys naming one field.
    """
    fields = message.fields_by_name
    found: dict[Any, Any] = {}
    spelt: dict[Any, Any] = {}
    for key, value in given.items():
        name = key
        if isinstance(key, str) and key not in fields:
            name = proto_filter_name(key)
            if name not in fields:
                read = f" (read as {name})" if name != key else ""
                raise RequestError(
                    f"{where}: filter has no field {key!r}{read}. Filters: "
                    f"{', '.join(described(message, rows)) or '(none)'}."
                )
        if name in spelt:
            raise RequestError(
                f"{where}: filter {name} is given twice, as {spelt[name]!r} and {key!r}; "
                "give it once."
            )
        spelt[name] = key
        found[name] = value
    return found
