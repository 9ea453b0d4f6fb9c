"""Service base classes, the gRPC counterparts of DRF's generic views.

A service class serves one proto service. Each call gets a fresh instance (as a DRF view does
per request) holding ``request`` (the request message), ``context`` (the gRPC context) and
``action`` (``"retrieve"``, ...). Override ``get_queryset()``, ``filter_queryset()``,
``get_object()`` and the ``perform_*`` hooks as in DRF.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

import grpc
from django.db import models
from django.db.models import QuerySet
from rest_framework import serializers as drf_serializers

from django_grpc_bus import auth, mixins
from django_grpc_bus.errors import GrpcError
from django_grpc_bus.meta import primary_key_fields


def snake_case(name: str) -> str:
    """``PartialUpdate`` -> ``partial_update``: the method a service implements for an RPC."""
    return re.sub(r"(?<=[a-z0-9])([A-Z])|(?<=[A-Z])([A-Z])(?=[a-z])", r"_\1\2", name).lower()


class GenericService:
    """The base of every service: construction per call, queryset, serializer and lookup.

    ``lookup_field`` is the model field a single row is found by (``"pk"`` by default);
    ``lookup_request_field`` the request field holding its value (by default the same name,
    or the primary key's field name for ``"pk"``). A service that sets neither finds a row by
    any unique field the lookup request carries (see ``get_lookups``).
    """

    queryset: ClassVar[QuerySet | None] = None
    serializer_class: ClassVar[type[drf_serializers.BaseSerializer] | None] = None
    lookup_field: ClassVar[str] = "pk"
    lookup_request_field: ClassVar[str | None] = None
    # The generated module and proto service; derived from the model when not given.
    grpc_module: ClassVar[str | None] = None
    proto_service: ClassVar[str | None] = None
    # None: MESSAGE_BUS DEFAULT_AUTHENTICATION_CLASSES / DEFAULT_PERMISSION_CLASSES.
    authentication_classes: ClassVar[list[type] | None] = None
    permission_classes: ClassVar[list[type] | None] = None
    # Actions that run inside one database transaction.
    atomic_actions: ClassVar[frozenset[str]] = frozenset(
        {"create", "update", "partial_update", "destroy"}
    )

    def __init__(
        self,
        request: Any = None,
        context: grpc.ServicerContext | None = None,
        action: str | None = None,
        response_class: type | None = None,
    ) -> None:
        self.request = request
        self.context = context
        self.action = action
        self.response_class = response_class
        self.lookup_message = request
        self.call = auth.CallRequest(request, context, action)

    # -- authentication and permissions, as in DRF's APIView ---------------------------------

    def initial(self) -> None:
        """Runs before the action: authenticate the call, then check the permissions."""
        auth.authenticate(self.call, self.get_authenticators())
        self.check_permissions()

    def get_authenticators(self) -> list[Any]:
        if self.authentication_classes is None:
            return auth.default_authenticators()
        return [klass() for klass in self.authentication_classes]

    def get_permissions(self) -> list[Any]:
        if self.permission_classes is None:
            return auth.default_permissions()
        return [klass() for klass in self.permission_classes]

    @property
    def user(self) -> Any:
        """The authenticated user (``AnonymousUser`` when none)."""
        return self.call.user

    def check_permissions(self) -> None:
        for permission in self.get_permissions():
            if not permission.has_permission(self.call, self):
                auth.refuse(
                    self.call,
                    getattr(permission, "message", None),
                    getattr(permission, "code", None),
                )

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
        """Narrow the queryset for this call (by metadata, the user, ...); default: unchanged."""
        return queryset

    # -- serializers -------------------------------------------------------------------------

    def get_serializer_class(self) -> type[drf_serializers.BaseSerializer]:
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

    def get_serializer(self, *args: Any, **kwargs: Any) -> drf_serializers.BaseSerializer:
        kwargs.setdefault("context", self.get_serializer_context())
        return self.get_serializer_class()(*args, **kwargs)

    # -- one object --------------------------------------------------------------------------

    def get_lookup_fields(self) -> list[tuple[str, str]]:
        """(model lookup, request field) pairs identifying one row (worked out once per class)."""
        cls = type(self)
        found = cls.__dict__.get("_lookup_fields")
        if found is None:
            found = cls._lookup_fields = cls._find_lookup_fields()
        return found

    @classmethod
    def _find_lookup_fields(cls) -> list[tuple[str, str]]:
        if cls.lookup_field == "pk" and cls.lookup_request_field is None:
            model = cls.get_model()
            if model is not None:
                return [(field.name, field.name) for field in primary_key_fields(model)]
        return [(cls.lookup_field, cls.lookup_request_field or cls.lookup_field)]

    @classmethod
    def sets_lookup_field(cls) -> bool:
        """Whether the service (or a base of its own) sets a lookup field explicitly."""
        return any(
            "lookup_field" in klass.__dict__ or "lookup_request_field" in klass.__dict__
            for klass in cls.__mro__
            if klass is not GenericService
        )

    def get_lookups(self, descriptor: Any) -> list[list[tuple[str, str]]]:
        """The ways a message of type `descriptor` can name one row (cached per class and type).

        Each way is a list of (model lookup, request field) pairs. With ``lookup_field`` set,
        there is one: ``get_lookup_fields()``. Otherwise the primary key and each other unique
        model field the message carries, unless the message is the serializer's own (Update,
        PartialUpdate), where those fields are the new values.
        """
        cls = type(self)
        cache = cls.__dict__.get("_lookups")
        if cache is None:
            cache = cls._lookups = {}
        found = cache.get(descriptor)
        if found is None:
            found = cache[descriptor] = self._find_lookups(descriptor)
        return found

    def _find_lookups(self, descriptor: Any) -> list[list[tuple[str, str]]]:
        ways = [self.get_lookup_fields()]
        model = self.get_model()
        if self.sets_lookup_field() or model is None or self._is_data_message(descriptor):
            return ways
        keys = set(primary_key_fields(model))
        for field in model._meta.concrete_fields:
            if field.unique and field not in keys and field.name in descriptor.fields_by_name:
                ways.append([(field.name, field.name)])
        return ways

    def _is_data_message(self, descriptor: Any) -> bool:
        try:
            serializer_class = self.get_serializer_class()
        except AssertionError:
            return False
        proto_class = getattr(getattr(serializer_class, "Meta", None), "proto_class", None)
        return proto_class is not None and proto_class.DESCRIPTOR is descriptor

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

    def get_object(self) -> models.Model:
        queryset = self.filter_queryset(self.get_queryset())
        found = self.get_lookup(self.lookup_message)
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
        except (ValueError, TypeError, drf_serializers.DjangoValidationError) as exc:
            raise GrpcError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{described} is not a valid value: {exc}",
                [(request, "Not a valid value.") for _lookup, request, _value in found],
            ) from None
        self.check_object_permissions(obj)
        return obj

    def check_object_permissions(self, obj: models.Model) -> None:
        """Refuse access to `obj` when a permission class's ``has_object_permission`` says no."""
        for permission in self.get_permissions():
            if not permission.has_object_permission(self.call, self, obj):
                auth.refuse(
                    self.call,
                    getattr(permission, "message", None),
                    getattr(permission, "code", None),
                )


def _is_set(message: Any, field: Any) -> bool:
    """Whether a lookup field is set: by presence, or for a plain scalar by a non-zero value."""
    if field.has_presence:
        return message.HasField(field.name)
    return bool(getattr(message, field.name))


def _either(names: list[str]) -> str:
    """``["id", "email", "code"]`` -> ``"id, email or code"``."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


class GenericModelService(GenericService):
    """A service of one model's generated proto service (``<app>.<Model>``)."""


class CreateService(mixins.CreateModelMixin, GenericModelService):
    pass


class ListService(mixins.ListModelMixin, GenericModelService):
    pass


class RetrieveService(mixins.RetrieveModelMixin, GenericModelService):
    pass


class ReadOnlyModelService(mixins.RetrieveModelMixin, mixins.ListModelMixin, GenericModelService):
    """List and Retrieve; the write RPCs answer UNIMPLEMENTED."""


class ModelService(
    mixins.CreateModelMixin,
    mixins.RetrieveModelMixin,
    mixins.UpdateModelMixin,
    mixins.DestroyModelMixin,
    mixins.ListModelMixin,
    GenericModelService,
):
    """Every RPC of a generated model service: List, Create, Retrieve, Update,
    PartialUpdate and Destroy."""
