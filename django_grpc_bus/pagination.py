"""List's batches and pages: rows streamed from the database cursor, and page tokens.

Each response message carries up to ``LIST_BATCH_SIZE`` rows (fewer when one more would take it
past ``MAX_MESSAGE_SIZE``), so the first batch leaves before the last row is read and memory
stays flat; a cancelled call stops reading. ``page_size`` > 0 returns one page and a
``next_page_token``, an opaque offset the client passes back as ``page_token``.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Iterator
from typing import Any

import grpc
from django.db.models import QuerySet
from django.db.models.query import ModelIterable

from django_grpc_bus.conf import bus_settings
from django_grpc_bus.errors import GrpcError
from django_grpc_bus.meta import primary_key_fields

INVALID = grpc.StatusCode.INVALID_ARGUMENT
BATCH_HEADROOM = 1024  # bytes kept free in a batch for next_page_token and framing
ROW_FRAMING = 6  # a repeated field's tag and length prefix, at most
MAX_OFFSET = 2**53  # far beyond any real table; keeps offset + page_size inside int64


def requested_page(request: Any) -> tuple[int, int]:
    """(page_size, offset) of a List request; 0 for page_size means every row."""
    page_size = getattr(request, "page_size", 0)
    if not 0 <= page_size <= MAX_OFFSET:
        raise GrpcError(INVALID, "page_size cannot be negative.", [("page_size", "Must be >= 0.")])
    token = getattr(request, "page_token", "")
    return page_size, decode_page_token(token) if token else 0


def stream_page(
    queryset: QuerySet,
    serializer_class: Any,
    response_class: type,
    context: grpc.ServicerContext,
    page_size: int = 0,
    offset: int = 0,
) -> Iterator[Any]:
    """The List responses for `queryset` from `offset`: every row, or one page of them."""
    if not queryset.ordered:
        # Stable order, so pages neither skip nor repeat rows.
        queryset = queryset.order_by(*[f.name for f in primary_key_fields(queryset.model)])
    if page_size:
        queryset = queryset[offset : offset + page_size + 1]  # one more: is there a next page?
    elif offset:
        queryset = queryset[offset:]
    rows, fill = _rows(queryset, serializer_class.plan())
    responses = _batches(rows, fill, response_class, page_size, offset)
    for response in responses:
        yield response
        if not context.is_active():
            responses.close()
            return


def _rows(queryset: QuerySet, plan: Any) -> tuple[Iterable[Any], Any]:
    """The rows to send and how to fill a message from one (tuples of plain columns if it can)."""
    if plan.prefetch and not queryset._prefetch_related_lookups:
        queryset = queryset.prefetch_related(*plan.prefetch)
    fill = plan.fill
    if (
        plan.columns is not None  # plain columns only: tuples, no model instances
        and not queryset._prefetch_related_lookups
        and queryset._iterable_class is ModelIterable
    ):
        queryset = queryset.values_list(*plan.columns)
        fill = plan.fill_row
    return queryset.iterator(chunk_size=bus_settings.LIST_BATCH_SIZE), fill


def _batches(
    rows: Iterable[Any], fill: Any, response_class: type, page_size: int, offset: int
) -> Iterator[Any]:
    batch_size = bus_settings.LIST_BATCH_SIZE
    byte_budget = bus_settings.MAX_MESSAGE_SIZE - BATCH_HEADROOM
    response = response_class()
    results = response.results
    batch_bytes = sent = 0
    for row in rows:
        if page_size and sent == page_size:
            response.next_page_token = encode_page_token(offset + page_size)
            break
        row_bytes = fill(results.add(), row).ByteSize() + ROW_FRAMING
        if batch_bytes + row_bytes > byte_budget and len(results) > 1:
            # One more row would take the message past the limit: send the batch without it.
            del results[-1]
            yield response
            response = response_class()
            results = response.results
            fill(results.add(), row)
            batch_bytes = 0
        batch_bytes += row_bytes
        sent += 1
        if len(results) == batch_size:
            yield response
            response = response_class()
            results = response.results
            batch_bytes = 0
    if len(results) or response.next_page_token or not sent:
        yield response


def encode_page_token(offset: int) -> str:
    return base64.urlsafe_b64encode(f"o:{offset}".encode()).decode().rstrip("=")


def decode_page_token(token: str) -> int:
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        kind, _, value = text.partition(":")
        offset = int(value)
        if kind != "o" or not 0 <= offset <= MAX_OFFSET:
            raise ValueError(text)
    except (ValueError, UnicodeDecodeError):
        raise GrpcError(
            INVALID,
            "page_token is not a token this server issued; pass next_page_token unchanged.",
            [("page_token", "Invalid token.")],
        ) from None
    return offset
