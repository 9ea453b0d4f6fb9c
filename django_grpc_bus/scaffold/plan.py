"""What gets generated: the selected apps and models, the handler module, all inside BASE_DIR."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.apps import AppConfig, apps
from django.core.exceptions import ImproperlyConfigured

from django_grpc_bus.conf import OutsideBaseDir, base_dir, inside_base_dir
from django_grpc_bus.identifiers import is_python_name
from django_grpc_bus.meta import ModelSelection, Selection, is_project_app
from django_grpc_bus.protogen import naming
from django_grpc_bus.scaffold.report import ScaffoldError
from django_grpc_bus.scaffold.source_format import from_import, module_key

SERIALIZERS = "serializers.py"
SERVICES = "services.py"
DEFAULT_HOOK = "handlers.handler"


@dataclass(frozen=True)
class ModelScaffold:
    """The names one model contributes to the templates."""

    name: str
    proto_package: str  # generated_grpc.grpc
    proto_module: str  # Book_pb2, or catalog_Book_pb2 when the class name is not unique

    @property
    def serializer_name(self) -> str:
        return f"{self.name}Serializer"

    @property
    def service_name(self) -> str:
        return f"{self.name}Service"

    @property
    def message_name(self) -> str:
        return f"{self.name}Data"


@dataclass(frozen=True)
class AppScaffold:
    """One app: where its files go and the models they cover."""

    config: AppConfig
    folder: Path
    models: tuple[ModelScaffold, ...]

    @property
    def label(self) -> str:
        return self.config.label

    @property
    def module(self) -> str:
        return self.config.name

    def service_path(self, model: ModelScaffold) -> str:
        return f"{self.module}.services.{model.service_name}"

    def context(self) -> dict[str, Any]:
        """Template variables; `project_imports` are the app's and the generated modules'
        import lines, ordered as ruff (run from BASE_DIR, where both are first-party) wants."""
        pb2_modules: dict[str, list[str]] = {}
        for model in self.models:
            pb2_modules.setdefault(model.proto_package, []).append(model.proto_module)
        imports = {self.module: ["models"], **pb2_modules}
        project_imports = "\n".join(
            from_import(module, names)
            for module, names in sorted(imports.items(), key=lambda item: module_key(item[0]))
        )
        return {
            "app_label": self.label,
            "app_module": self.module,
            "models": self.models,
            "project_imports": project_imports,
        }


@dataclass(frozen=True)
class HandlerTarget:
    """The module ROOT_HANDLERS_HOOK points to, as a file under BASE_DIR."""

    path: Path
    module: str
    name: str  # the handler object's name in the module

    @property
    def package(self) -> str:
        """The package relative imports in the module start from."""
        if self.path.name == "__init__.py":
            return self.module
        return self.module.rpartition(".")[0]


# -- selection and safe paths --------------------------------------------------------------------


def ensure_inside_base(path: Path, what: str) -> Path:
    """Return `path` with symlinks resolved, or refuse it when that is outside BASE_DIR."""
    try:
        return inside_base_dir(path, what)
    except OutsideBaseDir as exc:
        raise ScaffoldError(str(exc)) from None


def relative_to_base(path: Path) -> str:
    return path.relative_to(base_dir()).as_posix()


def group_by_app(
    selection: Selection, labels: Sequence[str] = ()
) -> list[tuple[AppConfig, list[ModelSelection]]]:
    """The selected models per app, restricted to `labels` when given (unknown labels refused)."""
    grouped: dict[str, list[ModelSelection]] = {}
    for selected in selection:
        grouped.setdefault(selected.app_label, []).append(selected)
    unknown = [label for label in labels if label not in grouped]
    if unknown:
        raise ScaffoldError(
            f"App(s) {', '.join(unknown)} are not in the selection. "
            f"Selected apps: {', '.join(grouped) or '(none)'}."
        )
    chosen = [label for label in grouped if not labels or label in labels]
    return [(apps.get_app_config(label), grouped[label]) for label in chosen]


def app_folder(config: AppConfig) -> Path:
    """The app's folder, refused when it is an installed package or outside BASE_DIR."""
    what = f"App {config.label!r} ({config.name})"
    folder = ensure_inside_base(Path(config.path), f"The folder of {what}")
    if not is_project_app(config):
        raise ScaffoldError(
            f"{what} lives in {folder}, an installed package, not part of the project; "
            "generateservices writes only into the project's own apps."
        )
    return folder


def plan_apps(selection: Selection, labels: Sequence[str] = ()) -> list[AppScaffold]:
    """Check every app and target file before anything is written."""
    plans = []
    for config, selected in group_by_app(selection, labels):
        folder = app_folder(config)
        for filename in (SERIALIZERS, SERVICES):
            ensure_inside_base(folder / filename, f"{config.label}/{filename}")
        plans.append(AppScaffold(config, folder, tuple(model_scaffold(s) for s in selected)))
    return plans


def model_scaffold(selected: ModelSelection) -> ModelScaffold:
    package, _, module = naming.python_module(selected.model).rpartition(".")
    return ModelScaffold(
        name=selected.name,
        proto_package=package,
        proto_module=module,
    )


def handler_target(hook: Any) -> HandlerTarget:
    """The file under BASE_DIR that ROOT_HANDLERS_HOOK (default ``handlers.handler``) names."""
    dotted = DEFAULT_HOOK if hook is None else hook
    parts = dotted.split(".") if isinstance(dotted, str) else []
    if len(parts) < 2 or not all(map(is_python_name, parts)):
        raise ScaffoldError(
            f"MESSAGE_BUS['ROOT_HANDLERS_HOOK'] = {hook!r} is not a dotted path to a handler "
            "object inside the project, such as 'handlers.handler' or 'config.grpc.handler'."
        )
    *module_parts, name = parts
    try:
        naming.refuse_shadowing(module_parts[0], f"MESSAGE_BUS['ROOT_HANDLERS_HOOK'] = {dotted!r}")
    except ImproperlyConfigured as exc:
        raise ScaffoldError(str(exc)) from None
    package_dir = base_dir().joinpath(*module_parts)
    if (package_dir / "__init__.py").is_file():
        path = package_dir / "__init__.py"
    else:
        path = package_dir.parent / f"{module_parts[-1]}.py"
    path = ensure_inside_base(path, f"The module of ROOT_HANDLERS_HOOK {dotted!r}")
    return HandlerTarget(path, ".".join(module_parts), name)
