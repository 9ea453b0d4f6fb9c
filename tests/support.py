"""Helpers shared by the test modules: the run's database, Django commands, server processes.

A plain module (tests/ is on sys.path): import from here, never from conftest.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dj_database_url
import grpc
import pytest
import yaml
from django.core.management import call_command
from django.test import override_settings
from grpc_health.v1 import health_pb2, health_pb2_grpc

from django_grpc_bus.testing import ServerProcess

TESTS_DIR = Path(__file__).resolve().parent
DATABASE_URL = os.environ.get("DATABASE_URL", "")
ON_POSTGRES = DATABASE_URL.startswith(("postgres://", "postgresql://"))
# Small client-side HTTP/2 windows: a server cannot push a long List into the client's buffers.
SMALL_WINDOW = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 16384)]

requires_postgres = pytest.mark.skipif(
    not ON_POSTGRES, reason="set DATABASE_URL to a PostgreSQL database to run this test"
)


# -- a project folder (the `project` fixture) ----------------------------------------------------


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


# -- Django commands in subprocesses -------------------------------------------------------------


def django_command_env(database_url: str, **extra: str) -> dict[str, str]:
    """Environment for the test project's manage.py commands on `database_url`."""
    return {
        "DJANGO_SETTINGS_MODULE": "testproject.settings",
        "DATABASE_URL": database_url,
        "PYTHONPATH": str(TESTS_DIR),
        **extra,
    }


