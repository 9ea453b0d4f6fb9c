"""Read Python source with :mod:`ast`: the names a module binds and the services it registers."""

from __future__ import annotations

import ast
from collections.abc import Iterable
from dataclasses import dataclass

DEFINITIONS = (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


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
