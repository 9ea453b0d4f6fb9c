"""List's batches and pages: rows streamed from the database cursor, and page tokens.

Each response message carries up to ``LIST_BATCH_SIZE`` rows (fewer when one more would take it
past ``MAX_MESSAGE_SIZE``), so the first batch leaves before the last row is read and memory
stays flat; a cancelled call stops reading. ``page_size`` > 0 returns one page and a
``next_page_token``, an opaque offset the client passes back as ``page_token``. A whole stream
(``page_size`` 0) gives each message but the last the token of the rows after it, so a client
whose stream was cut resumes there (with the same request and that ``page_token``). Rows come in the
queryset's order, then by primary key, so pages neither skip nor repeat rows.

A token is bound to the rest of the request (``filter``, ``order_by``, ``search``): it carries a
digest of them, and a request that passes it with others is INVALID_ARGUMENT, as its offset
would count other rows. A request that sets none of them has no digest, so its tokens are the
ones earlier versions issued (``o:<offset>``), still accepted.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Generator, Iterable, Iterator
from typing import Any, NamedTuple

import grpc
from django.db.models import QuerySet
from django.db.models.query import ModelIterable

from django_grpc_bus import row_reads
from django_grpc_bus.conf import bus_settings
from django_grpc_bus.errors import GrpcError
from django_grpc_bus.meta import primary_key_fields

INVALID = grpc.StatusCode.INVALID_ARGUMENT
BATCH_HEADROOM = 1024  # bytes kept free in a batch for next_page_token and framing
ROW_FRAMING = 6  # a repeated field's tag and length prefix, at most
MAX_OFFSET = 2**53  # far beyond any real table; keeps offset + page_size inside int64


PAGE_FIELDS = ("page_size", "page_token")


class Page(NamedTuple):
    """Which rows a List request asks for: `size` from `offset` (0: every row from there), and
    the digest of its query, which the page tokens carry."""

    size: int
    offset: int
    query: str


EVERY_ROW = Page(0, 0, "")


def requested_page(request: Any) -> Page:
    """The page a List request asks for; INVALID_ARGUMENT for a bad size or token."""
    page_size = getattr(request, "page_size", 0)
    if not 0 <= page_size <= MAX_OFFSET:
        raise GrpcError(INVALID, "page_size cannot be negative.", [("page_size", "Must be >= 0.")])
    token = getattr(request, "page_token", "")
    query = query_digest(request)  # every token carries it (a whole stream's batches too)
    return Page(page_size, decode_page_token(token, query) if token else 0, query)


def query_digest(request: Any) -> str:
    """A digest of the request's fields other than ``page_size`` and ``page_token`` (its filter,
    order_by, search); "" when none is set."""
    rest = type(request)()
    rest.CopyFrom(request)
    for name in PAGE_FIELDS:
        if name in request.DESCRIPTOR.fields_by_name:
            rest.ClearField(name)
    data = rest.SerializeToString(deterministic=True)
    return hashlib.blake2b(data, digest_size=8).hexdigest() if data else ""


def stream_page(
    queryset: QuerySet,
    serializer_class: Any,
    response_class: type,
    context: grpc.ServicerContext,
    page: Page = EVERY_ROW,
) -> Iterator[Any]:
    """The List responses for `queryset` from ``page.offset``: every row, or one page of them."""
    queryset = stably_ordered(queryset)
    page_size, offset = page.size, page.offset
    if page_size:
        queryset = queryset[offset : offset + page_size + 1]  # one more: is there a next page?
    elif offset:
        queryset = queryset[offset:]
    rows, fill = _rows(queryset, serializer_class.plan())
    responses = _batches(rows, fill, response_class, page)
    for response in responses:
        yield response
        if not context.is_active():
            responses.close()
            return


def _rows(queryset: QuerySet, plan: Any) -> tuple[Iterable[Any], Any]:
    """The rows to send and how to fill a message from one (tuples of plain columns if it can)."""
    # _prefetch_related_lookups: a private QuerySet attribute django-stubs leaves out.
    own = queryset._prefetch_related_lookups  # type: ignore[attr-defined]
    done = {getattr(lookup, "prefetch_to", lookup) for lookup in own}
    missing = [lookup for lookup in plan.prefetch if lookup not in done]
    if missing:  # the plan's, after the service's own (a Prefetch of the same path wins)
        queryset = queryset.prefetch_related(*missing)
    if getattr(plan, "select_related", ()) and queryset.query.select_related is not True:
        # Nested and dotted-source fields' to-one relations (SerializerPlan.select_related)
        queryset = queryset.select_related(*plan.select_related)
    fill = plan.fill
    if (
        plan.columns is not None  # plain columns only: tuples, no model instances
        and not queryset._prefetch_related_lookups  # type: ignore[attr-defined]
        and queryset._iterable_class is ModelIterable
    ):
        queryset = queryset.values_list(*plan.columns)
        read = row_reads.list_rows(queryset, plan, bus_settings.LIST_BATCH_SIZE)
        if read is not None:
            return read  # the rows as the driver gives them, and a filler that converts them
        fill = plan.fill_row
    return queryset.iterator(chunk_size=bus_settings.LIST_BATCH_SIZE), fill


def stably_ordered(queryset: QuerySet) -> QuerySet:
    """`queryset` in its own order (``order_by``, else the model's ``Meta.ordering``), then by
    primary key, so that rows it ranks equal come in one order on every page."""
    query = queryset.query
    if query.extra_order_by:
        return queryset  # .extra(order_by=...) replaces any order_by(); left as it is
    if query.order_by:
        ordering = list(query.order_by)
    elif query.default_ordering:
        ordering = list(queryset.model._meta.ordering)
    else:
        ordering = []
    keys = [field.name for field in primary_key_fields(queryset.model)]
    return queryset.order_by(*ordering, *keys)  # Django leaves a repeated term out


def _batches(
    rows: Iterable[Any], fill: Any, response_class: type, page: Page
) -> Generator[Any, None, None]:
    page_size, offset = page.size, page.offset
    batch_size = bus_settings.LIST_BATCH_SIZE
    byte_budget = bus_settings.MAX_MESSAGE_SIZE - BATCH_HEADROOM
    response = response_class()
    results = response.results
    batch_bytes = sent = 0
    full = None  # a full batch, sent once another row shows it is not the last
    for row in rows:
        if full is not None:
            yield _resumable(full, offset + sent, page)
            full = None
        if page_size and sent == page_size:
            response.next_page_token = encode_page_token(offset + page_size, page.query)
            break
        row_bytes = fill(results.add(), row).ByteSize() + ROW_FRAMING
        if batch_bytes + row_bytes > byte_budget and len(results) > 1:
            # One more row would take the message past the limit: send the batch without it.
            del results[-1]
            yield _resumable(response, offset + sent, page)
            response = response_class()
            results = response.results
            fill(results.add(), row)
            batch_bytes = 0
        batch_bytes += row_bytes
        sent += 1
        if len(results) == batch_size:
            full = response
            response = response_class()
            results = response.results
            batch_bytes = 0
    if full is not None:
        yield full  # the last batch: no resume token
    if len(results) or response.next_page_token or not sent:
        yield response


def _resumable(response: Any, next_offset: int, page: Page) -> Any:
    """A whole stream's batch, with the token of the rows after it (where a cut stream resumes);
    a page's batches other than the last carry none, so next_page_token stays the next page's."""
    if not page.size:
        response.next_page_token = encode_page_token(next_offset, page.query)
    return response


def encode_page_token(offset: int, query: str = "") -> str:
    """The token of the page at `offset` for a request whose query digest is `query`."""
    text = f"o:{offset}:{query}" if query else f"o:{offset}"
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_page_token(token: str, query: str = "") -> int:
    """The offset in `token`, which must have been issued for a request of query digest `query`."""
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        kind, _, rest = text.partition(":")
        value, colon, issued_for = rest.partition(":")
        offset = int(value)
        if kind != "o" or not 0 <= offset <= MAX_OFFSET or (colon and not issued_for):
            raise ValueError(text)
    except (ValueError, UnicodeDecodeError):
        raise GrpcError(
            INVALID,
            "page_token is not a token this server issued; pass next_page_token unchanged.",
            [("page_token", "Invalid token.")],
        ) from None
    if issued_for != query:
        raise GrpcError(
            INVALID,
            "page_token was issued for another filter, order_by or search: pass the same ones "
            "with it as with the first page, or list from the start without a page_token.",
            [("page_token", "Issued for another filter, order_by or search.")],
        )
    return offset
