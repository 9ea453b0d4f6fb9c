"""System checks for ``MESSAGE_BUS`` (``manage.py check``): each message names the key and the fix.

Configuration checks carry the tag ``grpc_bus``; the check that imports ROOT_HANDLERS_HOOK
carries ``grpc_bus_server``, so generation commands can run before the handlers exist.
"""

from __future__ import annotations

import difflib
import os
import sys
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning, register
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from django_grpc_bus.conf import (
    DEFAULTS,
    EXPECTED_TYPES,
    IMPORT_STRINGS,
    PATH_SETTINGS,
    bus_settings,
)
from django_grpc_bus.handler_hook import HandlerHookError, load_handler_hook
from django_grpc_bus.transport import pem_file_problem

CONFIG_TAG = "grpc_bus"
SERVER_TAG = "grpc_bus_server"
SETTING = "MESSAGE_BUS"


def _type_names(types: tuple[type | None, ...]) -> str:
    return " or ".join("None" if t is None else t.__name__ for t in types)


@register(CONFIG_TAG)
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    user = getattr(settings, SETTING, None)
    if user is None:
        return []
    if not isinstance(user, dict):
        return [
            Error(
                f"{SETTING} must be a dict, not {type(user).__name__}.",
                hint="Write MESSAGE_BUS = {'PRODUCER_ROOT': 'generated_grpc', ...}.",
                id="django_grpc_bus.E001",
            )
        ]
    errors: list[CheckMessage] = []
    invalid: set[str] = set()
    for key, value in user.items():
        if key not in DEFAULTS:
            close = difflib.get_close_matches(str(key), list(DEFAULTS), n=1)
            errors.append(
                Error(
                    f"{SETTING}[{key!r}] is not a setting of django_grpc_bus.",
                    hint=f"Did you mean {close[0]!r}?"
                    if close
                    else f"Known keys: {', '.join(sorted(DEFAULTS))}.",
                    id="django_grpc_bus.E002",
                )
            )
            continue
        allowed = EXPECTED_TYPES[key]
        if not (value is None and None in allowed) and not isinstance(
            value, tuple(t for t in allowed if t is not None)
        ):
            invalid.add(key)
            errors.append(
                Error(
                    f"{SETTING}[{key!r}] must be {_type_names(allowed)}, "
                    f"not {type(value).__name__} ({value!r}).",
                    hint=f"Leave {key!r} out for its default, {DEFAULTS[key]!r}.",
                    id="django_grpc_bus.E003",
                )
            )
    if "SERVLETS" not in invalid:
        errors += _check_servlets(user.get("SERVLETS", {}))
    if "WATCH_RECONNECT" in user and "WATCH_RECONNECT" not in invalid:
        errors += _check_watch_reconnect(user["WATCH_RECONNECT"])
    if not invalid & PATH_SETTINGS:
        errors += _check_paths()
    errors += _check_server_settings(user, invalid)
    if "WATCH_RETENTION" in user and "WATCH_RETENTION" not in invalid:
        errors += _check_watch_retention(user["WATCH_RETENTION"])
    if "WATCH_BACKEND" in user and "WATCH_BACKEND" not in invalid:
        errors += _check_watch_backend(user["WATCH_BACKEND"])
    return errors


def _check_watch_backend(value: Any) -> list[CheckMessage]:
    from django_grpc_bus.watch.nats.backend import problem as backend_problem

    problem = backend_problem(value)
    if problem is None:
        return []
    return [
        Error(
            f"{SETTING}['WATCH_BACKEND'] {problem}.",
            hint='Write "database" (the default), "nats://127.0.0.1:4222", or {"url": '
            '"nats://...", "stream": "GRPC_BUS", "subject_prefix": "grpcbus"}.',
            id="django_grpc_bus.E037",
        )
    ]


def _check_watch_retention(value: Any) -> list[CheckMessage]:
    from django_grpc_bus.watch.settings import retention_problem

    problem = retention_problem(value)
    if problem is None:
        return []
    return [
        Error(
            f"{SETTING}['WATCH_RETENTION'] {problem}.",
            hint="Write datetime.timedelta(days=7), or a number of seconds above 0.",
            id="django_grpc_bus.E030",
        )
    ]


# key -> smallest allowed value (None allowed where the default is None)
MINIMUMS = {
    "LIST_BATCH_SIZE": 1,
    "MAX_WORKERS": 1,
    "GRACE_PERIOD": 0,
    "MAX_MESSAGE_SIZE": 1,
    "MAX_CONCURRENT_RPCS": 1,
    "SERVICE_TIMEOUT": 0.001,  # above 0: a deadline of 0 fails every call
    "WATCH_BOOKMARK_INTERVAL": 0.05,  # seconds
}
TLS_KEYS = frozenset({"CERTIFICATE", "PRIVATE_KEY", "CLIENT_CA"})


