"""Plan, compare and write the ``.proto`` files of a selection under PRODUCER_ROOT."""

from __future__ import annotations

import difflib
import os
import tempfile
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from django_grpc_bus.conf import base_dir, bus_settings, inside_base_dir
from django_grpc_bus.meta import Selection
from django_grpc_bus.protogen import naming
from django_grpc_bus.protogen.actions import add_actions, selected_messages
from django_grpc_bus.protogen.declarations import read_declarations
from django_grpc_bus.protogen.declared_fields import read_data_fields
from django_grpc_bus.protogen.existing import read_numbering
from django_grpc_bus.protogen.proto_text import render_proto
from django_grpc_bus.protogen.schema import build_file


@dataclass(frozen=True)
class Change:
    """One file whose content on disk differs from what would be generated."""

    relpath: str
    old: str | None  # None: the file does not exist yet
    new: str | None  # None: a generated file whose model is no longer selected

    @property
    def verb(self) -> str:
        return "create" if self.old is None else "delete" if self.new is None else "update"

    def diff(self) -> str:
        return "".join(
            difflib.unified_diff(
                (self.old or "").splitlines(keepends=True),
                (self.new or "").splitlines(keepends=True),
                fromfile=f"a/{self.relpath}" if self.old is not None else "/dev/null",
                tofile=f"b/{self.relpath}" if self.new is not None else "/dev/null",
            )
        )


@dataclass(frozen=True)
class ProtoPlan:
    """The generated text of every selected model's file, and what differs on disk."""

    root: Path
    files: dict[str, str]
    changes: tuple[Change, ...]
    notes: tuple[str, ...] = ()  # one line each, for the command to print


def check_symbol_collisions(selection: Selection, filtered: Iterable[type] = ()) -> None:
    """Refuse two models of one app whose generated symbols coincide (``Book``/``BookData``).

    `filtered` are the models that also get a ``<Model>Filter`` message.
    """
    filtered = set(filtered)
    owners: dict[tuple[str, str], list[str]] = defaultdict(list)
    for selected in selection:
        suffixes: tuple[str, ...] = naming.SYMBOL_SUFFIXES
        if selected.model in filtered:
            suffixes = (*suffixes, naming.FILTER_SUFFIX)
        for suffix in suffixes:
            owners[(selected.app_label, selected.name + suffix)].append(selected.label)
    for (package, symbol), labels in sorted(owners.items()):
        if len(labels) > 1:
            raise ImproperlyConfigured(
                f"Models {' and '.join(sorted(set(labels)))} would both define the proto symbol "
                f"{package}.{symbol}. Leave one of them out of service_meta.yaml or rename it."
            )


def generated_protos(root: Path) -> list[str]:
    """Relative paths of the ``.proto`` files under `root` that this package wrote."""
    found = []
    base = base_dir()
    for path in sorted(root.glob("*/*.proto")):
        if not path.resolve().is_relative_to(base):
            continue  # behind a symlink that leads out of the project: never ours to delete
        try:
            with path.open(encoding="utf-8") as handle:
                first = handle.readline()
        except OSError:
            continue
        if first.startswith(naming.GENERATED_HEADER):
            found.append(path.relative_to(root).as_posix())
    return found


def plan_protos(selection: Selection) -> ProtoPlan:
    naming.producer_package()  # refuses a PRODUCER_ROOT outside BASE_DIR before any write
    declarations = read_declarations(selection)
    queries = declarations.queries
    check_symbol_collisions(selection, (m for m, q in queries.items() if q.filters))
    root = bus_settings.PRODUCER_ROOT
    relpaths = {naming.proto_relpath(selected.model): selected for selected in selection}
    previous = read_numbering(root, relpaths)
    data_fields = read_data_fields(selection)
    others = selected_messages(selected.model for selected in selection)
    files = {
        relpath: render_proto(
            add_actions(
                build_file(
                    selected,
                    previous.get(relpath),
                    queries.get(selected.model),
                    data_fields.get(selected.model, ()),
                ),
                selected.model,
                declarations.actions.get(selected.model),
                previous.get(relpath),
                others,
            )
        )
        for relpath, selected in relpaths.items()
    }
    changes = []
    for relpath, text in files.items():
        path = root / relpath
        old = path.read_text(encoding="utf-8") if path.is_file() else None
        if old != text:
            changes.append(Change(relpath, old, text))
    for relpath in generated_protos(root):
        if relpath not in files:
            changes.append(Change(relpath, (root / relpath).read_text(encoding="utf-8"), None))
    notes = (declarations.note,) if declarations.note else ()
    return ProtoPlan(root, files, tuple(sorted(changes, key=lambda c: c.relpath)), notes)


def write_atomically(path: Path, text: str) -> None:
    """Write through a new temporary file beside `path` (never a name someone could plant)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def apply_plan(plan: ProtoPlan) -> None:
    for change in plan.changes:
        path = plan.root / change.relpath
        inside_base_dir(path.parent, f"The folder of {change.relpath}")
        if change.new is None:
            inside_base_dir(path, change.relpath).unlink()
        else:
            write_atomically(path, change.new)
