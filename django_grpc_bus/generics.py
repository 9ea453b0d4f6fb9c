"""Service classes for models, the gRPC counterparts of DRF's generic views.

``GenericService`` adds to :class:`~django_grpc_bus.services.BaseService` (one instance per
call, authentication, permissions) what DRF's ``GenericAPIView`` has: ``queryset``,
``serializer_class``, ``lookup_field``, ``get_queryset()``, ``filter_queryset()``,
``get_object()``. The concrete classes combine it with the mixins' actions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import grpc
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import models
from django.db.models import QuerySet

from django_grpc_bus import mixins, querying
from django_grpc_bus.errors import GrpcError
from django_grpc_bus.identifiers import snake_case  # noqa: F401  (still importable from here)
from django_grpc_bus.meta import primary_key_fields
from django_grpc_bus.services import BaseService
from django_grpc_bus.watch.streams import WatchModelMixin

if TYPE_CHECKING:
    from django_grpc_bus.serializers import ProtoSerializerMixin


class GenericService(BaseService):
    """A service of one model: queryset, serializer and lookup, as DRF's ``GenericAPIView``.

    ``lookup_field`` is the model field a single row is found by (``"pk"`` by default);
    ``lookup_request_field`` the request field holding its value (by default the same name,
    or the primary key's field name for ``"pk"``). A service that sets neither finds a row by
    any unique field the lookup request carries (see ``get_lookups``).
    """

    queryset: ClassVar[QuerySet | None] = None
    serializer_class: ClassVar[type[ProtoSerializerMixin] | None] = None
    lookup_field: ClassVar[str] = "pk"
    lookup_request_field: ClassVar[str | None] = None
    # get_lookups' cache, each class's own (read through cls.__dict__): descriptor -> ways.
    _lookups: ClassVar[dict[Any, list[list[tuple[str, str]]]]]

    # -- the model ---------------------------------------------------------------------------

    @classmethod
    def get_model(cls) -> type[models.Model] | None:
        if cls.queryset is not None:
            return cls.queryset.model
        meta = getattr(cls.serializer_class, "Meta", None)
        return getattr(meta, "model", None)

    def get_queryset(self) -> QuerySet:
        """A fresh copy of ``queryset`` (never its cache), as DRF's ``get_queryset`` does."""
        assert self.queryset is not None, (
            f"{type(self).__name__} should set `queryset` or override `get_queryset()`."
        )
        queryset = self.queryset
        if isinstance(queryset, QuerySet):
            queryset = queryset.all()
        return queryset

    def filter_queryset(self, queryset: QuerySet) -> QuerySet:
        """Narrow the queryset for this call. In List and Count, the request's ``filter``,
        ``search`` and ``order_by``, applied as DRF's filter backends would from the service's
        declarations (``querying``); otherwise unchanged. Override to narrow it further (by
        metadata, the user, ...), calling ``super()`` to keep the query."""
        if self.action in querying.QUERY_ACTIONS:
            return querying.filter_queryset(self, queryset)
        return queryset

    # -- serializers -------------------------------------------------------------------------

    def get_serializer_class(self) -> type[ProtoSerializerMixin]:
        assert self.serializer_class is not None, (
            f"{type(self).__name__} should set `serializer_class` or override "
            "`get_serializer_class()`."
        )
        return self.serializer_class

    def get_serializer_context(self) -> dict[str, Any]:
        # "request" is the call (user, META) as DRF fields such as CurrentUserDefault expect;
        # the request message itself is `message`.
        return {
            "request": self.call,
            "message": self.request,
            "grpc_context": self.context,
            "service": self,
            "view": self,
        }

    def get_serializer(self, *args: Any, **kwargs: Any) -> ProtoSerializerMixin:
        kwargs.setdefault("context", self.get_serializer_context())
        return self.get_serializer_class()(*args, **kwargs)

    # -- one object --------------------------------------------------------------------------

    def get_object(self, message: Any = None) -> models.Model:
        """The row `message` names (by default the request), with object permissions checked.

        Retrieve and Destroy pass nothing (their request names the row), Update its request
        (the data), PartialUpdate ``request.data``.
        """
        queryset = self.filter_queryset(self.get_queryset())
        found = self.get_lookup(self.request if message is None else message)
        lookup = {model_lookup: value for model_lookup, _name, value in found}
        described = ", ".join(f"{name}={value!r}" for name, value in lookup.items())
        model = queryset.model
        try:
            obj = queryset.get(**lookup)
        except model.DoesNotExist:
            raise GrpcError(
                grpc.StatusCode.NOT_FOUND,
                f"No {model._meta.label} with {described}.",
            ) from None
        except (ValueError, TypeError, DjangoValidationError) as exc:
            raise GrpcError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{described} is not a valid value: {exc}",
                [(request, "Not a valid value.") for _lookup, request, _value in found],
            ) from None
        self.check_object_permissions(obj)
        return obj

    def get_lookup(self, message: Any) -> list[tuple[str, str, Any]]:
        """(model lookup, request field, value) of each field `message` names its row by.

        With one way to name a row, each of its fields is required. With several (the primary
        key, another unique field), each one set is used, so several set must all match, as a
        filter; none set is INVALID_ARGUMENT naming the fields one may set.
        """
        fields = message.DESCRIPTOR.fields_by_name
        ways = self.get_lookups(message.DESCRIPTOR)
        for _model_lookup, request_field in ways[0]:
            if request_field not in fields:
                raise GrpcError(
                    grpc.StatusCode.INTERNAL,
                    f"{message.DESCRIPTOR.full_name} has no field {request_field!r} to look "
                    f"up by; set lookup_request_field on {type(self).__name__}.",
                )
        found, missing = [], []
        for way in ways:
            if len(ways) == 1:  # as always: a plain scalar is always given
                unset = [n for _, n in way if fields[n].has_presence and not message.HasField(n)]
            else:  # proto3: a plain scalar's zero value is "not set"
                unset = [n for _, n in way if not _is_set(message, fields[n])]
                if len(unset) == len(way):
                    continue
            missing += unset  # a way partly set (a composite key) is missing the rest
            found += [(lookup, name, getattr(message, name)) for lookup, name in way]
        if missing:
            raise GrpcError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} required to "
                "find the row.",
                [(name, "This field is required.") for name in missing],
            )
        if not found:
            names = [name for way in ways for _lookup, name in way]
            raise GrpcError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{_either(names)} is required to find the row.",
                [(name, f"Set one of: {', '.join(names)}.") for name in names],
            )
        return found

    def get_lookups(self, descriptor: Any) -> list[list[tuple[str, str]]]:
        """The ways a message of type `descriptor` can name one row (worked out once per type).

        Each way is a list of (model lookup, request field) pairs; the first is the lookup
        field's (the primary key's field(s) for ``"pk"``). A service that sets ``lookup_field``
        or ``lookup_request_field`` has only that one. Otherwise each other unique model field
        the message carries is a way too, unless the message is the serializer's own (Update,
        PartialUpdate), where those fields are the new values.
        """
        cls = type(self)
        cache = cls.__dict__.get("_lookups")
        if cache is None:
            cache = cls._lookups = {}
        ways = cache.get(descriptor)
        if ways is None:
            ways = cache[descriptor] = self._find_lookups(descriptor)
        return ways

    def _find_lookups(self, descriptor: Any) -> list[list[tuple[str, str]]]:
        model = self.get_model()
        keys = primary_key_fields(model) if model is not None else []
        if self.lookup_field == "pk" and self.lookup_request_field is None and keys:
            first = [(field.name, field.name) for field in keys]
        else:
            first = [(self.lookup_field, self.lookup_request_field or self.lookup_field)]
        explicit = any(
            "lookup_field" in klass.__dict__ or "lookup_request_field" in klass.__dict__
            for klass in type(self).__mro__
            if klass is not GenericService
        )
        if explicit or model is None or self._is_data_message(descriptor):
            return [first]
        others = [
            [(field.name, field.name)]
            for field in model._meta.concrete_fields
            if field.unique and field not in keys and field.name in descriptor.fields_by_name
        ]
        return [first, *others]

    def _is_data_message(self, descriptor: Any) -> bool:
        try:
            serializer_class = self.get_serializer_class()
        except AssertionError:
            return False
        proto_class = getattr(getattr(serializer_class, "Meta", None), "proto_class", None)
        return proto_class is not None and proto_class.DESCRIPTOR is descriptor


