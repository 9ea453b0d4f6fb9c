"""``service_meta.yaml``: which apps, models and fields the project exposes over gRPC.

:func:`load_selection` reads the file named by ``MESSAGE_BUS['SERVICE_META']`` (or, without one,
takes every model of the project's own apps) and resolves it to a :class:`Selection` of models
and their fields. Every mistake is a :class:`ServiceMetaError` naming the YAML entry at fault.
"""

from __future__ import annotations

import sysconfig
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from django.apps import AppConfig, apps
from django.core.exceptions import ImproperlyConfigured
from django.db import models
from django.db.models import Model

from django_grpc_bus.conf import bus_settings

# resolve_meta's fail(where, problem): the error naming the YAML entry at fault.
Fail = Callable[[str, str], "ServiceMetaError"]

APP_KEYS = frozenset({"name", "models"})
MODEL_KEYS = frozenset({"name", "fields", "exclude", "watch"})
TOP_KEYS = frozenset({"apps", "watch"})


class ServiceMetaError(ImproperlyConfigured):
    """``service_meta.yaml`` is missing, unreadable, malformed, or names something unknown.

    The checks report it as E009; a command reports it as a ``CommandError`` with its text.
    """


@dataclass(frozen=True)
class ModelSelection:
    """One exposed model and the fields of it that go into its message, in model order."""

    model: type[models.Model]
    fields: tuple[models.Field, ...]
    # `watch: true` (on the model, or at the top level): its service gets Watch (SPEC §11).
    watch: bool = False

    def __post_init__(self) -> None:
        # Names become file names, proto symbols and Python identifiers.
        name = self.model.__name__
        label = self.model._meta.app_label
        if not (name.isidentifier() and label.isidentifier()):
            raise ServiceMetaError(
                f"Model {label}.{name!r} cannot be exposed: app labels and model class names "
                "must be Python identifiers (they become file, proto and module names)."
            )

    @property
    def app_label(self) -> str:
        return self.model._meta.app_label

    @property
    def name(self) -> str:
        return self.model.__name__

    @property
    def label(self) -> str:
        return f"{self.app_label}.{self.name}"


@dataclass(frozen=True)
class Selection:
    """Every exposed model, ordered by app label then model name (so output is deterministic)."""

    models: tuple[ModelSelection, ...]

    def __iter__(self) -> Iterator[ModelSelection]:
        return iter(self.models)

    def __len__(self) -> int:
        return len(self.models)

    # (`models` here is the field above, not django.db.models.)
    def get(self, model: type[Model]) -> ModelSelection | None:
        for selected in self.models:
            if selected.model is model:
                return selected
        return None


# -- which apps are "the project's own" ----------------------------------------------------------


