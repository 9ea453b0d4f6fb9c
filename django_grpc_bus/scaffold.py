"""What ``manage.py generateservices`` writes: serializers, services and the handler module.

Each selected app gets a serializer and a service per selected model, rendered from Django
templates: the package's own, or the files of the same name in ``MESSAGE_BUS['SERVICE_TEMPLATE']``
and ``MESSAGE_BUS['HANDLER_TEMPLATE']``. The handler module named by ``ROOT_HANDLERS_HOOK``
registers every service.

A user's file is never overwritten silently: an existing file is skipped, overwritten, or
completed with only the definitions and imports it lacks (found with :mod:`ast`, so code the
user wrote is kept as written); registrations are appended only when missing. Nothing is ever
written outside ``BASE_DIR``.

The generated code passes ``ruff check --select E,F,W,I`` and ``ruff format --check`` with ruff's
defaults run from BASE_DIR, where the apps and the generated package are first-party imports.
"""

from __future__ import annotations

import ast
import enum
import keyword
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.apps import AppConfig, apps
from django.core.management.base import CommandError
from django.template import Context, Engine, TemplateDoesNotExist, TemplateSyntaxError

from django_grpc_bus.conf import base_dir, bus_settings
from django_grpc_bus.meta import ModelSelection, Selection, is_project_app, load_selection
from django_grpc_bus.protogen import naming

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates" / "django_grpc_bus"
SERVICE_TEMPLATES_DIR = TEMPLATES_DIR / "services"
HANDLER_TEMPLATES_DIR = TEMPLATES_DIR / "handlers"
TEMPLATE_SUFFIX = "-tpl"
SERIALIZERS = "serializers.py"
SERVICES = "services.py"
HANDLERS = "handlers.py"
DEFAULT_HOOK = "handlers.handler"

LINE_LENGTH = 88  # ruff's (and black's) default, so generated code needs no reformatting
INDENT = " " * 4

DEFINITIONS = (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
SKIP_HINT = "exists; --force overwrites it, --edit appends the missing classes"


class ScaffoldError(CommandError):
    """A file cannot be generated: unknown app, path outside BASE_DIR, bad hook or template."""


class OnExisting(enum.Enum):
    """What to do with a ``serializers.py`` or ``services.py`` that already exists."""

    SKIP = "skip"
    OVERWRITE = "overwrite"
    APPEND = "append"
    ASK = "ask"


@dataclass(frozen=True)
class Outcome:
    """What happened to one file; `relpath` is relative to BASE_DIR."""

    relpath: str
    action: str  # created, overwritten, appended, unchanged or skipped
    detail: str = ""


@dataclass
class Report:
    """Every file's outcome, plus hints (for stdout) and warnings (for stderr)."""

    outcomes: list[Outcome] = field(default_factory=list)
    hints: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def counts(self) -> Counter[str]:
        return Counter(outcome.action for outcome in self.outcomes)


# -- what gets generated -------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelScaffold:
    """The names one model contributes to the templates."""

    name: str
    fields: tuple[str, ...]
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

    @property
    def fields_literal(self) -> str:
        return fields_list(self.fields, indent=2 * len(INDENT))  # inside `class Meta`


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


# -- Python source the way ruff writes it --------------------------------------------------------


def natural_key(text: str) -> tuple[tuple[int, int], ...]:
    """Case-insensitive order with digit runs compared by value (``Item9`` < ``Item10``)."""
    runs = re.findall(r"\d+|\D", text.lower())
    return tuple((ord("0"), int(run)) if run.isdigit() else (ord(run), 0) for run in runs)


def module_key(module: str) -> tuple[Any, ...]:
    return natural_key(module), module


def member_key(name: str) -> tuple[Any, ...]:
    """isort's order of imported names: CONSTANTS, then Classes, then variables."""
    kind = 0 if len(name) > 1 and name.isupper() else 1 if name[:1].isupper() else 2
    return kind, natural_key(name), name


def from_import(module: str, names: Iterable[str]) -> str:
    """``from module import a, b``, wrapped one name a line when too long, as ruff does."""
    ordered = sorted(set(names), key=member_key)
    line = f"from {module} import {', '.join(ordered)}"
    if len(line) <= LINE_LENGTH:
        return line
    body = "".join(f"{INDENT}{name},\n" for name in ordered)
    return f"from {module} import (\n{body})"


def fields_list(names: Sequence[str], indent: int) -> str:
    """The list literal of ``fields = [...]`` at `indent`, one name a line when too long."""
    quoted = [f'"{name}"' for name in names]
    flat = f"[{', '.join(quoted)}]"
    if indent + len("fields = ") + len(flat) <= LINE_LENGTH:
        return flat
    margin = " " * indent
    body = "".join(f"{margin}{INDENT}{item},\n" for item in quoted)
    return f"[\n{body}{margin}]"


def register_line(handler: str, path: str) -> str:
    """``handler.register("app.services.BookService")``, wrapped when too long."""
    line = f'{handler}.register("{path}")'
    if len(line) <= LINE_LENGTH:
        return line
    return f'{handler}.register(\n{INDENT}"{path}"\n)'


# -- selection and safe paths --------------------------------------------------------------------


def ensure_inside_base(path: Path, what: str) -> Path:
    """Return `path` with symlinks resolved, or refuse it when that is outside BASE_DIR."""
    base = base_dir()
    resolved = path.resolve()
    if not resolved.is_relative_to(base):
        shown = f"{path} (which resolves to {resolved})" if resolved != path else str(path)
        raise ScaffoldError(
            f"{what} is {shown}, outside BASE_DIR ({base}); generateservices writes only "
            "inside the project."
        )
    return resolved


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
        fields=tuple(f.name for f in selected.fields),
        proto_package=package,
        proto_module=module,
    )


