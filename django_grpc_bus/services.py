"""``BaseService``: what every service has, as DRF's ``APIView`` is to its generic views.

A service class serves one proto service. Each call gets a fresh instance (as a DRF view does
per request) holding ``request`` (the request message), ``context`` (the gRPC context),
``action`` (``"retrieve"``, ...) and ``response_class``; ``initial()`` authenticates the call and
checks the permissions before the action runs. Querysets, serializers and lookups are
:class:`django_grpc_bus.generics.GenericService`'s.
"""

from __future__ import annotations

from typing import Any, ClassVar

import grpc
from django.db import models

from django_grpc_bus import auth


class BaseService:
    """One call's service: its request and context, authentication and permissions."""

    # The compiled module and proto service of a hand-written proto; a model service's are
    # found from its serializer's message.
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
        self.call = auth.CallRequest(request, context, action)

    @classmethod
    def get_model(cls) -> type[models.Model] | None:
        """The model this service serves; None for a service of a hand-written proto."""
        return None

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
        """Refuse the call when a permission class's ``has_permission`` says no."""
        for permission in self.get_permissions():
            if not permission.has_permission(self.call, self):
                self.permission_denied(
                    getattr(permission, "message", None), getattr(permission, "code", None)
                )

    def check_object_permissions(self, obj: models.Model) -> None:
        """Refuse access to `obj` when a permission class's ``has_object_permission`` says no."""
        for permission in self.get_permissions():
            if not permission.has_object_permission(self.call, self, obj):
                self.permission_denied(
                    getattr(permission, "message", None), getattr(permission, "code", None)
                )

    def permission_denied(self, message: str | None = None, code: str | None = None) -> None:
        """Refuse the call: UNAUTHENTICATED without accepted credentials, else PERMISSION_DENIED."""
        auth.refuse(self.call, message, code)