def _library_roots() -> tuple[Path, ...]:
    roots = {sysconfig.get_paths()[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")}
    return tuple(Path(root).resolve() for root in roots if root)


def is_library_path(location: str | Path) -> bool:
    """Whether a file or folder belongs to Python itself or to an installed package."""
    path = Path(location).resolve()
    if {"site-packages", "dist-packages"} & set(path.parts):
        return True
    return any(path.is_relative_to(root) for root in _library_roots())


def is_project_app(app_config: AppConfig) -> bool:
    """Apps written for this project: not Django's own, not ours, not installed packages."""
    name = app_config.name
    if name in ("django", "django_grpc_bus") or name.startswith(("django.", "django_grpc_bus.")):
        return False
    return not is_library_path(app_config.path)


def project_app_configs() -> list[AppConfig]:
    return [config for config in apps.get_app_configs() if is_project_app(config)]


def exposable_models(app_config: AppConfig) -> list[type[models.Model]]:
    """The models an app entry without ``models`` selects: concrete, not proxy, not swapped."""
    found = [
        model
        for model in app_config.get_models()
        if not model._meta.proxy and not model._meta.swapped
    ]
    return sorted(found, key=lambda model: model.__name__)


def primary_key_fields(model: type[models.Model]) -> list[models.Field]:
    """The column(s) of the primary key: one, or several for a ``CompositePrimaryKey``."""
    return list(getattr(model._meta, "pk_fields", None) or [model._meta.pk])


def selectable_fields(model: type[models.Model]) -> list[models.Field]:
    """Fields stored on the model (columns and many-to-many), in declaration order."""
    opts = model._meta
    return [*opts.concrete_fields, *opts.many_to_many]


# -- the default YAML ----------------------------------------------------------------------------


def default_meta(app_labels: Sequence[str] | None = None) -> dict[str, Any]:
    """The YAML document selecting every model of the given apps (default: the project's)."""
    if app_labels:
        configs = []
        for label in app_labels:
            try:
                configs.append(apps.get_app_config(label))
            except LookupError:
                raise ServiceMetaError(
                    f"No installed app with label {label!r}. "
                    f"Project apps: {_names(c.label for c in project_app_configs())}."
                ) from None
    else:
        configs = project_app_configs()
    return {
        "apps": [
            {
                "name": config.label,
                "models": [{"name": model.__name__} for model in exposable_models(config)],
            }
            for config in configs
            if exposable_models(config)
        ]
    }


def dump_meta(document: dict[str, Any]) -> str:
    header = (
        "# Which apps, models and fields django-grpc-bus exposes. Per model, either\n"
        "# `fields: [a, b]` (only these; the primary key is always kept) or `exclude: [c]`.\n"
        "# An app without `models` exposes every model it has.\n"
    )
    return header + yaml.safe_dump(document, sort_keys=False, default_flow_style=False)


# -- reading and resolving -----------------------------------------------------------------------


def read_meta_file(path: Path) -> Any:
    """Safe-load the YAML at `path`; a missing or invalid file is a ServiceMetaError."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ServiceMetaError(
            f"MESSAGE_BUS['SERVICE_META'] points to {path}, which does not exist. "
            f"Create it with `manage.py generatemetayaml --file {path}`, or remove the "
            "setting to expose every project app."
        ) from None
    except OSError as exc:
        raise ServiceMetaError(f"Cannot read SERVICE_META file {path}: {exc}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ServiceMetaError(f"SERVICE_META file {path} is not valid YAML: {exc}") from None


def load_selection(meta_path: Path | None = None) -> Selection:
    """Resolve the configured (or given) ``service_meta.yaml`` to a :class:`Selection`."""
    path = meta_path if meta_path is not None else bus_settings.SERVICE_META
    if path is None:
        return resolve_meta(default_meta(), source="the default selection (all project apps)")
    return resolve_meta(read_meta_file(Path(path)), source=str(path))


def resolve_meta(document: Any, source: str = "service_meta.yaml") -> Selection:
    """Validate a parsed YAML document and resolve it to models and fields."""

    def fail(where: str, problem: str) -> ServiceMetaError:
        return ServiceMetaError(f"{source}: {where}: {problem}")

    if not isinstance(document, dict) or "apps" not in document:
        raise fail("top level", "expected a mapping with an `apps:` list")
    extra = set(document) - TOP_KEYS
    if extra:
        raise fail("top level", f"unknown key(s) {_names(extra)}; allowed: {_names(TOP_KEYS)}")
    watch = _watch_flag(document, False, fail, "top level")
    entries = document["apps"]
    if not isinstance(entries, list) or not entries:
        raise fail("apps", "expected a non-empty list of apps")

    selected: list[ModelSelection] = []
    seen_apps: set[str] = set()
    for index, entry in enumerate(entries):
        where = f"apps[{index}]"
        if isinstance(entry, str):
            entry = {"name": entry}
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise fail(where, "expected a mapping with a `name:` (an app label)")
        label = entry["name"]
        where = f"apps[{index}] ({label})"
        _reject_unknown_keys(entry, APP_KEYS, fail, where)
        if label in seen_apps:
            raise fail(where, "this app is listed twice")
        seen_apps.add(label)
        try:
            app_config = apps.get_app_config(label)
        except LookupError:
            raise fail(
                where,
                "no installed app has this label. "
                f"Project apps: {_names(c.label for c in project_app_configs())}",
            ) from None
        selected.extend(_resolve_models(app_config, entry.get("models"), fail, where, watch))
    selected.sort(key=lambda s: (s.app_label, s.name))
    return Selection(tuple(selected))


def _watch_flag(entry: dict[str, Any], default: bool, fail: Fail, where: str) -> bool:
    value = entry.get("watch", default)
    if not isinstance(value, bool):
        raise fail(f"{where}.watch", f"expected true or false, got {value!r}")
    return value


def _resolve_models(
    app_config: AppConfig, model_entries: Any, fail: Fail, app_where: str, watch: bool = False
) -> list[ModelSelection]:
    if model_entries is None:
        models_ = exposable_models(app_config)
        return [ModelSelection(model, tuple(selectable_fields(model)), watch) for model in models_]
    if not isinstance(model_entries, list) or not model_entries:
        raise fail(f"{app_where}.models", "expected a non-empty list of models")
    by_name = {model.__name__.lower(): model for model in app_config.get_models()}
    result: list[ModelSelection] = []
    for index, entry in enumerate(model_entries):
        where = f"{app_where}.models[{index}]"
        if isinstance(entry, str):
            entry = {"name": entry}
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise fail(where, "expected a mapping with a `name:` (a model name)")
        where = f"{where} ({entry['name']})"
        _reject_unknown_keys(entry, MODEL_KEYS, fail, where)
        model = by_name.get(entry["name"].lower())
        if model is None:
            available = _names(m.__name__ for m in exposable_models(app_config))
            raise fail(where, f"app {app_config.label!r} has no such model. Models: {available}")
        if any(s.model is model for s in result):
            raise fail(where, "this model is listed twice")
        fields = _resolve_fields(model, entry, fail, where)
        result.append(ModelSelection(model, fields, _watch_flag(entry, watch, fail, where)))
    return result


def _resolve_fields(
    model: type[Model], entry: dict[str, Any], fail: Fail, where: str
) -> tuple[models.Field, ...]:
    all_fields = selectable_fields(model)
    if "fields" in entry and "exclude" in entry:
        raise fail(where, "use either `fields` or `exclude`, not both")
    key = "fields" if "fields" in entry else "exclude" if "exclude" in entry else None
    if key is None:
        return tuple(all_fields)
    names = entry[key]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise fail(f"{where}.{key}", "expected a list of field names")
    by_name: dict[str, models.Field] = {}
    for field in all_fields:
        by_name[field.name] = field
        by_name.setdefault(field.attname, field)
    chosen: set[models.Field] = set()
    for name in names:
        named = by_name.get(name)
        if named is None:
            raise fail(f"{where}.{key}", _unknown_field(model, name, all_fields))
        if named in chosen:
            raise fail(f"{where}.{key}", f"field {name!r} is listed twice")
        chosen.add(named)
    pk_fields = primary_key_fields(model)
    if key == "exclude":
        for field in pk_fields:
            if field in chosen:
                raise fail(
                    f"{where}.exclude", f"{field.name!r} is the primary key and cannot be excluded"
                )
        return tuple(f for f in all_fields if f not in chosen)
    return tuple(f for f in all_fields if f in chosen or f in pk_fields)


def _unknown_field(model: type[Model], name: str, all_fields: list[models.Field]) -> str:
    label = f"{model._meta.app_label}.{model.__name__}"
    try:
        other = model._meta.get_field(name)
    except Exception:
        other = None
    if other is not None:
        return (
            f"{label}.{name} is not stored on the model (a reverse or generic relation); "
            "only fields with a column or many-to-many can be selected. "
            f"Its fields: {_names(f.name for f in all_fields)}"
        )
    return f"{label} has no field {name!r}. Its fields: {_names(f.name for f in all_fields)}"


def _reject_unknown_keys(
    entry: dict[str, Any], allowed: frozenset[str], fail: Fail, where: str
) -> None:
    extra = set(entry) - allowed
    if extra:
        raise fail(where, f"unknown key(s) {_names(extra)}; allowed: {_names(allowed)}")


def _names(items: Iterable[Any]) -> str:
    items = sorted(str(item) for item in items)
    return ", ".join(items) if items else "(none)"
