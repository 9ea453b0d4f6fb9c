"""``MESSAGE_BUS['ROOT_HANDLERS_HOOK']`` -> the handler it names, or a sentence saying why not.

One validator for the system checks (``manage.py check``: W001, E010) and for
``rungrpcserver``, which cannot serve without a handler. It imports the user's handler module
but nothing of the package's serving side, so the checks stay cheap to import.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from django_grpc_bus.conf import bus_settings

SETTING = "MESSAGE_BUS['ROOT_HANDLERS_HOOK']"


class HandlerHookError(ImproperlyConfigured):
    """The hook names no handler; ``hint`` says what to do.

    ``not_generated_yet`` is set when the import failed on code that the generation commands
    write (the handler module itself, or the compiled package): a warning while a project is
    being set up, an error only when the server must start.
    """

    def __init__(self, message: str, hint: str, *, not_generated_yet: bool = False) -> None:
        super().__init__(f"{message} {hint}")
        self.message = message
        self.hint = hint
        self.not_generated_yet = not_generated_yet


def load_handler_hook(*, required: bool = False) -> Any:
    """The handler object ``ROOT_HANDLERS_HOOK`` names, imported; None when it is not set.

    Raises :class:`HandlerHookError` when it cannot be imported or is not a handler (an
    object with ``bind_to_server``), and, with `required`, when it is not set.
    """
    hook = bus_settings.raw("ROOT_HANDLERS_HOOK")
    if hook is None:
        if not required:
            return None
        raise HandlerHookError(
            f"{SETTING} is not set: name the handler to serve, e.g. 'handlers.handler'.",
            "`manage.py generateservices --handler` writes one.",
        )
    handler = _import(hook) if isinstance(hook, str) else hook
    if not hasattr(handler, "bind_to_server"):
        shown = f" = {hook!r}" if isinstance(hook, str) else ""
        raise HandlerHookError(
            f"{SETTING}{shown} is a {type(handler).__name__}, not a handler.",
            "Give a dotted path such as 'handlers.handler', or a "
            "django_grpc_bus.handlers.BasicHandler().",
        )
    return handler


def _import(hook: str) -> Any:
    try:
        return import_string(hook)
    except ImportError as exc:  # ModuleNotFoundError, or a name missing from a module
        missing = exc.name or ""
        not_generated_yet = _is_within(hook.rpartition(".")[0], missing) or _is_within(
            _producer_package_or_none() or "", missing
        )
        if not not_generated_yet:
            why = f"it imports {missing!r}, which is not installed" if missing else str(exc)
            raise HandlerHookError(
                f"{SETTING} = {hook!r} cannot be imported: {why}.",
                "Install the missing package or fix the import in your handler module.",
            ) from None
        raise HandlerHookError(
            f"{SETTING} = {hook!r} cannot be imported yet: {exc}.",
            "Generate it with `manage.py generategrpc` and "
            "`manage.py generateservices --handler`, or fix the dotted path.",
            not_generated_yet=True,
        ) from None
    except Exception as exc:  # any error raised while importing the user's module
        raise HandlerHookError(
            f"{SETTING} = {hook!r} cannot be imported: {type(exc).__name__}: {exc}",
            "It must be a dotted path to a handler object, e.g. 'handlers.handler'.",
        ) from None


def _is_within(module: str, missing: str) -> bool:
    """Whether `missing` is `module` or one of its parent packages (or a child of it)."""
    if not module or not missing:
        return False
    return module == missing or module.startswith(missing + ".") or missing.startswith(module + ".")


def _producer_package_or_none() -> str | None:
    from django_grpc_bus.protogen.naming import producer_package

    try:
        return producer_package()
    except ImproperlyConfigured:
        return None
