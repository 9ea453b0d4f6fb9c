"""Write the generated files: create them, or skip, overwrite or complete the ones that exist."""

from __future__ import annotations

import ast
import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from django_grpc_bus.conf import base_dir
from django_grpc_bus.scaffold.plan import SERVICES, AppScaffold, HandlerTarget, relative_to_base
from django_grpc_bus.scaffold.render import render_handler
from django_grpc_bus.scaffold.report import Outcome, ScaffoldError
from django_grpc_bus.scaffold.source_format import register_line
from django_grpc_bus.scaffold.source_merge import merge_missing
from django_grpc_bus.scaffold.source_reading import DEFINITIONS, module_bindings, registered_paths

SKIP_HINT = "exists; --force overwrites it, --edit appends the missing classes"


class OnExisting(enum.Enum):
    """What to do with a ``serializers.py`` or ``services.py`` that already exists."""

    SKIP = "skip"
    OVERWRITE = "overwrite"
    APPEND = "append"
    ASK = "ask"


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
    present: list[str] = []
    missing: list[str] = []
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
