"""Add to an existing file the generated definitions it lacks, with the imports they need."""

from __future__ import annotations

import ast
from collections.abc import Sequence

from django_grpc_bus.scaffold.source_format import from_import
from django_grpc_bus.scaffold.source_reading import (
    DEFINITIONS,
    ImportedName,
    imported_names,
    module_bindings,
)


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
        if module is None:
            new_statements.extend(item.statement() for item in items)
            continue
        target = mergeable_import(top_imports, module, lines)
        if target is not None:
            names = [alias.name for alias in target.names] + [item.name for item in items]
            edits.append((target.lineno - 1, end_line(target), [from_import(module, names) + "\n"]))
        else:
            new_statements.append(from_import(module, [item.name for item in items]))
    if new_statements:
        anchor = end_line(top_imports[-1]) if top_imports else docstring_end(tree)
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
        segment = "".join(lines[node.lineno - 1 : end_line(node)])
        after = lines[end_line(node) - 1][node.end_col_offset :]
        if "#" not in segment and not after.strip():
            return node
    return None


def end_line(node: ast.stmt) -> int:
    """The last line of a parsed statement (``ast.parse`` always sets ``end_lineno``)."""
    return node.end_lineno if node.end_lineno is not None else node.lineno


def docstring_end(tree: ast.Module) -> int:
    """The line after which a first import goes: after the module docstring, or at the top."""
    if tree.body and ast.get_docstring(tree) is not None:
        return tree.body[0].end_lineno or 0
    return 0
