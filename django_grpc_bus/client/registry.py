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

from django_grpc_bus.client.base import BaseRegistry, reset_with_settings
from django_grpc_bus.client.config import ServletConfig, servlet_config, servlet_names
from django_grpc_bus.client.exceptions import UnknownServlet
from django_grpc_bus.client.servlet import Servlet


class Registry(BaseRegistry[Servlet]):
    """Servlets by name, created on first access and kept until settings change."""

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
        key = f"address:{address}"
        with self._lock:
            found = self._servlets.get(key)
            if found is None:
                found = self._servlets[key] = Servlet(ServletConfig.from_address(address))
        return found

    def reset(self) -> None:
        """Close every channel and forget every catalog (settings changed, or at exit)."""
        for servlet in self._forget():
            servlet.close()


registry = Registry()
reset_with_settings(registry)
