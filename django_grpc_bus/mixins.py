"""One action per mixin, as in DRF's ``mixins.py``, with gRPC messages in place of HTTP."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, cast

import grpc
from asgiref.sync import async_to_sync
from django.db import models
from google.protobuf import empty_pb2

from django_grpc_bus import pagination, row_reads, update_mask, validation_plan

if TYPE_CHECKING:
    from django_grpc_bus.generics import GenericService
    from django_grpc_bus.serializers import ProtoSerializerMixin

    # Each mixin is combined with GenericService, as DRF's are with GenericAPIView.
    _Service = GenericService
else:
    _Service = object


class CreateModelMixin(_Service):
    """Create a row from the request message."""

    _validated: ProtoSerializerMixin | None = None

    def create(self, request: Any, context: grpc.ServicerContext) -> Any:
        serializer = self._validated or self.validated_serializer(request)
        call_hook(self.perform_create, serializer)
        return saved_message(serializer)

    def validated_serializer(self, request: Any) -> ProtoSerializerMixin:
        data = self.get_serializer_class().data_from_message(request)
        serializer = self.get_serializer(data=data)
        serializer.is_valid(raise_exception=True)
        return serializer

    def before_transaction(self) -> None:
        """Validate a Create before its transaction (on SQLite, before queueing for the write
        lock) where the validation reads nothing from the database (``reads_database``)."""
        if self.action == "create" and type(self).create is CreateModelMixin.create:
            if not validation_plan.reads_database(self.get_serializer_class()):
                serializer = self.validated_serializer(self.request)
                # The class says nothing is read; a get_serializer() that changed this
                # instance's fields may have made a relation writable: validate it again inside.
                if serializer.fields_as_class():
                    self._validated = serializer

    def perform_create(self, serializer: ProtoSerializerMixin) -> None:
        serializer.save()


class ListModelMixin(_Service):
    """Stream the rows in batches straight from the database cursor (see ``pagination``)."""

    def list(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        queryset = self.filter_queryset(self.get_queryset())
        page = pagination.requested_page(request)
        response_class = cast(type, self.response_class)  # the binding sets it for every call
        yield from pagination.stream_page(
            queryset, self.get_serializer_class(), response_class, context, page
        )


class CountModelMixin(_Service):
    """Count the rows List would stream for the same request, without streaming them."""

    def count(self, request: Any, context: grpc.ServicerContext) -> Any:
        response_class = cast(type, self.response_class)  # the binding sets it for every call
        return response_class(count=self.filter_queryset(self.get_queryset()).count())


class RetrieveModelMixin(_Service):
    """Read the row the request names."""

    def retrieve(self, request: Any, context: grpc.ServicerContext) -> Any:
        message = row_reads.retrieve_message(self)  # None: not a plain-columns service
        if message is not None:
            return message
        return self.get_serializer_class().to_message(self.get_object())


class UpdateModelMixin(_Service):
    """Replace a row (Update) or change the fields an ``update_mask`` names (PartialUpdate).

    In Update, an unset nullable field means null (the whole row is replaced); other unset
    fields with presence are left as they are, as DRF leaves fields a PUT does not send.
    """

    def update(self, request: Any, context: grpc.ServicerContext) -> Any:
        instance = self.get_object()
        serializer_class = self.get_serializer_class()
        data = serializer_class.data_from_message(request, nulls=serializer_class.plan().nullable)
        serializer = self.get_serializer(instance, data=data)
        serializer.is_valid(raise_exception=True)
        call_hook(self.perform_update, serializer)
        return saved_message(serializer)

    def partial_update(self, request: Any, context: grpc.ServicerContext) -> Any:
        instance = self.get_object(request.data)
        data = update_mask.masked_data(self.get_serializer_class(), request)
        serializer = self.get_serializer(instance, data=data, partial=True)
        serializer.is_valid(raise_exception=True)
        call_hook(self.perform_update, serializer)
        return saved_message(serializer)

    def perform_update(self, serializer: ProtoSerializerMixin) -> None:
        serializer.save()


class DestroyModelMixin(_Service):
    """Delete the row the request names."""

    def destroy(self, request: Any, context: grpc.ServicerContext) -> Any:
        call_hook(self.perform_destroy, self.get_object())
        return empty_pb2.Empty()

    def perform_destroy(self, instance: models.Model) -> None:
        instance.delete()


def call_hook(hook: Callable[..., Any], *args: Any) -> Any:
    """Call a hook (``perform_create``, ...); an ``async def`` one runs on an event loop.

    ``async_to_sync``: on the asyncio server, the server's own loop, and ``sync_to_async`` in
    the hook comes back to the calling thread, so its queries share the action's connection and
    transaction; on the threaded server, a loop of asgiref's for the call.
    """
    if inspect.iscoroutinefunction(hook):
        return async_to_sync(hook)(*args)
    return hook(*args)


def saved_message(serializer: ProtoSerializerMixin) -> Any:
    """The response after a save, ``GeneratedField`` columns (stale after an update) re-read."""
    instance = cast(models.Model, serializer.instance)  # save() has set it
    columns = generated_columns(type(instance))
    if columns:
        instance.refresh_from_db(fields=columns)
    return serializer.message


@functools.cache
def generated_columns(model: type[models.Model]) -> tuple[str, ...]:
    """The model's ``GeneratedField`` columns (Django 5.0+)."""
    generated = getattr(models, "GeneratedField", ())  # isinstance(field, ()) is False
    return tuple(f.attname for f in model._meta.concrete_fields if isinstance(f, generated))
