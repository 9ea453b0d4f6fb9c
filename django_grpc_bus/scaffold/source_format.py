"""Python source the way ruff formats it: import lines, ``fields`` lists, registrations."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

LINE_LENGTH = 88  # ruff's (and black's) default, so generated code needs no reformatting
INDENT = " " * 4


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


def register_line(handler: str, path: str) -> str:
    """``handler.register("app.services.BookService")``, wrapped when too long."""
    line = f'{handler}.register("{path}")'
    if len(line) <= LINE_LENGTH:
        return line
    return f'{handler}.register(\n{INDENT}"{path}"\n)'
