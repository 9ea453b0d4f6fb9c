"""Server interceptors the package adds itself."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import grpc
from django.db import close_old_connections
from rest_framework import exceptions

from django_grpc_bus import auth
from django_grpc_bus.errors import describe_failure

INFRASTRUCTURE_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")


class _Details:
    """The bits of a ServicerContext the authentication classes read, from call details."""

    def __init__(self, details: grpc.HandlerCallDetails) -> None:
        self._metadata = details.invocation_metadata or ()

    def invocation_metadata(self) -> Any:
        return self._metadata

    def peer(self) -> str:
        return ""


def refusal_for(details: grpc.HandlerCallDetails) -> tuple[grpc.StatusCode, str] | None:
    """Authenticate a health or reflection call; the status to refuse it with, or None."""
    # _Details has what CallRequest reads of a context: invocation_metadata() and peer().
    call = auth.CallRequest(None, cast(grpc.ServicerContext, _Details(details)), "list")
    close_old_connections()
    try:
        auth.authenticate(call, auth.default_authenticators())
    except exceptions.AuthenticationFailed as exc:
        return grpc.StatusCode.UNAUTHENTICATED, str(exc.detail)
    except Exception as exc:  # e.g. the token table cannot be read: never UNKNOWN
        failure = describe_failure(exc, details.method, dev=False)
        return failure.code, failure.message
    finally:
        close_old_connections()
    if call.successful_authenticator is None:
        return grpc.StatusCode.UNAUTHENTICATED, "Credentials are required for this call."
    return None


def _guarded(
    handler: grpc.RpcMethodHandler, details: grpc.HandlerCallDetails
) -> grpc.RpcMethodHandler:
    """`handler`, authenticating first, in the call's own worker thread.

    Interceptors run on grpc's single dispatch thread; a database query there (a token
    lookup) would stall every call of the server, so the check runs inside the behavior.
    """
    kind = ("stream_" if handler.request_streaming else "unary_") + (
        "stream" if handler.response_streaming else "unary"
    )
    behavior = getattr(handler, kind)

    def guarded(request_or_iterator: Any, context: grpc.ServicerContext) -> Any:
        refusal = refusal_for(details)
        if refusal is not None:
            context.abort(*refusal)
        return behavior(request_or_iterator, context)

    # grpc's method handlers are namedtuples; the stubs' RpcMethodHandler class is not one.
    return handler._replace(**{kind: guarded})  # type: ignore[attr-defined]


class InfrastructureGuard(grpc.ServerInterceptor):
    """Health and reflection only for authenticated callers (``PROTECT_HEALTH_AND_REFLECTION``).

    Callers are authenticated with ``DEFAULT_AUTHENTICATION_CLASSES``; with none configured,
    every call to them is refused.
    """

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None or not handler_call_details.method.startswith(INFRASTRUCTURE_PREFIXES):
            return handler
        return _guarded(handler, handler_call_details)
