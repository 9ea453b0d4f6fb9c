"""Fixtures: a throw-away project folder per test, and one compiled package per session."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dj_database_url
import grpc
import pytest
import yaml
from django.core.management import call_command
from django.test import override_settings

from django_grpc_bus.testing import ServerProcess

TESTS_DIR = Path(__file__).resolve().parent
DATABASE_URL = os.environ.get("DATABASE_URL", "")
ON_POSTGRES = DATABASE_URL.startswith(("postgres://", "postgresql://"))

requires_postgres = pytest.mark.skipif(
    not ON_POSTGRES, reason="set DATABASE_URL to a PostgreSQL database to run this test"
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
def compiled():
    """The test project's own ``generated_grpc`` package (tests/generated_grpc), built once.

    Each proto can be imported only once per process (the default descriptor pool refuses a
    second, different definition of a symbol), so the tests share this one package; it is
    also what the test project's services import and what its server processes serve.
    """
    call_command("generategrpc", stdout=io.StringIO())
    return TESTS_DIR


def django_command_env(database_url: str, **extra: str) -> dict[str, str]:
    return {
        "DJANGO_SETTINGS_MODULE": "testproject.settings",
        "DATABASE_URL": database_url,
        "PYTHONPATH": str(TESTS_DIR),
        **extra,
    }


def run_django(database_url: str, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "django", *args],
        cwd=TESTS_DIR,
        env={**os.environ, **django_command_env(database_url)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@contextlib.contextmanager
def new_database(folder: Path):
    """A new, migrated, empty database for server processes: a SQLite file in `folder`, or a
    PostgreSQL database of its own (dropped afterwards) when DATABASE_URL points there."""
    if not ON_POSTGRES:
        url = f"sqlite:///{folder / f'db-{uuid.uuid4().hex[:8]}.sqlite3'}"
        run_django(url, "migrate", "--run-syncdb", "-v0")
        yield url
        return
    import psycopg

    name = f"grpcbus_e2e_{uuid.uuid4().hex[:10]}"
    admin = dj_database_url.parse(DATABASE_URL)
    conninfo = psycopg.conninfo.make_conninfo(
        host=admin["HOST"], port=admin["PORT"] or 5432, user=admin["USER"], dbname=admin["NAME"]
    )
    with psycopg.connect(conninfo, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    url = DATABASE_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        run_django(url, "migrate", "--run-syncdb", "-v0")
        yield url
    finally:
        with psycopg.connect(conninfo, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def server_database(tmp_path_factory, compiled):
    """The database the shared server processes use (one per test session)."""
    with new_database(tmp_path_factory.mktemp("e2e")) as url:
        yield url


@pytest.fixture(scope="module")
def fresh_database(tmp_path_factory, compiled):
    """A new, empty database for one test module's own servers."""
    with new_database(tmp_path_factory.mktemp("fresh")) as url:
        yield url


def start_server(database_url: str, *args: str, env: dict[str, str] | None = None):
    return ServerProcess(
        [sys.executable, "-m", "django"],
        cwd=TESTS_DIR,
        env=django_command_env(database_url, **(env or {})),
        args=args,
    ).start()


@pytest.fixture(scope="module")
def grpc_server(server_database):
    """A real `rungrpcserver` process serving the test project, shared by a test module."""
    server = start_server(server_database)
    try:
        yield server
    finally:
        code = server.stop()
        assert code == 0, server.output


@pytest.fixture(scope="module")
def channel(grpc_server):
    with grpc.insecure_channel(grpc_server.target) as channel:
        yield channel
