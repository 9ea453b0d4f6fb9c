"""Fixtures: a throw-away project folder per test, one compiled package per session, and the
databases and server processes of the end-to-end tests (helpers live in support.py)."""

from __future__ import annotations

import io
import sys
import uuid
from pathlib import Path

import grpc
import pytest
from django.core.management import call_command
from django.test import override_settings
from support import TESTS_DIR, Project, file_in_tmp, new_database, running_server


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


@pytest.fixture
def make_module(tmp_path, monkeypatch):
    """Write a uniquely named module under tmp_path, importable; forgotten after the test."""
    folder = tmp_path / "modules"
    folder.mkdir()
    names: list[str] = []

    def make(source: str) -> str:
        name = f"bus_test_module_{uuid.uuid4().hex[:12]}"
        (folder / f"{name}.py").write_text(source)
        names.append(name)
        return name

    monkeypatch.syspath_prepend(str(folder))
    yield make
    for name in names:
        sys.modules.pop(name, None)


def pytest_sessionstart(session):
    """Build the test project's ``generated_grpc`` package (tests/generated_grpc) first.

    Before collection, because test modules import the test project's services, which import
    the generated modules; and on every run, so that they always come from this environment's
    protoc (a package built by a newer one does not import under an older protobuf).
    """
    call_command("generateproto", stdout=io.StringIO())  # this environment's models, too
    call_command("generategrpc", stdout=io.StringIO())


@pytest.fixture(scope="session")
def compiled():
    """The test project's generated package (built at session start), importable as
    ``generated_grpc.grpc``.

    Each proto can be imported only once per process (the default descriptor pool refuses a
    second, different definition of a symbol), so the tests share this one package; it is
    also what the test project's services import and what its server processes serve.
    """
    return TESTS_DIR


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


@pytest.fixture(scope="module")
def grpc_server(server_database):
    """A real `rungrpcserver` process serving the test project, shared by a test module."""
    with running_server(server_database) as server:
        yield server


@pytest.fixture(scope="module")
def channel(grpc_server):
    with grpc.insecure_channel(grpc_server.target) as channel:
        yield channel


@pytest.fixture(scope="module")
def filepath(request):
    """A file directly in /tmp for this module: FilePathField(path="/tmp") takes no other."""
    with file_in_tmp(request.module.__name__.removeprefix("test_")) as path:
        yield path
