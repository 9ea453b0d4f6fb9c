"""Placeholder modules for the compiled package while generation imports the project's handler.

Generation reads the services' query declarations, so it imports the handler named by
ROOT_HANDLERS_HOOK; the services import the compiled package (``from generated_grpc.grpc import
Book_pb2``) and read names from it in class bodies (``proto_class = Book_pb2.BookData``). That
package may be missing, or stale (a message not compiled yet), when generation runs: that is
what generation is about to fix. And it must not be loaded even when it is there and current:
its descriptors would stay in this process's descriptor pool and clash with the ones compiled
next. So, for the duration of the import, every module of the package is a placeholder whose
every name is a placeholder class; afterwards the placeholders, and the project modules that
were imported with them (and hold them), are forgotten, so that a later import is the real one.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django_grpc_bus.meta import is_library_path

_MISSING = object()


def _is_dunder(name: str) -> bool:
    return name.startswith("__") and name.endswith("__")


class PlaceholderType(type):
    """A placeholder class: any attribute or item of it is another placeholder class."""

    def __getattr__(cls, name: str) -> Any:
        if _is_dunder(name):
            raise AttributeError(name)
        child = placeholder_class(name, cls.__module__, f"{cls.__qualname__}.{name}")
        type.__setattr__(cls, name, child)
        return child

    def __getitem__(cls, key: Any) -> Any:
        return placeholder_class(str(key), cls.__module__, f"{cls.__qualname__}[{key!r}]")

    def __iter__(cls) -> Iterator[Any]:
        return iter(())

    def __repr__(cls) -> str:
        return f"<placeholder {cls.__module__}.{cls.__qualname__}>"


class Placeholder(metaclass=PlaceholderType):
    """Instances take any arguments and answer any attribute with a placeholder class."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        if _is_dunder(name):
            raise AttributeError(name)
        return getattr(type(self), name)


def placeholder_class(name: str, module: str, qualname: str | None = None) -> PlaceholderType:
    return PlaceholderType(
        name, (Placeholder,), {"__module__": module, "__qualname__": qualname or name}
    )


class PlaceholderModule(types.ModuleType):
    """A module of the compiled package that is not loaded: every name is a placeholder class.

    The package itself (`submodules`) answers a name with its placeholder submodule, so that
    ``from generated_grpc.grpc import Book_pb2`` gives a module, as the real package does.
    """

    submodules = False

    def __getattr__(self, name: str) -> Any:
        if _is_dunder(name):
            raise AttributeError(name)
        if self.submodules:
            return importlib.import_module(f"{self.__name__}.{name}")
        value = placeholder_class(name, self.__name__)
        setattr(self, name, value)
        return value


class PlaceholderFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves `package` and every module below it as placeholders; its parent packages too,
    but only when they cannot be found (PRODUCER_ROOT not created yet)."""

    def __init__(self, package: str) -> None:
        self.package = package
        parts = package.split(".")
        self.ancestors = {".".join(parts[:i]) for i in range(1, len(parts))}
        self.served: list[str] = []

    def covers(self, name: str) -> bool:
        return name == self.package or name.startswith(self.package + ".")

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname in self.ancestors:
            real = importlib.machinery.PathFinder.find_spec(fullname, path)
            if real is not None:
                return real
        elif not self.covers(fullname):
            return None
        return importlib.util.spec_from_loader(fullname, self, is_package=True)

    def create_module(self, spec: Any) -> types.ModuleType:
        module = PlaceholderModule(spec.name)
        module.submodules = spec.name == self.package or spec.name in self.ancestors
        self.served.append(spec.name)
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        module.__path__ = []  # a package, so that any module below it imports too


@contextmanager
def placeholder_imports(package: str) -> Iterator[PlaceholderFinder]:
    """While inside, `package` (``generated_grpc.grpc``) and its modules are placeholders.

    Already-imported modules of `package` are set aside and put back afterwards. On leaving, the
    placeholders are forgotten and, when any was served, so is every module of the project (not
    Python's, not an installed package's) first imported inside: those may hold placeholders.
    """
    finder = PlaceholderFinder(package)
    set_aside = {name: sys.modules.pop(name) for name in list(sys.modules) if finder.covers(name)}
    parent_name, _, child = package.rpartition(".")
    parent = sys.modules.get(parent_name) if parent_name else None
    parent_value = parent.__dict__.get(child, _MISSING) if parent is not None else _MISSING
    before = set(sys.modules)
    sys.meta_path.insert(0, finder)
    try:
        yield finder
    finally:
        sys.meta_path.remove(finder)
        forget = [
            name
            for name, module in list(sys.modules.items())
            if name not in before
            and (
                isinstance(module, PlaceholderModule)
                or (finder.served and _is_project_module(name, module))
            )
        ]
        for name in forget:
            _forget(name)
        sys.modules.update(set_aside)
        if parent is not None:
            if parent_value is _MISSING:
                parent.__dict__.pop(child, None)
            else:
                setattr(parent, child, parent_value)


def _forget(name: str) -> None:
    """Drop a module from sys.modules and from its parent package's attributes."""
    module = sys.modules.pop(name, None)
    parent_name, _, child = name.rpartition(".")
    parent = sys.modules.get(parent_name) if parent_name else None
    if parent is not None and module is not None and parent.__dict__.get(child) is module:
        delattr(parent, child)


def _is_project_module(name: str, module: Any) -> bool:
    """The project's own code, as for apps (``meta.is_project_app``): not Python's, not an
    installed package's, not this package's."""
    if name == "django_grpc_bus" or name.startswith("django_grpc_bus."):
        return False
    location = getattr(module, "__file__", None)
    return location is not None and bool(location) and not is_library_path(location)
