"""``registry``: every servlet of ``MESSAGE_BUS['SERVLETS']``, reached by attribute.

    from django_grpc_bus.client.registry import registry

    rows = registry.server1.Book.list()                 # a generator of dicts
    book = registry.server1.Book.retrieve({"id": 1})    # a dict
    book = registry.server1["library.Book"].Retrieve({"id": 1})

Importing opens no connection; a servlet's first use fetches its services through reflection
(once, cached, thread-safe) and opens its one channel. ``registry.connect("host:port")`` reaches a
server that is not in the settings.
"""

from __future__ import annotations

import atexit
import threading
from typing import Any

from django.core.signals import setting_changed

from django_grpc_bus.client.config import ServletConfig, servlet_config, servlet_names
from django_grpc_bus.client.errors import UnknownServlet
from django_grpc_bus.client.servlet import Servlet


class Registry:
    """Servlets by name, created on first access and kept until settings change."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._servlets: dict[str, Servlet] = {}

    def servlet(self, name: str) -> Servlet:
        found = self._servlets.get(name)
        if found is None:
            with self._lock:
                found = self._servlets.get(name)
                if found is None:
                    config = servlet_config(name)
                    if config is None:
                        raise UnknownServlet(
                            "servlet", name, servlet_names(), "MESSAGE_BUS['SERVLETS']"
                        )
                    found = self._servlets[name] = Servlet(config)
        return found

    def connect(self, address: str) -> Servlet:
        """A servlet for a bare ``host:port``, cached like configured ones."""
        key = f"address:{address}"
        with self._lock:
            found = self._servlets.get(key)
            if found is None:
                found = self._servlets[key] = Servlet(ServletConfig.from_address(address))
        return found

    def __getattr__(self, name: str) -> Servlet:
        if name.startswith("_"):
            raise AttributeError(name)
        return self.servlet(name)

    def __getitem__(self, name: str) -> Servlet:
        return self.servlet(name)

    def __dir__(self) -> list[str]:
        names = [n for n in servlet_names() if n.isidentifier()]
        return sorted({*super().__dir__(), *names})

    def reset(self) -> None:
        """Close every channel and forget every catalog (settings changed, or at exit)."""
        with self._lock:
            servlets, self._servlets = list(self._servlets.values()), {}
        for servlet in servlets:
            servlet.close()


registry = Registry()


def _settings_changed(*, setting: str, **kwargs: Any) -> None:
    if setting == "MESSAGE_BUS":
        registry.reset()


setting_changed.connect(_settings_changed)
atexit.register(registry.reset)
