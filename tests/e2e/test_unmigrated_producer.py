"""A producer whose django_grpc_bus migrations were not applied (no outbox table), end to end.

A real rungrpcserver on such a database (SQLite, or PostgreSQL with DATABASE_URL): it warns
W005 at start, and a write to a watched model (catalog.Book) ends FAILED_PRECONDITION naming the
table and `manage.py migrate`, not UNAVAILABLE, which a client retries for ever; the server's
log says the same. A write to a model that is not watched still works.
"""

from __future__ import annotations

import grpc
import pytest
from generated_grpc.grpc import catalog_Book_pb2 as pb
from generated_grpc.grpc import catalog_Book_pb2_grpc as pb_grpc
from support import bus_env, new_database, run_django, running_server

from django_grpc_bus.testing import ServerProcess

SERVERS = [pytest.param(False, id="threaded"), pytest.param(True, id="asyncio")]


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    with new_database(tmp_path_factory.mktemp("unmigrated")) as url:
        run_django(url, "migrate", "django_grpc_bus", "zero", "-v0")
        run_django(
            url,
            "shell",
            "-c",
            "from catalog.models import Author\nAuthor.objects.create(id=1, name='Herbert')",
        )
        yield url


def create_book(server: ServerProcess, isbn: str) -> grpc.RpcError:
    with grpc.insecure_channel(server.target) as channel:
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.BookStub(channel).Create(
                pb.BookData(isbn=isbn, title="t", author=1), timeout=10
            )
    return info.value


@pytest.mark.parametrize("asyncio", SERVERS)
def test_a_write_to_a_watched_model_without_the_outbox_table_says_to_migrate(url, asyncio):
    with running_server(url, env=bus_env(ASYNCIO=asyncio)) as server:
        error = create_book(server, f"u-{asyncio}")
    output = server.output  # complete: the process has ended
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error
    assert error.details() == (
        "The server's database has no table django_grpc_bus_watchevent: run `manage.py migrate` "
        "on the server."
    )
    assert "(django_grpc_bus.W005)" in output and "0001_initial" in output, output
    assert "catalog.Book" in output and "Run `manage.py migrate`." in output
    # The server's log: the method, the same remedy, and the database's own words.
    logged = [line for line in output.splitlines() if "/catalog.Book/Create ended" in line]
    assert logged and "run `manage.py migrate`" in logged[0], output
    assert "django_grpc_bus_watchevent" in logged[0]


@pytest.mark.parametrize("asyncio", SERVERS)
def test_a_watch_without_the_outbox_table_ends_failed_precondition(url, asyncio):
    """Not UNAVAILABLE: the client's watch() would call again for ever."""
    with running_server(url, env=bus_env(ASYNCIO=asyncio)) as server:
        with grpc.insecure_channel(server.target) as channel:
            call = pb_grpc.BookStub(channel).Watch(pb.BookWatchRequest(), timeout=10)
            with pytest.raises(grpc.RpcError) as info:
                list(call)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION, info.value
    assert "django_grpc_bus_watchevent: run `manage.py migrate`" in info.value.details()


def test_a_server_with_every_migration_applied_does_not_warn(tmp_path):
    with new_database(tmp_path) as migrated:
        with running_server(migrated) as server:
            pass
    assert "Stopped" in server.output, server.output  # read to its end
    assert "W005" not in server.output, server.output