def handler_target(hook: Any) -> HandlerTarget:
    """The file under BASE_DIR that ROOT_HANDLERS_HOOK (default ``handlers.handler``) names."""
    dotted = DEFAULT_HOOK if hook is None else hook
    parts = dotted.split(".") if isinstance(dotted, str) else []
    if len(parts) < 2 or not all(p.isidentifier() and not keyword.iskeyword(p) for p in parts):
        raise ScaffoldError(
            f"MESSAGE_BUS['ROOT_HANDLERS_HOOK'] = {hook!r} is not a dotted path to a handler "
            "object inside the project, such as 'handlers.handler' or 'config.grpc.handler'."
        )
    *module_parts, name = parts
    package_dir = base_dir().joinpath(*module_parts)
    if (package_dir / "__init__.py").is_file():
        path = package_dir / "__init__.py"
    else:
        path = package_dir.parent / f"{module_parts[-1]}.py"
    path = ensure_inside_base(path, f"The module of ROOT_HANDLERS_HOOK {dotted!r}")
    return HandlerTarget(path, ".".join(module_parts), name)


# -- rendering -----------------------------------------------------------------------------------


def template_folder(setting: str, template_name: str, default: Path) -> Path:
    """The folder of MESSAGE_BUS[setting] when it has `template_name`, else the package's."""
    folder = getattr(bus_settings, setting)
    if folder is not None and (folder / template_name).is_file():
        return folder
    return default


def render(setting: str, template_name: str, default: Path, context: dict[str, Any]) -> str:
    """Render a template to Python source; a template that renders invalid Python is refused."""
    folder = template_folder(setting, template_name, default)
    # A private engine: the project's TEMPLATES setting (loaders, autoescape) must not matter.
    engine = Engine(dirs=[str(folder)], autoescape=False)
    where = folder / template_name
    try:
        text = engine.get_template(template_name).render(Context(context, autoescape=False))
    except (TemplateSyntaxError, TemplateDoesNotExist) as exc:
        raise ScaffoldError(f"Template {where} cannot be rendered: {exc}") from exc
    text = text.lstrip("\n").rstrip() + "\n"
    try:
        ast.parse(text)
    except SyntaxError as exc:
        raise ScaffoldError(
            f"Template {where} renders invalid Python (line {exc.lineno}: {exc.msg})."
        ) from exc
    return text


def render_app(app: AppScaffold) -> dict[str, str]:
    """The text of the app's ``serializers.py`` and ``services.py``."""
    context = app.context()
    return {
        filename: render(
            "SERVICE_TEMPLATE", filename + TEMPLATE_SUFFIX, SERVICE_TEMPLATES_DIR, context
        )
        for filename in (SERIALIZERS, SERVICES)
    }


def render_handler(target: HandlerTarget, services: Sequence[str]) -> str:
    context = {
        "handler_name": target.name,
        "services": services,
        "registrations": [register_line(target.name, path) for path in services],
    }
    return render("HANDLER_TEMPLATE", HANDLERS + TEMPLATE_SUFFIX, HANDLER_TEMPLATES_DIR, context)


# -- reading Python source with ast --------------------------------------------------------------