def _check_server_settings(user: dict[str, Any], invalid: set[str]) -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    for key, minimum in MINIMUMS.items():
        value = user.get(key)
        if key in invalid or value is None:
            continue
        if isinstance(value, bool) or value < minimum:
            errors.append(
                Error(
                    f"{SETTING}[{key!r}] must be a number of at least {minimum}, not {value!r}.",
                    id="django_grpc_bus.E011",
                )
            )
    for key in sorted(IMPORT_STRINGS - {"ROOT_HANDLERS_HOOK"} - invalid):
        for item in user.get(key, []):
            if isinstance(item, str):
                try:
                    import_string(item)
                except ImportError as exc:
                    errors.append(
                        Error(
                            f"{SETTING}[{key!r}] item {item!r} cannot be imported: {exc}",
                            hint="Give dotted paths to importable classes (or the objects).",
                            id="django_grpc_bus.E012",
                        )
                    )
    if user.get("ASYNCIO") is True and "INTERCEPTORS" not in invalid:
        errors += _check_aio_interceptors(user.get("INTERCEPTORS", []))
    if "SERVER_OPTIONS" not in invalid:
        for item in user.get("SERVER_OPTIONS", []):
            if not (
                isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], str)
            ):
                errors.append(
                    Error(
                        f"{SETTING}['SERVER_OPTIONS'] item {item!r} is not a (name, value) pair.",
                        hint="Write e.g. [('grpc.keepalive_time_ms', 30000)].",
                        id="django_grpc_bus.E013",
                    )
                )
    tls = user.get("TLS")
    if "TLS" not in invalid and tls:
        errors += _check_tls(tls)
    return errors


def _check_aio_interceptors(items: Any) -> list[CheckMessage]:
    """With ASYNCIO, every INTERCEPTORS item must be a grpc.aio.ServerInterceptor."""
    import grpc

    errors: list[CheckMessage] = []
    for item in items:
        try:
            value = import_string(item) if isinstance(item, str) else item
        except ImportError:
            continue  # E012 says so
        kind = value if isinstance(value, type) else type(value)
        if not issubclass(kind, grpc.aio.ServerInterceptor):
            errors.append(
                Error(
                    f"{SETTING}['INTERCEPTORS'] item {item!r} is not a "
                    "grpc.aio.ServerInterceptor, and ASYNCIO is True: the asyncio server "
                    "takes only those.",
                    hint="Give an asyncio version of the interceptor (async def "
                    "intercept_service), or leave ASYNCIO False.",
                    id="django_grpc_bus.E019",
                )
            )
    return errors


def _check_tls(tls: dict[str, Any]) -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    for key in sorted(set(tls) - TLS_KEYS, key=str):
        errors.append(
            Error(
                f"{SETTING}['TLS'][{key!r}] is not a TLS setting.",
                hint=f"TLS keys: {', '.join(sorted(TLS_KEYS))}.",
                id="django_grpc_bus.E014",
            )
        )
    for key in ("CERTIFICATE", "PRIVATE_KEY"):
        if not tls.get(key):
            errors.append(
                Error(
                    f"{SETTING}['TLS'] has no {key!r}.",
                    hint="TLS needs CERTIFICATE and PRIVATE_KEY (PEM files); CLIENT_CA adds mTLS.",
                    id="django_grpc_bus.E014",
                )
            )
    known = {key: tls[key] for key in TLS_KEYS & set(tls)}
    errors += _pem_file_errors(f"{SETTING}['TLS']", known, "django_grpc_bus.E014")
    return errors


def _pem_file_errors(where: str, paths: dict[str, Any], check_id: str) -> list[CheckMessage]:
    """Each set value of `paths` must be a path (str or Path) to an existing file."""
    errors: list[CheckMessage] = []
    for key, value in sorted(paths.items()):
        problem = pem_file_problem(value) if value else None
        if problem:
            errors.append(Error(f"{where}[{key!r}] {problem}", id=check_id))
    return errors


def _check_watch_reconnect(value: Any) -> list[CheckMessage]:
    """The client's watch backoff (client.watch.Reconnect)."""
    from django_grpc_bus.client.watch import reconnect_problem

    problem = reconnect_problem(value)
    if problem is None:
        return []
    return [
        Error(
            f"{SETTING}['WATCH_RECONNECT'] {problem}",
            hint="Write e.g. {'initial': 0.1, 'maximum': 10.0, 'multiplier': 2.0, "
            "'jitter': 0.5, 'attempts': None}.",
            id="django_grpc_bus.E035",
        )
    ]


