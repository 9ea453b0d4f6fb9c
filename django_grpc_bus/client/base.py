"""What ``registry`` and ``aregistry`` share, as httpx's ``BaseClient`` does for its two clients.

The synchronous client (``registry.py``, ``servlet.py``) and the asyncio one (``aio.py``) differ
only where I/O happens: fetching the catalog, opening channels, calling. The rest is here:

- ``Lookup``, the one implementation of ``x.name`` / ``x["name"]`` / ``dir(x)`` for registries,
  servlets and services;
- ``BaseRegistry``: servlets by name or address, forgotten when the settings change;
- ``MethodCalls``: the call signature, ``method(request_dict, *, timeout, metadata)`` and
  ``method.batches(...)``.

The servlet's state (its catalog and the RPCs' messages, options and errors) is shared too: the
async client uses the synchronous registry's ``Servlet`` objects and their ``RPC``s.
"""

from __future__ import annotations

import atexit
import threading
from collections.abc import Iterable
from typing import Any, Generic, TypeVar

from django.core.signals import setting_changed

from django_grpc_bus.client.config import servlet_names

ServletT = TypeVar("ServletT")


class Lookup:
    """``x.name`` and ``x["name"]`` are ``x._lookup(name)``; ``dir(x)`` adds ``x._names()``.

    Private names (a leading underscore) are never looked up, so ``copy``, ``pickle`` and
    ``hasattr`` probes see plain attributes. An unknown name raises the lookup's own error, an
    ``AttributeError`` that lists what exists, so ``hasattr()`` works.
    """

    def _lookup(self, name: str) -> Any:
        raise NotImplementedError

    def _names(self) -> Iterable[str]:
        """Names to list in ``dir()``; only those written as attributes are shown."""
        return ()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return self._lookup(name)

    def __getitem__(self, name: str) -> Any:
        return self._lookup(name)

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *(n for n in self._names() if n.isidentifier())})


class BaseRegistry(Lookup, Generic[ServletT]):
    """Servlets by name (``registry.server1``) or address (``connect``), kept until reset."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._servlets: dict[Any, ServletT] = {}

    def servlet(self, name: str) -> ServletT:
        """The servlet `name` of ``MESSAGE_BUS['SERVLETS']``; UnknownServlet lists them."""
        raise NotImplementedError

    def connect(self, address: str) -> ServletT:
        """A servlet for a ``host:port`` that is not in the settings, cached like the others."""
        raise NotImplementedError

    def _lookup(self, name: str) -> ServletT:
        return self.servlet(name)

    def _names(self) -> list[str]:
        return servlet_names()  # from the settings: nothing connects

    def _forget(self) -> list[ServletT]:
        """Empty the cache; the servlets it held, for the subclass to close."""
        with self._lock:
            servlets, self._servlets = list(self._servlets.values()), {}
        return servlets

    def reset(self) -> None:
        """Forget every servlet (the settings changed, or the process exits)."""
        self._forget()


def reset_with_settings(registry: BaseRegistry) -> None:
    """Reset `registry` when ``MESSAGE_BUS`` changes (``override_settings``) and at exit."""

    def settings_changed(*, setting: str, **kwargs: Any) -> None:
        if setting == "MESSAGE_BUS":
            registry.reset()

    setting_changed.connect(settings_changed, weak=False)
    atexit.register(registry.reset)


class MethodCalls:
    """How an RPC is called, by either client; `_send` is where they differ (the I/O)."""

    def __call__(
        self, request_dict: Any = None, *, timeout: float | None = None, metadata: Any = None
    ) -> Any:
        """Call the RPC with a dict (or a message; for a client stream, an iterable of them).

        Unary: the response as a dict. Server streaming: its rows (a generated List's rows are
        flattened out of their batches). `timeout` is in seconds; None takes the servlet's
        (``SERVICE_TIMEOUT``), and ``NO_DEADLINE`` (infinity) sets none. `metadata` is sent
        with the servlet's own.
        """
        return self._send(request_dict, timeout, metadata, flatten=None)

    def batches(
        self, request_dict: Any = None, *, timeout: float | None = None, metadata: Any = None
    ) -> Any:
        """A server stream's messages as dicts, unflattened, so next_page_token is kept."""
        return self._send(request_dict, timeout, metadata, flatten=False)

    def _send(self, request: Any, timeout: Any, metadata: Any, flatten: bool | None) -> Any:
        raise NotImplementedError
