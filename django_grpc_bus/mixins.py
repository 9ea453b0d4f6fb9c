"""One action per mixin, as in DRF's ``mixins.py``, with gRPC messages in place of HTTP."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import grpc
from django.db import models
from django.db.models.query import ModelIterable
from google.protobuf import empty_pb2

from django_grpc_bus.conf import bus_settings
from django_grpc_bus.errors import GrpcError
from django_grpc_bus.meta import primary_key_fields

INVALID = grpc.StatusCode.INVALID_ARGUMENT


_generated_columns: dict[type[models.Model], tuple[str, ...]] = {}


def generated_columns(model: type[models.Model]) -> tuple[str, ...]:
    """The model's ``GeneratedField`` columns (Django 5.0+), looked up once per model."""
    found = _generated_columns.get(model)
    if found is None:
        generated_class = getattr(models, "GeneratedField", None)
        found = _generated_columns[model] = tuple(
            field.attname
            for field in model._meta.concrete_fields
            if generated_class is not None and isinstance(field, generated_class)
        )
    return found


def saved_message(serializer) -> Any:
    """The response after a save, with the columns the database computes read back first.

    Django does not refresh ``GeneratedField`` values on update, so the response would show the
    old ones; one query for those columns (only on models that have them) makes the response
    what Retrieve returns.
    """
    instance = serializer.instance
    columns = generated_columns(type(instance))
    if columns:
        instance.refresh_from_db(fields=columns)
    return serializer.message


class CreateModelMixin:
    """Create a row from the request message."""

    def create(self, request: Any, context: grpc.ServicerContext) -> Any:
        serializer = self.get_serializer(
            data=self.get_serializer_class().data_from_message(request)
        )
        serializer.is_valid(raise_exception=True)
        self.perform_create(serializer)
        return saved_message(serializer)

    def perform_create(self, serializer) -> None:
        serializer.save()


class RetrieveModelMixin:
    """Read one row, found by the lookup field."""

    def retrieve(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self.get_serializer_class().to_message(self.get_object())


class UpdateModelMixin:
    """Replace a row (Update) or change the fields named in a FieldMask (PartialUpdate).

    In Update, an unset nullable field means null (the whole row is replaced); other unset
    fields with presence are left as they are, as DRF leaves fields a PUT does not send.
    """

    def update(self, request: Any, context: grpc.ServicerContext) -> Any:
        instance = self.get_object()
        serializer_class = self.get_serializer_class()
        data = serializer_class.data_from_message(request, nulls=serializer_class.plan().nullable)
        serializer = self.get_serializer(instance, data=data)
        serializer.is_valid(raise_exception=True)
        self.perform_update(serializer)
        return saved_message(serializer)

    def partial_update(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.lookup_message = request.data
        instance = self.get_object()
        serializer_class = self.get_serializer_class()
        plan = serializer_class.plan()
        paths = self.get_update_paths(request, plan)
        nulls = [path for path in paths if path in plan.nullable]
        data = serializer_class.data_from_message(request.data, only=paths, nulls=nulls)
        unset = [path for path in paths if path not in data]
        if unset:
            raise GrpcError(
                INVALID,
                f"update_mask names {', '.join(unset)}, but data does not set them and they "
                "cannot be null.",
                [(f"data.{path}", "Set a value or leave it out of update_mask.") for path in unset],
            )
        serializer = self.get_serializer(instance, data=data, partial=True)
        serializer.is_valid(raise_exception=True)
        self.perform_update(serializer)
        return saved_message(serializer)

    def get_update_paths(self, request: Any, plan) -> list[str]:
        """The FieldMask's paths, each a writable field; anything else is INVALID_ARGUMENT."""
        paths = list(dict.fromkeys(request.update_mask.paths))
        if not paths:
            raise GrpcError(
                INVALID,
                "update_mask is empty: name the fields to change.",
                [("update_mask", "Name at least one field.")],
            )
        problems = [
            ("update_mask", f"{path}: " + ("read-only" if path in plan.fields else "no such field"))
            for path in paths
            if path not in plan.writable
        ]
        if problems:
            raise GrpcError(
                INVALID,
                "update_mask names fields that cannot be changed ("
                + ", ".join(text for _field, text in problems)
                + f"); writable fields: {', '.join(sorted(plan.writable))}.",
                problems,
            )
        return paths

    def perform_update(self, serializer) -> None:
        serializer.save()


class DestroyModelMixin:
    """Delete one row, found by the lookup field."""

    def destroy(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.perform_destroy(self.get_object())
        return empty_pb2.Empty()

    def perform_destroy(self, instance: models.Model) -> None:
        instance.delete()


BATCH_HEADROOM = 1024  # bytes kept free in a batch for next_page_token and framing
ROW_FRAMING = 6  # a repeated field's tag and length prefix, at most


class ListModelMixin:
    """Stream rows in batches straight from the database cursor.

    Each response message carries up to ``LIST_BATCH_SIZE`` rows, so the first batch leaves
    before the last row is read and memory stays flat. ``page_size`` > 0 returns one page and a
    ``next_page_token``; a cancelled call stops reading the database.
    """

    def list(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        queryset = self.filter_queryset(self.get_queryset())
        page_size, offset = self.get_page(request)
        if not queryset.ordered:
            # Stable order, so pages neither skip nor repeat rows.
            queryset = queryset.order_by(*[f.name for f in primary_key_fields(queryset.model)])
        if page_size:
            queryset = queryset[offset : offset + page_size + 1]
        else:
            queryset = queryset[offset:] if offset else queryset
        batch_size = bus_settings.LIST_BATCH_SIZE
        plan = self.get_serializer_class().plan()
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
        response_class = self.response_class
        # A batch is also sent early when one more row would take it past the message limit.
        byte_budget = bus_settings.MAX_MESSAGE_SIZE - BATCH_HEADROOM
        response = response_class()
        results = response.results
        batch_bytes = sent = 0
        for instance in queryset.iterator(chunk_size=batch_size):
            if page_size and sent == page_size:
                response.next_page_token = encode_page_token(offset + page_size)
                break
            row_bytes = fill(results.add(), instance).ByteSize() + ROW_FRAMING
            if batch_bytes + row_bytes > byte_budget and len(results) > 1:
                del results[-1]
                yield response
                if not context.is_active():
                    return
                response = response_class()
                results = response.results
                fill(results.add(), instance)
                batch_bytes = 0
            batch_bytes += row_bytes
            sent += 1
            if len(results) == batch_size:
                yield response
                if not context.is_active():
                    return
                response = response_class()
                results = response.results
                batch_bytes = 0
        if len(results) or response.next_page_token or not sent:
            yield response

    def get_page(self, request: Any) -> tuple[int, int]:
        page_size = getattr(request, "page_size", 0)
        if not 0 <= page_size <= MAX_OFFSET:
            raise GrpcError(
                INVALID, "page_size cannot be negative.", [("page_size", "Must be >= 0.")]
            )
        token = getattr(request, "page_token", "")
        return page_size, decode_page_token(token) if token else 0


def encode_page_token(offset: int) -> str:
    return base64.urlsafe_b64encode(f"o:{offset}".encode()).decode().rstrip("=")


MAX_OFFSET = 2**53  # far beyond any real table; keeps offset + page_size inside int64


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