def _check_servlets(servlets: dict[str, Any]) -> list[CheckMessage]:
    """The client's own SERVLETS schema (client.config), its problems under their ids."""
    from django_grpc_bus.client import config  # grpc loads only when the checks run

    ids = {
        config.NAME: (Warning, "django_grpc_bus.W002"),
        config.ENTRY: (Error, "django_grpc_bus.E004"),
        config.ADDRESS: (Error, "django_grpc_bus.E005"),
        config.SETTING: (Error, "django_grpc_bus.E015"),
        config.UNKNOWN_KEY: (Warning, "django_grpc_bus.W003"),
    }
    errors: list[CheckMessage] = []
    for name, entry in servlets.items():
        for problem in config.servlet_problems(name, entry):
            level, check_id = ids[problem.kind]
            errors.append(level(problem.message, hint=problem.hint, id=check_id))
    return errors


def _check_paths() -> list[CheckMessage]:
    from django_grpc_bus.meta import load_selection
    from django_grpc_bus.protogen.naming import producer_package

    if getattr(settings, "BASE_DIR", None) is None:
        return [
            Error(
                "settings.BASE_DIR is not set; MESSAGE_BUS paths are resolved against it.",
                hint="Add BASE_DIR = Path(__file__).resolve().parent.parent to your settings.",
                id="django_grpc_bus.E006",
            )
        ]
    errors: list[CheckMessage] = []
    try:
        producer_package()
    except ImproperlyConfigured as exc:
        errors.append(Error(str(exc), id="django_grpc_bus.E007"))
    for key in ("SERVICE_TEMPLATE", "HANDLER_TEMPLATE"):
        folder = getattr(bus_settings, key)
        if folder is not None and not folder.is_dir():
            errors.append(
                Error(
                    f"{SETTING}[{key!r}] is {folder}, which is not a folder.",
                    hint="Point it at a folder of templates, or remove it for the built-in ones.",
                    id="django_grpc_bus.E008",
                )
            )
    meta = bus_settings.SERVICE_META
    if meta is not None and not meta.exists():
        # The seed sets the path first and generates the file next: not an error yet.
        errors.append(
            Warning(
                f"{SETTING}['SERVICE_META'] points to {meta}, which does not exist yet.",
                hint=f"Create it with `manage.py generatemetayaml --file {meta}`.",
                id="django_grpc_bus.W004",
            )
        )
    elif meta is not None:
        try:
            load_selection()
        except ImproperlyConfigured as exc:
            errors.append(
                Error(
                    f"{SETTING}['SERVICE_META']: {exc}",
                    hint="Fix the file, or run `manage.py generatemetayaml --file PATH` for a "
                    "valid starting point.",
                    id="django_grpc_bus.E009",
                )
            )
    return errors