@dataclass(frozen=True)
class ImportedName:
    """One name an import statement binds: ``from module import name as asname``."""

    module: str | None  # None for ``import name``
    name: str
    asname: str | None

    @property
    def bound(self) -> str:
        if self.asname:
            return self.asname
        return self.name if self.module is not None else self.name.partition(".")[0]

    def statement(self) -> str:
        alias = f" as {self.asname}" if self.asname else ""
        if self.module is None:
            return f"import {self.name}{alias}"
        return f"from {self.module} import {self.name}{alias}"


def imported_names(node: ast.Import | ast.ImportFrom) -> list[ImportedName]:
    if isinstance(node, ast.Import):
        return [ImportedName(None, alias.name, alias.asname) for alias in node.names]
    module = "." * node.level + (node.module or "")
    return [ImportedName(module, alias.name, alias.asname) for alias in node.names]


def module_bindings(tree: ast.Module) -> set[str]:
    """Names bound at module level, also inside top-level ``if``/``try``/``with``/loops."""
    names: set[str] = set()

    def visit(statements: Iterable[ast.stmt]) -> None:
        for node in statements:
            if isinstance(node, DEFINITIONS):
                names.add(node.name)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names.update(item.bound for item in imported_names(node))
            elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
            else:
                for block in ("body", "orelse", "finalbody"):
                    visit(getattr(node, block, []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)

    visit(tree.body)
    return names


def registered_paths(tree: ast.Module, package: str) -> set[str]:
    """Dotted paths of every ``<x>.register(...)`` or ``register(...)`` call in the module.

    The argument is a string, or a class reached through the module's imports
    (``from catalog.services import BookService`` ... ``register(BookService)``).
    """
    aliases = import_aliases(tree, package)
    found = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        func = node.func
        callee = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if callee == "register":
            path = dotted_value(node.args[0], aliases)
            if path:
                found.add(path)
    return found


def import_aliases(tree: ast.Module, package: str) -> dict[str, str]:
    """Each name the module's imports bind, mapped to the dotted path it stands for."""
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                bound = alias.asname or alias.name.partition(".")[0]
                aliases[bound] = alias.name if alias.asname else bound
        elif isinstance(node, ast.ImportFrom):
            base = absolute_module(node, package)
            if base is None:
                continue
            for alias in node.names:
                aliases[alias.asname or alias.name] = f"{base}.{alias.name}"
    return aliases


def absolute_module(node: ast.ImportFrom, package: str) -> str | None:
    """The absolute module of a ``from`` import, relative ones taken from `package`."""
    if not node.level:
        return node.module
    parts = package.split(".") if package else []
    if node.level - 1 >= len(parts):
        return None
    base = parts[: len(parts) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def dotted_value(node: ast.expr, aliases: dict[str, str]) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name):
        return aliases.get(node.id)
    if isinstance(node, ast.Attribute):
        base = dotted_value(node.value, aliases)
        return f"{base}.{node.attr}" if base else None
    return None


# -- merging into an existing file ---------------------------------------------------------------


def merge_missing(existing: str, generated: str) -> tuple[str, list[str]]:
    """Add to `existing` the top-level classes and functions of `generated` it does not define.

    Returns the new text and the names added. Only the imports the added definitions use and
    `existing` lacks are added: merged into a matching ``from ... import`` line, or on a new
    line after the last top-level import. Nothing missing: `existing` comes back unchanged.
    Raises SyntaxError when `existing` is not valid Python.
    """
    if not existing.strip():
        definitions = ast.parse(generated).body
        return generated, [node.name for node in definitions if isinstance(node, DEFINITIONS)]
    tree, new_tree = ast.parse(existing), ast.parse(generated)
    bound = module_bindings(tree)
    missing = [n for n in new_tree.body if isinstance(n, DEFINITIONS) and n.name not in bound]
    if not missing:
        return existing, []
    used = {n.id for node in missing for n in ast.walk(node) if isinstance(n, ast.Name)}
    needed = [
        item
        for node in new_tree.body
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for item in imported_names(node)
        if item.bound in used and item.bound not in bound
    ]
    text = add_imports(tree, existing, needed).rstrip("\n") + "\n"
    source = generated.splitlines(keepends=True)
    blocks = ["".join(source[first_line(node) - 1 : node.end_lineno]) for node in missing]
    return text + "\n\n" + "\n\n".join(block.rstrip("\n") + "\n" for block in blocks), [
        node.name for node in missing
    ]


def first_line(node: ast.stmt) -> int:
    decorators = getattr(node, "decorator_list", [])
    return min([node.lineno, *(d.lineno for d in decorators)])


def add_imports(tree: ast.Module, text: str, needed: Sequence[ImportedName]) -> str:
    """Insert the `needed` imports into `text` (parsed as `tree`)."""
    if not needed:
        return text
    lines = text.splitlines(keepends=True)
    top_imports = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    edits: list[tuple[int, int, list[str]]] = []  # replace lines[start:end] with new lines
    new_statements: list[str] = []
    by_module: dict[str | None, list[ImportedName]] = {}
    for item in needed:
        key = item.module if item.module is not None and not item.asname else None
        by_module.setdefault(key, []).append(item)
    for module, items in by_module.items():
        target = mergeable_import(top_imports, module, lines) if module else None
        if target is not None:
            names = [alias.name for alias in target.names] + [item.name for item in items]
            edits.append(
                (target.lineno - 1, target.end_lineno, [from_import(module, names) + "\n"])
            )
        elif module:
            new_statements.append(from_import(module, [item.name for item in items]))
        else:
            new_statements.extend(item.statement() for item in items)
    if new_statements:
        anchor = top_imports[-1].end_lineno if top_imports else docstring_end(tree)
        if lines and anchor == len(lines) and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
        edits.append((anchor, anchor, [f"{line}\n" for line in sorted(new_statements)]))
    for start, end, new in sorted(edits, key=lambda edit: edit[0], reverse=True):
        lines[start:end] = new
    return "".join(lines)


def mergeable_import(
    candidates: Sequence[ast.stmt], module: str, lines: Sequence[str]
) -> ast.ImportFrom | None:
    """A ``from module import ...`` (no aliases, no comments) alone on its lines, if any."""
    for node in candidates:
        if not isinstance(node, ast.ImportFrom):
            continue
        if "." * node.level + (node.module or "") != module:
            continue
        if any(alias.asname for alias in node.names) or node.col_offset:
            continue
        segment = "".join(lines[node.lineno - 1 : node.end_lineno])
        after = lines[node.end_lineno - 1][node.end_col_offset :]
        if "#" not in segment and not after.strip():
            return node
    return None


def docstring_end(tree: ast.Module) -> int:
    """The line after which a first import goes: after the module docstring, or at the top."""
    if tree.body and ast.get_docstring(tree) is not None:
        return tree.body[0].end_lineno or 0
    return 0


# -- writing -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """A file's text with ``\\n`` line ends, and the line end it is written back with."""

    text: str
    newline: str = "\n"


def read_source(path: Path) -> Source | None:
    """The file's text, or None when it is missing or blank (nothing of the user's to keep).

    Raises OSError or UnicodeDecodeError when it cannot be read.
    """
    if not path.exists():
        return None
    with path.open(encoding="utf-8", newline="") as handle:
        raw = handle.read()
    if not raw.strip():
        return None
    newline = "\r\n" if "\r\n" in raw else "\n"
    return Source(raw.replace("\r\n", "\n"), newline)


def write_source(path: Path, text: str, newline: str = "\n") -> None:
    try:
        path.write_text(text, encoding="utf-8", newline=newline)
    except OSError as exc:
        raise ScaffoldError(f"Cannot write {path}: {exc}") from exc


def module_file(folder: Path, filename: str) -> Path:
    """``<name>/__init__.py`` when a package of that name shadows ``<name>.py``, else the file."""
    package_init = folder / Path(filename).stem / "__init__.py"
    return package_init if package_init.is_file() else folder / filename


def write_app_file(
    path: Path,
    text: str,
    on_existing: OnExisting,
    ask: Callable[[str], OnExisting] | None = None,
) -> Outcome:
    """Create `path`, or deal with the existing file as `on_existing` (or the user) says."""
    relpath = relative_to_base(path)
    if module_file(path.parent, path.name) != path:
        package = relative_to_base(path.with_suffix(""))
        return Outcome(relpath, "skipped", f"the package {package}/ would shadow it")
    try:
        current = read_source(path)
    except (OSError, UnicodeDecodeError) as exc:
        return Outcome(relpath, "skipped", f"cannot be read: {exc}")
    if current is None:
        write_source(path, text)
        return Outcome(relpath, "created")
    if current.text == text:
        return Outcome(relpath, "unchanged")
    choice = on_existing
    if choice is OnExisting.ASK:
        choice = ask(relpath) if ask is not None else OnExisting.SKIP
    if choice is OnExisting.OVERWRITE:
        write_source(path, text, current.newline)
        return Outcome(relpath, "overwritten")
    if choice is OnExisting.APPEND:
        try:
            merged, added = merge_missing(current.text, text)
        except SyntaxError as exc:
            return Outcome(
                relpath, "skipped", f"not valid Python (line {exc.lineno}: {exc.msg}); fix it first"
            )
        if not added:
            return Outcome(relpath, "unchanged", "nothing missing")
        write_source(path, merged, current.newline)
        return Outcome(relpath, "appended", ", ".join(added))
    return Outcome(relpath, "skipped", SKIP_HINT)


def defined_services(app: AppScaffold) -> tuple[list[str], list[str]]:
    """Dotted paths of the app's services that its services module binds, and of the others."""
    try:
        source = read_source(module_file(app.folder, SERVICES))
        bound = module_bindings(ast.parse(source.text)) if source else set()
    except (OSError, UnicodeDecodeError, SyntaxError):
        bound = set()
    present, missing = [], []
    for model in app.models:
        (present if model.service_name in bound else missing).append(app.service_path(model))
    return present, missing


def create_package_folders(path: Path) -> list[Outcome]:
    """Create the missing folders above `path` as packages (an ``__init__.py`` in each new one)."""
    base = base_dir()
    new_folders = []
    folder = path.parent
    while folder != base and not folder.exists():
        new_folders.append(folder)
        folder = folder.parent
    outcomes = []
    for folder in reversed(new_folders):
        folder.mkdir()
        write_source(folder / "__init__.py", "")
        outcomes.append(Outcome(relative_to_base(folder / "__init__.py"), "created"))
    return outcomes


def write_handler(target: HandlerTarget, services: Sequence[str]) -> list[Outcome]:
    """Create the handler module, or append the registrations it lacks."""
    relpath = relative_to_base(target.path)
    try:
        current = read_source(target.path)
        tree = ast.parse(current.text) if current else None
    except (OSError, UnicodeDecodeError) as exc:
        return [Outcome(relpath, "skipped", f"cannot be read: {exc}")]
    except SyntaxError as exc:
        return [Outcome(relpath, "skipped", f"not valid Python (line {exc.lineno}: {exc.msg})")]
    if current is None or tree is None:
        outcomes = create_package_folders(target.path)
        write_source(target.path, render_handler(target, services))
        return [*outcomes, Outcome(relpath, "created", f"{len(services)} service(s) registered")]
    if target.name not in module_bindings(tree):
        return [
            Outcome(
                relpath,
                "skipped",
                f"it does not define {target.name!r}, the object ROOT_HANDLERS_HOOK names; "
                f"add `{target.name} = BasicHandler()` or fix the hook",
            )
        ]
    done = registered_paths(tree, target.package)
    missing = [path for path in services if path not in done]
    if not missing:
        return [Outcome(relpath, "unchanged")]
    # ruff format wants two blank lines after a function or class, none after a statement.
    gap = "\n\n\n" if isinstance(tree.body[-1], DEFINITIONS) else "\n"
    lines = "".join(register_line(target.name, path) + "\n" for path in missing)
    write_source(target.path, current.text.rstrip("\n") + gap + lines, current.newline)
    return [Outcome(relpath, "appended", f"{len(missing)} registration(s)")]


def generate_services(
    labels: Sequence[str] = (),
    *,
    handler: bool = False,
    on_existing: OnExisting = OnExisting.SKIP,
    ask: Callable[[str], OnExisting] | None = None,
) -> Report:
    """Write each selected app's serializers.py and services.py, and with `handler` the handlers.

    Every app, path and template is checked before the first file is written.
    """
    report = Report()
    plans = plan_apps(load_selection(), labels)
    rendered = [(app, render_app(app)) for app in plans]
    hook = bus_settings.raw("ROOT_HANDLERS_HOOK")
    target = handler_target(hook) if handler else None
    if not plans:
        report.hints.append("No models are selected; nothing to generate.")
    for app, files in rendered:
        for filename, text in files.items():
            report.outcomes.append(write_app_file(app.folder / filename, text, on_existing, ask))
    if target is None:
        return report
    services = []
    for app in plans:
        present, missing = defined_services(app)
        services += present
        report.warnings += [
            f"Not registering {path}: {app.label}/{SERVICES} does not define "
            f"{path.rpartition('.')[2]} (--edit adds it)."
            for path in missing
        ]
    report.outcomes += write_handler(target, services)
    if hook is None:
        report.hints.append(
            f"Serve these services: set MESSAGE_BUS['ROOT_HANDLERS_HOOK'] = {DEFAULT_HOOK!r}."
        )
    return report
