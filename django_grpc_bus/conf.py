"""The ``MESSAGE_BUS`` settings object, in the manner of DRF's ``api_settings``.

Values are read lazily from ``settings.MESSAGE_BUS``, import strings are imported on first
access, paths are resolved against ``BASE_DIR``, and everything is reloaded when a test
changes ``MESSAGE_BUS`` or ``BASE_DIR`` with ``override_settings``.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any, overload

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.utils.module_loading import import_string

DEFAULTS: dict[str, Any] = {
    "ROOT_HANDLERS_HOOK": None,
    "SERVICE_META": None,
    "PRODUCER_ROOT": "generated_grpc",
    "SERVICE_TEMPLATE": None,
    "HANDLER_TEMPLATE": None,
    "SERVLETS": {},
    "SERVICE_TIMEOUT": 10.0,
    "LIST_BATCH_SIZE": 100,
    "MAX_WORKERS": 10,
    "ASYNCIO": False,
    "GRACE_PERIOD": 10.0,
    "MAX_MESSAGE_SIZE": 4 * 1024 * 1024,
    "MAX_CONCURRENT_RPCS": None,
    "INTERCEPTORS": [],
    "CLIENT_INTERCEPTORS": [],
    "ACCESS_LOG": True,
    "SERVER_OPTIONS": [],
    "TLS": None,
    "DEFAULT_AUTHENTICATION_CLASSES": [],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.AllowAny"],
    "PROTECT_HEALTH_AND_REFLECTION": False,
    "WATCH_RECONNECT": {},
    "WATCH_RETENTION": datetime.timedelta(days=7),
    "WATCH_BOOKMARK_INTERVAL": 30.0,
    "WATCH_BACKEND": "database",
}

# The Python types each key accepts; `None` in a tuple means the key may be left unset.
PATH_TYPES = (str, Path)
EXPECTED_TYPES: dict[str, tuple[type | None, ...]] = {
    "ROOT_HANDLERS_HOOK": (object,),  # a dotted path, or the handler object itself
    "SERVICE_META": (*PATH_TYPES, None),
    "PRODUCER_ROOT": PATH_TYPES,
    "SERVICE_TEMPLATE": (*PATH_TYPES, None),
    "HANDLER_TEMPLATE": (*PATH_TYPES, None),
    "SERVLETS": (dict,),
    "SERVICE_TIMEOUT": (int, float, None),
    "LIST_BATCH_SIZE": (int,),
    "MAX_WORKERS": (int,),
    "ASYNCIO": (bool,),
    "GRACE_PERIOD": (int, float),
    "MAX_MESSAGE_SIZE": (int,),
    "MAX_CONCURRENT_RPCS": (int, None),
    "INTERCEPTORS": (list, tuple),
    "CLIENT_INTERCEPTORS": (list, tuple),
    "ACCESS_LOG": (bool,),
    "SERVER_OPTIONS": (list, tuple),
    "TLS": (dict, None),
    "DEFAULT_AUTHENTICATION_CLASSES": (list, tuple),
    "DEFAULT_PERMISSION_CLASSES": (list, tuple),
    "PROTECT_HEALTH_AND_REFLECTION": (bool,),
    "WATCH_RECONNECT": (dict,),
    "WATCH_RETENTION": (datetime.timedelta, int, float),
    "WATCH_BOOKMARK_INTERVAL": (int, float),
    "WATCH_BACKEND": (str, list, tuple, dict),
}

# Keys whose value is a dotted path, imported on first access.
IMPORT_STRINGS = frozenset(
    {
        "ROOT_HANDLERS_HOOK",
        "INTERCEPTORS",
        "CLIENT_INTERCEPTORS",
        "DEFAULT_AUTHENTICATION_CLASSES",
        "DEFAULT_PERMISSION_CLASSES",
    }
)

# Keys whose value is a filesystem path, resolved against BASE_DIR when relative.
PATH_SETTINGS = frozenset({"SERVICE_META", "PRODUCER_ROOT", "SERVICE_TEMPLATE", "HANDLER_TEMPLATE"})


def base_dir() -> Path:
    """Return ``settings.BASE_DIR`` as an absolute path, or raise naming the missing setting."""
    value = getattr(settings, "BASE_DIR", None)
    if value is None:
        raise ImproperlyConfigured(
            "django_grpc_bus resolves its paths against settings.BASE_DIR, which is not set. "
            "Add BASE_DIR = Path(__file__).resolve().parent.parent to your settings."
        )
    return Path(value).resolve()


@overload
def resolve_path(value: str | Path) -> Path: ...
@overload
def resolve_path(value: None) -> None: ...
def resolve_path(value: str | Path | None) -> Path | None:
    """Return `value` as an absolute path, relative paths taken from BASE_DIR (never the cwd)."""
    if value is None:
        return None
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = base_dir() / path
    return path.resolve()


class OutsideBaseDir(ImproperlyConfigured):
    """A path the package would write to resolves outside BASE_DIR."""


def inside_base_dir(path: Path, what: str) -> Path:
    """`path` with symlinks resolved; refused (OutsideBaseDir) when that is outside BASE_DIR.

    Every file the commands write goes through this, so no setting, YAML entry, app label or
    symlink can make them write elsewhere.
    """
    base = base_dir()
    resolved = Path(path).resolve()
    if not resolved.is_relative_to(base):
        shown = f"{path} (which resolves to {resolved})" if resolved != Path(path) else str(path)
        raise OutsideBaseDir(
            f"{what} is {shown}, outside BASE_DIR ({base}); django-grpc-bus writes only inside "
            "the project."
        )
    return resolved


def perform_import(value: Any, key: str) -> Any:
    """Import `value` when it is a dotted path (or each item of a list); others are unchanged."""
    if isinstance(value, (list, tuple)):
        return [perform_import(item, key) for item in value]
    if not isinstance(value, str):
        return value
    try:
        return import_string(value)
    except ImportError as exc:
        raise ImportError(f"MESSAGE_BUS['{key}'] = {value!r} could not be imported: {exc}") from exc


class BusSettings:
    """Lazy access to ``settings.MESSAGE_BUS`` with defaults, imports and path resolution.

    ``bus_settings.PRODUCER_ROOT`` is an absolute ``Path``; ``bus_settings.ROOT_HANDLERS_HOOK``
    is the imported handler object; ``bus_settings.raw('ROOT_HANDLERS_HOOK')`` is the string.
    """

    def __init__(self, defaults: dict[str, Any] | None = None) -> None:
        self.defaults = defaults or DEFAULTS
        self._cached: set[str] = set()

    @property
    def user_settings(self) -> dict[str, Any]:
        value = getattr(settings, "MESSAGE_BUS", None)
        return value if isinstance(value, dict) else {}

    def raw(self, key: str) -> Any:
        """The value as written in settings (or the default), neither imported nor resolved."""
        if key not in self.defaults:
            raise AttributeError(f"{key!r} is not a MESSAGE_BUS setting")
        return self.user_settings.get(key, self.defaults[key])

    def __getattr__(self, key: str) -> Any:
        if key.startswith("_") or key not in self.defaults:
            raise AttributeError(f"{key!r} is not a MESSAGE_BUS setting")
        value = self.raw(key)
        if key in IMPORT_STRINGS:
            value = perform_import(value, key)
        elif key in PATH_SETTINGS:
            value = resolve_path(value)
        self._cached.add(key)
        setattr(self, key, value)
        return value

    def reload(self) -> None:
        for key in self._cached:
            delattr(self, key)
        self._cached.clear()


bus_settings = BusSettings()


def reload_bus_settings(*, setting: str, **kwargs: Any) -> None:
    if setting in ("MESSAGE_BUS", "BASE_DIR"):
        bus_settings.reload()


setting_changed.connect(reload_bus_settings)
