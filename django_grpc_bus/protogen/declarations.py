"""Where generation finds the query declarations: the services ROOT_HANDLERS_HOOK registers.

The handler module is imported with the compiled package replaced by placeholders
(:mod:`~django_grpc_bus.protogen.placeholders`), so this works whether that package is missing,
stale or current; nothing of the services is run, only their class attributes are read. Without
a hook, or before its module exists, generation goes on without query fields and says so in one
line (``Declarations.note``); a handler module that exists but fails to import stops it, since
going on would retire the fields and numbers of every action, filter and declared field.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db import models
from django.utils.module_loading import import_string

from django_grpc_bus.conf import base_dir, bus_settings
from django_grpc_bus.decorators import service_actions
from django_grpc_bus.meta import Selection, is_library_path
from django_grpc_bus.protogen import naming
from django_grpc_bus.protogen.actions import ActionDeclarationError, ModelActions
from django_grpc_bus.protogen.placeholders import placeholder_imports
from django_grpc_bus.protogen.query import ListQuery, QueryDeclarationError, list_query

NO_QUERY_FIELDS = "No filters, ordering or search generated for List, and no actions: "


@dataclass(frozen=True)
class Declarations:
    """Each selected model's query declarations, by model; `note` says why there are none."""

    queries: dict[type[models.Model], ListQuery] = field(default_factory=dict)
    note: str | None = None
    actions: dict[type[models.Model], ModelActions] = field(default_factory=dict)


def read_declarations(selection: Selection) -> Declarations:
    """The query declarations of the services that serve `selection`'s models."""
    hook = bus_settings.raw("ROOT_HANDLERS_HOOK")
    if not hook:
        return Declarations(
            note=NO_QUERY_FIELDS + "MESSAGE_BUS['ROOT_HANDLERS_HOOK'] is not set, and they are "
            "read from the services its handler registers."
        )
    try:
        services = registered_services(hook)
    except Exception as exc:  # the project's code may raise anything while it is imported
        if not _handler_module_missing(hook, exc):
            # Going on would drop every action, filter and declared field from the files, and
            # their numbers would change when they came back: stop, write nothing.
            raise DeclarationsUnreadable(
                f"ROOT_HANDLERS_HOOK {hook!r} cannot be imported ({_one_line(exc)}). Nothing "
                "was written: the actions, filters and declared fields of its services are read "
                "from it, and generating without them would retire their field numbers. Fix "
                "the error and run the command again."
            ) from exc
        return Declarations(
            note=NO_QUERY_FIELDS + f"ROOT_HANDLERS_HOOK {hook!r} cannot be imported "
            f"({_one_line(exc)}), and they are read from the services its handler registers."
        )
    selected = {selected.model for selected in selection}
    queries: dict[type[models.Model], ListQuery] = {}
    actions: dict[type[models.Model], ModelActions] = {}
    for service_class in services:
        model = generated_service_model(service_class)
        if model is None or model not in selected:
            continue
        _add_actions(actions, service_class, model)
        query = list_query(service_class, model)
        if query is None:
            continue
        earlier = queries.setdefault(model, query)
        if earlier is not query and earlier != query:
            raise QueryDeclarationError(
                f"{earlier.service} and {query.service} both serve {model._meta.label} with "
                "different filters, ordering or search, but share one proto service. Register "
                "one of them only, or declare the same on both."
            )
    return Declarations(queries, actions=actions)


def _add_actions(
    found: dict[type[models.Model], ModelActions], service_class: type, model: type[models.Model]
) -> None:
    """Record `service_class`'s ``@grpc_action`` methods; two services of one model may not
    declare one action differently (they share the model's proto service)."""
    declared = tuple(service_actions(service_class))
    if not declared:
        return
    path = f"{service_class.__module__}.{service_class.__qualname__}"
    earlier = found.get(model)
    if earlier is None:
        found[model] = ModelActions(path, declared)
        return
    merged = {spec.method: spec for spec in earlier.actions}
    for spec in declared:
        if merged.setdefault(spec.method, spec) != spec:
            raise ActionDeclarationError(
                f"{earlier.service} and {path} both declare the action {spec.method} of "
                f"{model._meta.label} differently, but share one proto service. Declare it on "
                "one of them only."
            )
    found[model] = ModelActions(earlier.service, tuple(merged.values()))


class DeclarationsUnreadable(ImproperlyConfigured):
    """The handler module exists but cannot be imported: generation must not go on without it."""


def _handler_module_missing(hook: Any, exc: BaseException) -> bool:
    """Whether `exc` says the hook's own module does not exist yet (before ``generateservices
    --handler`` wrote it): the one import failure generation goes on after, with a note."""
    if not isinstance(hook, str) or not isinstance(exc, ModuleNotFoundError) or not exc.name:
        return False
    module = hook.rpartition(".")[0]
    return module == exc.name or module.startswith(exc.name + ".")


def registered_services(hook: Any) -> list[type]:
    """The service classes registered on the handler `hook` names (or is)."""
    if isinstance(hook, str):
        package = f"{naming.producer_package()}.{naming.GRPC_PACKAGE}"
        with placeholder_imports(package):
            handler = import_string(hook)
    else:
        handler = hook
    services = getattr(handler, "services", None)
    if services is None:
        raise TypeError(
            f"{type(handler).__name__} has no `services` (django_grpc_bus.handlers.BasicHandler "
            "has)"
        )
    return [service for service in services if isinstance(service, type)]


def generated_service_model(service_class: type) -> type[models.Model] | None:
    """The model whose generated proto service `service_class` serves, read from its attributes
    (``queryset``, else ``serializer_class.Meta.model``); None for a hand-written proto's."""
    if getattr(service_class, "grpc_module", None) or getattr(service_class, "proto_service", None):
        return None
    queryset = getattr(service_class, "queryset", None)
    model = getattr(queryset, "model", None)
    if model is None:
        meta = getattr(getattr(service_class, "serializer_class", None), "Meta", None)
        model = getattr(meta, "model", None)
    return model if isinstance(model, type) and issubclass(model, models.Model) else None


def _one_line(exc: BaseException) -> str:
    """``NameError: name 'x' is not defined, at catalog/services.py:12``: the error and the
    innermost line of the project's own code it passed through."""
    text = f"{type(exc).__name__}: {' '.join(str(exc).split())}".rstrip(": ")
    base = base_dir()
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        path = Path(frame.filename)
        if path.is_absolute() and path.is_relative_to(base) and not is_library_path(path):
            return f"{text}, at {path.relative_to(base)}:{frame.lineno}"
    return text