def django_subprocess(
    database_url: str, *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    """`python -m django ARGS` of the test project, run to the end (output captured)."""
    return subprocess.run(
        [sys.executable, "-m", "django", *args],
        cwd=TESTS_DIR,
        env={**os.environ, **django_command_env(database_url, **(env or {}))},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_django(database_url: str, *args: str) -> subprocess.CompletedProcess:
    """`python -m django ARGS` of the test project, which must succeed."""
    result = django_subprocess(database_url, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


# -- databases, read and written directly (sqlite3 / psycopg) ------------------------------------


def pg_connect(url: str, **options: Any):
    """An autocommit psycopg connection to the PostgreSQL database at `url`."""
    import psycopg

    config = dj_database_url.parse(url)
    conninfo = psycopg.conninfo.make_conninfo(
        host=config["HOST"],
        port=config["PORT"] or 5432,
        user=config["USER"],
        password=config["PASSWORD"] or None,
        dbname=config["NAME"],
        **options,
    )
    return psycopg.connect(conninfo, autocommit=True)


def db_execute(url: str, sql: str, params_seq: Iterable[tuple]) -> list[tuple]:
    """Run `sql` (%s placeholders) once per params, in one transaction; the rows it returned."""
    config = dj_database_url.parse(url)
    rows: list[tuple] = []
    if config["ENGINE"].endswith("sqlite3"):
        connection = sqlite3.connect(config["NAME"], timeout=10)
        try:
            with connection:
                for params in params_seq:
                    rows.extend(connection.execute(sql.replace("%s", "?"), params).fetchall())
        finally:
            connection.close()
        return rows
    with pg_connect(url) as connection, connection.transaction(), connection.cursor() as cursor:
        cursor.executemany(sql, list(params_seq), returning=True)
        for _ in cursor.results():
            if cursor.description:
                rows.extend(cursor.fetchall())
    return rows


def db_query(url: str, sql: str, params: tuple = ()) -> list[tuple]:
    """Run one statement (%s placeholders) on the database at `url`; its rows, if any."""
    return db_execute(url, sql, [params])


def insert_authors(url: str, names: list[str]) -> list[int]:
    """New catalog_author rows named `names`; their primary keys."""
    sql = "INSERT INTO catalog_author (name) VALUES (%s) RETURNING id"
    return [row[0] for row in db_execute(url, sql, [(name,) for name in names])]


def ensure_authors(url: str, count: int, name_format: str) -> None:
    """At least `count` catalog_author rows; new ones named `name_format.format(index)`."""
    ((present,),) = db_query(url, "SELECT count(*) FROM catalog_author")
    if present < count:
        insert_authors(url, [name_format.format(i) for i in range(count - present)])


def pg_connection_count(monitor, database_url: str) -> int:
    """Connections to the database at `database_url`, seen through the connection `monitor`."""
    name = dj_database_url.parse(database_url)["NAME"]
    return monitor.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
        (name,),
    ).fetchone()[0]


@contextlib.contextmanager
def new_database(folder: Path, prefix: str = "grpcbus_e2e") -> Iterator[str]:
    """A new, migrated, empty database for server processes: a SQLite file in `folder`, or a
    PostgreSQL database of its own (dropped afterwards) when DATABASE_URL points there."""
    if not ON_POSTGRES:
        url = f"sqlite:///{folder / f'db-{uuid.uuid4().hex[:8]}.sqlite3'}"
        run_django(url, "migrate", "--run-syncdb", "-v0")
        yield url
        return
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with pg_connect(DATABASE_URL, connect_timeout=10) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    url = DATABASE_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        run_django(url, "migrate", "--run-syncdb", "-v0")
        yield url
    finally:
        with pg_connect(DATABASE_URL, connect_timeout=10) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def file_in_tmp(label: str) -> Iterator[str]:
    """A new file directly in /tmp (FilePathField(path="/tmp") takes no other), removed after."""
    path = Path("/tmp") / f"grpcbus-{label}-{uuid.uuid4().hex[:10]}.txt"
    path.write_text(label)
    try:
        yield str(path)
    finally:
        path.unlink(missing_ok=True)


# -- server processes ----------------------------------------------------------------------------


def bus_env(**settings: Any) -> dict[str, str]:
    """Environment giving a server process these MESSAGE_BUS settings (TEST_MESSAGE_BUS)."""
    return {"TEST_MESSAGE_BUS": json.dumps(settings)}


def server_process(
    database_url: str, *args: str, env: dict[str, str] | None = None, **options: Any
) -> ServerProcess:
    """A `rungrpcserver ARGS` process of the test project on `database_url`, not started."""
    return ServerProcess(
        [sys.executable, "-m", "django"],
        cwd=TESTS_DIR,
        env=django_command_env(database_url, **(env or {})),
        args=args,
        **options,
    )


def start_server(
    database_url: str, *args: str, env: dict[str, str] | None = None, **options: Any
) -> ServerProcess:
    """A `rungrpcserver ARGS` process of the test project on `database_url`, serving."""
    return server_process(database_url, *args, env=env, **options).start()


def stop_server(server: ServerProcess, timeout: float = 30.0) -> None:
    """Stop `server` by its PID; it must exit with code 0."""
    code = server.stop(timeout=timeout)
    assert code == 0, server.output


@contextlib.contextmanager
def running_server(
    database_url: str,
    *args: str,
    env: dict[str, str] | None = None,
    stop_timeout: float = 30.0,
    **options: Any,
) -> Iterator[ServerProcess]:
    """A serving `rungrpcserver ARGS` process for the block, then stopped (exit code 0)."""
    server = start_server(database_url, *args, env=env, **options)
    try:
        yield server
    finally:
        stop_server(server, stop_timeout)


def free_port() -> int:
    """A loopback TCP port nothing listens on (at the moment)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def health_status(channel: grpc.Channel, service: str = "", timeout: float = 2) -> int:
    """The health status (SERVING, NOT_SERVING, ...) `service` has on `channel`."""
    reply = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=timeout
    )
    return reply.status


# -- the client's settings -----------------------------------------------------------------------


def servlet_entry(
    port: int, timeout: float = 5, host: str = "127.0.0.1", **extra: Any
) -> dict[str, Any]:
    """A SERVLETS entry for a server on `port`."""
    return {"host": host, "port": port, "timeout": timeout, **extra}


def add_servlets(settings, **entries: dict[str, Any]) -> None:
    """Add servlets to MESSAGE_BUS (the registry resets itself on the change)."""
    current = settings.MESSAGE_BUS.get("SERVLETS", {})
    settings.MESSAGE_BUS = {**settings.MESSAGE_BUS, "SERVLETS": {**current, **entries}}


def counting_load_catalog(monkeypatch) -> list[str]:
    """Replace load_catalog with a wrapper recording each fetch's servlet name."""
    from django_grpc_bus.client import servlet as servlet_module

    fetches: list[str] = []
    real = servlet_module.load_catalog

    def load_catalog(config):
        fetches.append(config.name)
        return real(config)

    monkeypatch.setattr(servlet_module, "load_catalog", load_catalog)
    return fetches


def compile_proto_text(folder: Path, relpath: str, text: str) -> Path:
    """Write `text` as the proto `relpath` under `folder` and compile it there with grpc_tools'
    protoc (its well-known types on the include path); `folder`."""
    from importlib import resources

    from grpc_tools import protoc

    source = folder / relpath
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_text(text)
    include = str(resources.files("grpc_tools") / "_proto")
    code = protoc.main(
        [
            "protoc",
            f"-I{include}",
            f"-I{folder}",
            f"--python_out={folder}",
            f"--grpc_python_out={folder}",
            relpath,
        ]
    )
    assert code == 0, f"protoc failed on {relpath}"
    return folder
