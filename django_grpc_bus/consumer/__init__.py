"""Durable consumers: a function called once per event of another project's watched model.

    # storefront/consumers.py
    from django_grpc_bus.consumer import subscribe

    @subscribe("inventory", "catalog.Book", filter={"in_stock": True}, snapshot=True)
    def book_changed(event):
        Price.objects.update_or_create(book_id=event["data"]["id"], ...)

``manage.py runconsumers`` runs every subscription (``consumer.runner``): each follows the
servlet's ``Watch`` of the model and calls its function once per event, in one database
transaction with the subscription's cursor (``SubscriptionCursor``), so a consumer stopped or
killed mid-function resumes at that event and the function's database effects happen once.
Subscriptions are found in a ``consumers`` module of each installed app, imported when
``runconsumers`` starts (as the admin finds ``admin`` modules).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import autodiscover_modules

Handler = Callable[[dict[str, Any]], Any]
MODEL_LABEL = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")


@dataclass(frozen=True)
class Subscription:
    """One ``@subscribe``: which servlet and model to watch, the function, how to start."""

    servlet: str
    model: str  # "<app>.<Model>": the servlet's service of that full name
    handler: Handler
    name: str  # the key of its cursor; the handler's dotted path unless given
    filter: Mapping[str, Any] | None = None
    snapshot: bool = False
    database: str | None = None  # None: the database router's choice for SubscriptionCursor

    def first_request(self, cursor: str) -> dict[str, Any]:
        """The Watch request: from `cursor`, or a snapshot (or now) when there is none yet."""
        request: dict[str, Any] = {"since": cursor, "snapshot": self.snapshot and not cursor}
        if self.filter:
            request["filter"] = dict(self.filter)
        return request


_subscriptions: dict[str, Subscription] = {}


def subscribe(
    servlet: str,
    model: str,
    *,
    filter: Mapping[str, Any] | None = None,
    snapshot: bool = False,
    name: str | None = None,
    database: str | None = None,
) -> Callable[[Handler], Handler]:
    """Call the decorated function with each event of `model` on `servlet` (``runconsumers``).

    `servlet` is a name of ``MESSAGE_BUS['SERVLETS']``; `model` is ``"<app>.<Model>"``;
    `filter` is the Watch request's filter (as a List's); `snapshot` first gives every matching
    row (as CREATED events, then SNAPSHOT_COMPLETE) when the subscription has no cursor yet.
    `name` keys the stored cursor (default: the function's dotted path; give one to keep the
    cursor through a rename). `database` is where the cursor is kept, and must be where the
    function writes for the two to commit together.
    """
    if not isinstance(servlet, str) or not servlet:
        raise ImproperlyConfigured(f"subscribe(): the servlet must be a name, not {servlet!r}.")
    if not isinstance(model, str) or not MODEL_LABEL.match(model):
        raise ImproperlyConfigured(
            f"subscribe({servlet!r}, {model!r}): the model must be '<app>.<Model>', "
            "e.g. 'catalog.Book'."
        )
    if filter is not None and not isinstance(filter, Mapping):
        raise ImproperlyConfigured(
            f"subscribe({servlet!r}, {model!r}): filter must be a dict, not {filter!r}."
        )

    def register(handler: Handler) -> Handler:
        if not callable(handler):
            raise ImproperlyConfigured(f"@subscribe({servlet!r}, {model!r}) needs a function.")
        key = name or f"{handler.__module__}.{handler.__qualname__}"
        found = _subscriptions.get(key)
        if found is not None and _origin(found.handler) != _origin(handler):
            raise ImproperlyConfigured(
                f"Two subscriptions are named {key!r} ({_origin(found.handler)} and "
                f"{_origin(handler)}): give one of them subscribe(..., name=...)."
            )
        _subscriptions[key] = Subscription(
            servlet=servlet,
            model=model,
            handler=handler,
            name=key,
            filter=filter,
            snapshot=bool(snapshot),
            database=database,
        )
        return handler

    return register


def _origin(handler: Handler) -> str:
    return f"{getattr(handler, '__module__', '?')}.{getattr(handler, '__qualname__', handler)}"


def autodiscover() -> None:
    """Import the ``consumers`` module of every installed app that has one."""
    autodiscover_modules("consumers")


def subscriptions() -> dict[str, Subscription]:
    """Every subscription registered so far, by name."""
    return dict(_subscriptions)


def unsubscribe(name: str) -> None:
    """Forget the subscription `name` (for tests)."""
    _subscriptions.pop(name, None)