def _is_set(message: Any, field: Any) -> bool:
    """Whether a lookup field is set: by presence, or for a plain scalar by a non-zero value."""
    if field.has_presence:
        return message.HasField(field.name)
    return bool(getattr(message, field.name))


def _either(names: list[str]) -> str:
    """``["id", "email", "code"]`` -> ``"id, email or code"``."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


class CreateService(mixins.CreateModelMixin, GenericService):
    """Create only."""


class ListService(mixins.ListModelMixin, GenericService):
    """List only."""


class RetrieveService(mixins.RetrieveModelMixin, GenericService):
    """Retrieve only."""


class ReadOnlyModelService(
    mixins.RetrieveModelMixin,
    mixins.ListModelMixin,
    mixins.CountModelMixin,
    WatchModelMixin,
    GenericService,
):
    """List, Count and Retrieve; the write RPCs answer UNIMPLEMENTED."""


class ModelService(
    mixins.CreateModelMixin,
    mixins.RetrieveModelMixin,
    mixins.UpdateModelMixin,
    mixins.DestroyModelMixin,
    mixins.ListModelMixin,
    mixins.CountModelMixin,
    WatchModelMixin,
    GenericService,
):
    """Every RPC of a generated model service: List, Count, Create, Retrieve, Update,
    PartialUpdate and Destroy."""