@register(SERVER_TAG)
def check_handlers_hook(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    try:
        handler = load_handler_hook()
    except HandlerHookError as exc:
        if exc.not_generated_yet:
            return [Warning(exc.message, hint=exc.hint, id="django_grpc_bus.W001")]
        return [Error(exc.message, hint=exc.hint, id="django_grpc_bus.E010")]
    return [] if handler is None else [*_serializer_errors(handler), *_watch_errors(handler)]


def _watch_errors(handler: Any) -> list[CheckMessage]:
    """Models marked ``watch: true`` whose served, compiled proto has no Watch yet: the server
    would start without it (``generategrpc`` alone compiles the .proto files on disk)."""
    from django_grpc_bus.watch.recording import watched_models

    watched = watched_models()
    errors: list[CheckMessage] = []
    for service in getattr(handler, "services", []):
        model = getattr(getattr(service, "queryset", None), "model", None)
        serializer_class = getattr(service, "serializer_class", None)
        if model not in watched or not callable(getattr(service, "watch", None)):
            continue
        try:
            proto_class = serializer_class.get_proto_class()  # type: ignore[union-attr]
        except Exception:  # E018 reports a serializer that cannot be built
            continue
        file = proto_class.DESCRIPTOR.file
        if any("Watch" in s.methods_by_name for s in file.services_by_name.values()):
            continue
        errors.append(
            Error(
                f"{model._meta.label} is marked `watch: true` in service_meta.yaml, but its "
                f"compiled module ({_module_file(proto_class)}) has no Watch RPC, so "
                f"{service.__qualname__} cannot serve it.",
                hint="Run `manage.py generateproto` and `manage.py generategrpc`.",
                obj=service,
                id="django_grpc_bus.E036",
            )
        )
    return errors


UNAPPLIED_MIGRATIONS = "django_grpc_bus.W005"


def unapplied_migrations() -> list[CheckMessage]:
    """W005 when a model is watched and django_grpc_bus's migrations are not all applied.

    Not a registered check: it reads the database, and `migrate`, which runs the checks, would
    print it just before applying them. rungrpcserver runs it at start.
    """
    from django.db import DatabaseError, connections, router
    from django.db.migrations.loader import MigrationLoader

    from django_grpc_bus.models import WatchEvent
    from django_grpc_bus.watch.recording import watched_models

    if not watched_models() or UNAPPLIED_MIGRATIONS in settings.SILENCED_SYSTEM_CHECKS:
        return []
    alias = router.db_for_write(WatchEvent)
    connection = connections[alias]
    was_open = connection.connection is not None
    try:
        loader = MigrationLoader(connection, ignore_no_migrations=True)
    except DatabaseError:  # unreachable: the calls will say so
        return []
    finally:
        if not was_open:
            # Not kept open by the thread that started the server (it serves no call): an
            # idle server holds no session.
            connection.close()
    missing = sorted(
        name
        for app, name in loader.disk_migrations
        if app == "django_grpc_bus" and (app, name) not in loader.applied_migrations
    )
    if not missing:
        return []
    labels = sorted(model._meta.label for model in watched_models())
    return [
        Warning(
            f"django_grpc_bus's migrations {', '.join(missing)} are not applied to database "
            f"{alias!r}, and {', '.join(labels)} "
            f"{'is' if len(labels) == 1 else 'are'} watched: every write to "
            f"{'it' if len(labels) == 1 else 'them'} fails (FAILED_PRECONDITION, its outbox "
            "table missing).",
            hint="Run `manage.py migrate`.",
            id=UNAPPLIED_MIGRATIONS,
        )
    ]


def _module_file(cls: type) -> str:
    """The file `cls` was loaded from, relative to the working directory when under it."""
    module = sys.modules.get(cls.__module__)
    path = getattr(module, "__file__", None)
    if not path:
        return cls.__module__
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def _serializer_errors(handler: Any) -> list[CheckMessage]:
    """Serializers of the served services whose fields and message fields do not match.

    Either mismatch loses data without a word: a message field the serializer lacks is dropped
    from requests (and missing from responses); a declared field the message lacks is never sent.
    """
    from django_grpc_bus.serializers import ProtoSerializerMixin  # loads DRF: only when serving

    errors: list[CheckMessage] = []
    seen: set[type] = set()
    for service in getattr(handler, "services", []):
        serializer_class = getattr(service, "serializer_class", None)
        if not (
            isinstance(serializer_class, type)
            and issubclass(serializer_class, ProtoSerializerMixin)
            and serializer_class not in seen
        ):
            continue
        seen.add(serializer_class)
        name = f"{serializer_class.__module__}.{serializer_class.__qualname__}"
        try:
            message = serializer_class.get_proto_class().DESCRIPTOR.full_name
            coverage = serializer_class.message_coverage()
        except Exception as exc:  # a serializer that cannot even be built: say so, by name
            errors.append(
                Error(
                    f"{name} (of {service.__qualname__}) cannot be built: "
                    f"{type(exc).__name__}: {exc}",
                    id="django_grpc_bus.E018",
                )
            )
            continue
        if coverage.unread:
            fields = ", ".join(repr(field) for field in coverage.unread)
            errors.append(
                Error(
                    f"{name} does not read {fields} of {message}: values sent for "
                    f"{'it' if len(coverage.unread) == 1 else 'them'} would be dropped and "
                    "responses would leave them unset.",
                    hint="Remove Meta.fields (the serializer then follows the message) or add "
                    f"{fields} to it; or leave {'it' if len(coverage.unread) == 1 else 'them'} "
                    "out of service_meta.yaml and run `manage.py generateproto` and "
                    "`manage.py generategrpc`.",
                    obj=serializer_class,
                    id="django_grpc_bus.E016",
                )
            )
        if coverage.uncarried:
            fields = ", ".join(repr(field) for field in coverage.uncarried)
            errors.append(
                Error(
                    f"{name} declares {fields}, which {message} has no field for: "
                    f"{'its' if len(coverage.uncarried) == 1 else 'their'} values would never "
                    "reach a client or come from one.",
                    hint="A generated message gains the fields its service's serializer "
                    "declares: run `manage.py generateproto` and `manage.py generategrpc`. "
                    "Give a message of your own a field of that name, or remove the field.",
                    obj=serializer_class,
                    id="django_grpc_bus.E017",
                )
            )
    return errors
