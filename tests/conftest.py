"""Fixtures: a throw-away project folder per test, and one compiled package per session."""

from __future__ import annotations

import io
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.core.management import call_command
from django.test import override_settings

requires_postgres = pytest.mark.skipif(
    not os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://")),
    reason="set DATABASE_URL to a PostgreSQL database to run this test",
)


@dataclass
class Project:
    """A BASE_DIR in a temporary folder, with MESSAGE_BUS pointing into it."""

    base: Path
    settings: dict[str, Any]

    @property
    def root(self) -> Path:
        return self.base / "generated_grpc"

    def write_meta(self, document: Any, name: str = "service_meta.yaml") -> Path:
        path = self.base / name
        text = document if isinstance(document, str) else yaml.safe_dump(document)
        path.write_text(text)
        self.configure(SERVICE_META=name)
        return path

    def configure(self, **changes: Any) -> None:
        self.settings.update(changes)
        self._override.disable()
        self._override = override_settings(BASE_DIR=self.base, MESSAGE_BUS=dict(self.settings))
        self._override.enable()

    def call(self, name: str, *args: str) -> tuple[str, str]:
        out, err = io.StringIO(), io.StringIO()
        call_command(name, *args, stdout=out, stderr=err)
        return out.getvalue(), err.getvalue()


@pytest.fixture
def project(tmp_path: Path):
    settings = {"PRODUCER_ROOT": "generated_grpc"}
    proj = Project(tmp_path, settings)
    proj._override = override_settings(BASE_DIR=tmp_path, MESSAGE_BUS=dict(settings))
    proj._override.enable()
    try:
        yield proj
    finally:
        proj._override.disable()


@pytest.fixture(scope="session")
def compiled(tmp_path_factory):
    """The default selection compiled once, importable as ``generated_grpc.grpc``.

    Each proto can be imported only once per process (the default descriptor pool refuses a
    second, different definition of a symbol), so the tests share this one package.
    """
    base = tmp_path_factory.mktemp("compiled")
    with override_settings(BASE_DIR=base, MESSAGE_BUS={"PRODUCER_ROOT": "generated_grpc"}):
        call_command("generategrpc", stdout=io.StringIO())
    sys.path.insert(0, str(base))
    try:
        yield base
    finally:
        sys.path.remove(str(base))
