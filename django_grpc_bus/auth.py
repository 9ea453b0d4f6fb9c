"""Authentication and permissions for calls, with DRF's own classes.

DRF authentication classes read credentials from ``request.META`` (``HTTP_AUTHORIZATION``), so a
call's metadata is presented to them the same way: ``authorization: Token abc`` is
``META["HTTP_AUTHORIZATION"]``. Permission classes see ``request.method`` as HTTP would have it
(List/Count/Retrieve GET, Create POST, Update PUT, PartialUpdate PATCH, Destroy DELETE), so
``DjangoModelPermissions`` works unchanged. As in DRF, a refused call whose credentials were
missing or wrong is UNAUTHENTICATED (401); one whose user lacks the right, PERMISSION_DENIED (403).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import Any

import grpc
from django.apps import apps
from django.http.request import HttpHeaders
from rest_framework import exceptions

from django_grpc_bus.conf import bus_settings

# The HTTP method each standard action stands for, for permission classes that ask.
ACTION_METHODS = {
    "list": "GET",
    "count": "GET",
    "retrieve": "GET",
    "create": "POST",
    "update": "PUT",
    "partial_update": "PATCH",
    "destroy": "DELETE",
}


@functools.cache
def _anonymous_class() -> type | None:
    if not apps.is_installed("django.contrib.auth"):
        return None
    from django.contrib.auth.models import AnonymousUser

    return AnonymousUser


def anonymous_user() -> Any:
    """``AnonymousUser`` when django.contrib.auth is installed (a producer may not have it)."""
    anonymous = _anonymous_class()
    return anonymous() if anonymous is not None else None


def meta_from_metadata(metadata: Iterable[tuple[str, Any]] | None) -> dict[str, Any]:
    """Call metadata as WSGI-style ``META`` (``x-api-key`` -> ``HTTP_X_API_KEY``)."""
    meta: dict[str, Any] = {}
    for key, value in metadata or ():
        if key.endswith("-bin"):
            continue  # binary metadata is not a header a DRF class would read
        meta["HTTP_" + key.upper().replace("-", "_")] = value
    return meta


class CallRequest:
    """What DRF authentication and permission classes need of a request, for one gRPC call.

    ``META`` and the anonymous ``user`` are worked out on first use, so a call that no class
    looks at does not pay for them.
    """

    _UNSET = object()

    def __init__(self, message: Any, context: grpc.ServicerContext | None, action: str | None):
        self.message = message
        self.context = context
        self.action = action
        self.method = ACTION_METHODS.get(action or "", "POST")
        self._meta: dict[str, Any] | None = None
        self._user: Any = self._UNSET
        self.auth: Any = None
        self.authenticators: Sequence[Any] = ()
        self.successful_authenticator: Any = None
        self._request = self  # some classes reach for the underlying HttpRequest

    @property
    def META(self) -> dict[str, Any]:
        if self._meta is None:
            context = self.context
            self._meta = meta_from_metadata(context.invocation_metadata() if context else ())
            if context is not None:
                self._meta["REMOTE_ADDR"] = _peer_address(context.peer())
        return self._meta

    @property
    def headers(self) -> HttpHeaders:
        """The metadata as Django's case-insensitive ``request.headers`` (DRF 3.16+ reads it)."""
        return HttpHeaders(self.META)

    @property
    def user(self) -> Any:
        if self._user is self._UNSET:
            self._user = anonymous_user()
        return self._user

    @user.setter
    def user(self, value: Any) -> None:
        self._user = value

    @property
    def data(self) -> Any:
        return self.message

    @property
    def query_params(self) -> dict[str, Any]:
        return {}


def _peer_address(peer: str) -> str:
    """``ipv4:127.0.0.1:5000`` -> ``127.0.0.1``; ``ipv6:[::1]:5000`` -> ``::1``."""
    _scheme, _, rest = peer.partition(":")
    host = rest.rsplit(":", 1)[0] if ":" in rest else rest
    return host.strip("[]")


def authenticate(request: CallRequest, authenticators: Sequence[Any]) -> None:
    """Set ``request.user``/``auth`` from the first authenticator that recognises the call."""
    request.authenticators = authenticators
    if not authenticators:
        return  # the user stays anonymous (created only if someone asks)
    for authenticator in authenticators:
        result = authenticator.authenticate(request)
        if result is not None:
            request.user, request.auth = result
            request.successful_authenticator = authenticator
            return
    request.user, request.auth = anonymous_user(), None


def refuse(request: CallRequest, message: str | None = None, code: str | None = None) -> None:
    """Raise DRF's NotAuthenticated when no credentials were accepted, else PermissionDenied."""
    if request.authenticators and not request.successful_authenticator:
        raise exceptions.NotAuthenticated()
    raise exceptions.PermissionDenied(detail=message, code=code)


def default_authenticators() -> list[Any]:
    return [klass() for klass in bus_settings.DEFAULT_AUTHENTICATION_CLASSES]


def default_permissions() -> list[Any]:
    return [klass() for klass in bus_settings.DEFAULT_PERMISSION_CLASSES]
