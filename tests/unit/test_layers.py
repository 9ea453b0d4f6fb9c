"""STYLE.md's layers, checked where they show: what importing the client loads, and which
exceptions the library raises (commands alone turn them into ``CommandError``)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from django.core.management.base import CommandError
from support import TESTS_DIR

# Serving modules: the client must never load one (nor DRF, which they need).
SERVING = (
    "django_grpc_bus.auth",
    "django_grpc_bus.dispatch",
    "django_grpc_bus.errors",
    "django_grpc_bus.generics",
    "django_grpc_bus.handlers",
    "django_grpc_bus.interceptors",
    "django_grpc_bus.mixins",
    "django_grpc_bus.reflection",
    "django_grpc_bus.serializers",
    "django_grpc_bus.server",
    "django_grpc_bus.services",
    "django_grpc_bus.serving",
)
FORBIDDEN = ("rest_framework", *SERVING)


def modules_loaded_by(*imports: str) -> list[str]:
    """The django_grpc_bus and rest_framework modules a fresh consumer process has loaded
    after ``django.setup()`` (which runs the app's ready(), importing checks.py) and `imports`."""
    code = "\n".join(
        [
            "import sys, django",
            "django.setup()",
            *(f"import {name}" for name in imports),
            "print('\\n'.join(sorted(sys.modules)))",
        ]
    )
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "testproject.consumer_settings",
        "PYTHONPATH": str(TESTS_DIR),
    }
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=TESTS_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return [
        name
        for name in result.stdout.split()
        if name.startswith(("django_grpc_bus", "rest_framework"))
    ]


def forbidden(loaded: list[str]) -> list[str]:
    return [name for name in loaded if name.startswith(FORBIDDEN)]


def test_the_registry_loads_neither_drf_nor_any_serving_module():
    loaded = modules_loaded_by("django_grpc_bus.client.registry")
    assert "django_grpc_bus.client.registry" in loaded
    assert forbidden(loaded) == []


def test_the_async_registry_and_the_client_commands_load_neither_either():
    loaded = modules_loaded_by(
        "django_grpc_bus.client.aio",
        "django_grpc_bus.client.describe",
        "django_grpc_bus.management.commands.grpccall",
        "django_grpc_bus.management.commands.grpclist",
    )
    assert "django_grpc_bus.client.aio" in loaded
    assert forbidden(loaded) == []


def test_django_setup_alone_loads_neither_the_client_nor_serving():
    """The app's ready() imports checks.py: it must stay cheap for every project."""
    loaded = modules_loaded_by()
    assert "django_grpc_bus.checks" in loaded
    assert forbidden(loaded) == []
    assert not [name for name in loaded if name.startswith("django_grpc_bus.client")]


def library_errors() -> list[type[Exception]]:
    from django_grpc_bus.client.exceptions import ClientError
    from django_grpc_bus.handler_hook import HandlerHookError
    from django_grpc_bus.meta import ServiceMetaError
    from django_grpc_bus.protogen.protoc import ProtocError
    from django_grpc_bus.scaffold import ScaffoldError
    from django_grpc_bus.serving.server import ServerError
    from django_grpc_bus.transport import AddressError, PemFileError

    return [
        ClientError,
        HandlerHookError,
        ServiceMetaError,
        ProtocError,
        ScaffoldError,
        ServerError,
        AddressError,
        PemFileError,
    ]


@pytest.mark.parametrize("error", library_errors(), ids=lambda error: error.__name__)
def test_library_errors_are_not_command_errors(error):
    assert not issubclass(error, CommandError)


def test_no_two_modules_of_the_package_share_a_name():
    """A newcomer finds a module by its name: one ``server.py``, one ``errors.py``, ..."""
    import collections
    from pathlib import Path

    import django_grpc_bus

    root = Path(django_grpc_bus.__file__).parent
    names = collections.defaultdict(list)
    for path in root.rglob("*.py"):
        if path.name != "__init__.py":
            names[path.stem].append(str(path.relative_to(root)))
    assert {name: paths for name, paths in names.items() if len(paths) > 1} == {}
