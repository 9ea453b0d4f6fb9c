"""What the client raises: lookup errors that list what exists, and failed calls as RpcErrors."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


class ClientError(Exception):
    """Base of every error the client raises itself."""


class NotFoundError(ClientError, AttributeError):
    """An unknown servlet, service or method. An AttributeError, so ``hasattr()`` works."""

    def __init__(self, what: str, name: str, available: Iterable[str], where: str = "") -> None:
        self.name = name
        self.available = sorted(available)
        place = f" on {where}" if where else ""
        listing = ", ".join(self.available) or "(none)"
        super().__init__(f"No {what} {name!r}{place}. Available: {listing}.")


class UnknownServlet(NotFoundError):
    pass


class UnknownService(NotFoundError):
    pass


class UnknownMethod(NotFoundError):
    def __init__(
        self, what: str, name: str, available: Iterable[str], where: str = "", servlet: str = ""
    ) -> None:
        super().__init__(what, name, available, where)
        if name == "watch":  # the one generated RPC a producer serves only when asked to
            # A client reflects a servlet once: a producer that gained Watch since is not seen.
            if not servlet:
                refresh = "the servlet's refresh()"
            elif servlet.isidentifier():
                refresh = f"registry.{servlet}.refresh()"
            else:
                refresh = f"registry[{servlet!r}].refresh()"
            self.args = (
                f"{self.args[0]} A producer serves Watch for a model its service_meta.yaml "
                "marks `watch: true` (then generateproto, generategrpc and a restart). A "
                "running client keeps the methods it fetched first: then call "
                f"{refresh}, or restart it.",
            )


class AmbiguousService(ClientError, AttributeError):
    """A short service name that more than one proto package defines on the servlet."""

    def __init__(self, name: str, full_names: Iterable[str], where: str) -> None:
        self.full_names = sorted(full_names)
        super().__init__(
            f"{name!r} on servlet {where!r} could mean {', '.join(self.full_names)}; use the "
            f"full name, e.g. registry.{where}[{self.full_names[0]!r}]."
        )


class ServletMisconfigured(ClientError):
    """A ``MESSAGE_BUS['SERVLETS']`` entry the client cannot use (the message names it)."""


class RequestError(ClientError, ValueError):
    """A request that cannot become the method's message; nothing was sent."""


class CallError(ClientError, grpc.RpcError):
    """A call that ended with a non-OK status.

    A ``grpc.RpcError`` with ``code()`` and ``details()``, plus the servlet and method it came
    from and the server's field violations (``google.rpc.BadRequest``) as ``violations``, a list
    of ``(field, description)``.
    """

    def __init__(self, error: grpc.RpcError | None, servlet: str, method: str, **fixed: Any):
        self._error = error
        self.servlet = servlet
        self.method = method
        self._code: grpc.StatusCode | None = fixed.get("code") or (
            error.code() if error is not None else None
        )
        self._details: str = (
            fixed.get("details") or (error.details() if error is not None else None) or ""
        )
        self.violations = _violations(error)
        super().__init__(
            f"{method} on servlet {servlet!r}: {self._code.name if self._code else '?'}: "
            f"{self._details}"
        )

    def code(self) -> grpc.StatusCode:
        # Every CallError is made from a failed call (`error`) or given its code.
        return cast(grpc.StatusCode, self._code)

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> Any:
        return self._error.trailing_metadata() if self._error is not None else None

    def initial_metadata(self) -> Any:
        # A call's RpcError is also its grpc.Call (the stubs' RpcError has no metadata of it).
        return cast(grpc.Call, self._error).initial_metadata() if self._error is not None else None


class ServletUnavailable(CallError):
    """The servlet could not be reached (or did not answer) within the deadline."""


def _violations(error: grpc.RpcError | None) -> list[tuple[str, str]]:
    if error is None or not hasattr(error, "trailing_metadata"):
        return []
    try:
        status = rpc_status.from_call(cast(grpc.Call, error))  # the failed call, as above
    except (ValueError, AttributeError, TypeError):
        return []
    found = []
    for detail in getattr(status, "details", []) or []:
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(bad_request):
            found += [(v.field, v.description) for v in bad_request.field_violations]
    return found
