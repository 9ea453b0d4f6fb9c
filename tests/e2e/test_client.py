"""The reflective client (``registry``) against real ``rungrpcserver`` processes.

Three servers share one fresh database of this module: ``one`` (the test project, with
LIST_BATCH_SIZE 3), ``two`` (the test project) and ``three`` (``handlers.full_handler``:
catalog.* plus shop.Book and shop.Customer, so the short name ``Book`` is ambiguous there).
The test process itself never touches a database: everything goes through gRPC.
"""

from __future__ import annotations

import datetime as dt
import inspect
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import django
import grpc
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings
from support import (
    ON_POSTGRES,
    TESTS_DIR,
    add_servlets,
    bus_env,
    counting_load_catalog,
    django_command_env,
    free_port,
    new_database,
    run_django,
    servlet_entry,
    start_server,
    stop_server,
)

from django_grpc_bus.client import exceptions
from django_grpc_bus.client.registry import registry
from django_grpc_bus.testing import ServerProcess

INT64_MAX = 2**63 - 1
INT32_MAX = 2**31 - 1
TIMEOUT = 5  # every servlet's deadline, unless a test says otherwise
FULL_HANDLER = bus_env(ROOT_HANDLERS_HOOK="handlers.full_handler")
BATCHES_OF_3 = bus_env(LIST_BATCH_SIZE=3)


# -- fixtures --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client_database(tmp_path_factory, compiled):
    """A new, migrated, empty database for this module's servers (exact row counts)."""
    with new_database(tmp_path_factory.mktemp("client"), prefix="grpcbus_client") as url:
        yield url


@pytest.fixture(scope="module")
def tag_ids(client_database) -> list[int]:
    """Two tags (TagService is read-only, so they are made with `manage.py shell`)."""
    code = (
        "import json; from catalog.models import Tag; "
        "print(json.dumps([Tag.objects.create(name=n).pk for n in ('client-a', 'client-b')]))"
    )
    result = run_django(client_database, "shell", "-v0", "-c", code)
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def servers(client_database, tag_ids):
    started: list[ServerProcess] = []
    try:
        for env in (BATCHES_OF_3, None, FULL_HANDLER):
            started.append(start_server(client_database, env=env))
        yield SimpleNamespace(one=started[0], two=started[1], three=started[2])
    finally:
        for server in started:
            stop_server(server)


@pytest.fixture(autouse=True)
def servlets(settings, servers):
    add_servlets(
        settings,
        one=servlet_entry(servers.one.port),
        two=servlet_entry(servers.two.port),
        three=servlet_entry(servers.three.port),
    )
    return servers


@pytest.fixture(scope="module")
def books(servers) -> list[dict[str, Any]]:
    """Exactly ten catalog.Book rows (no other test creates books)."""
    bus = {
        "ROOT_HANDLERS_HOOK": "handlers.handler",
        "SERVLETS": {"b": servlet_entry(servers.two.port)},
    }
    with override_settings(MESSAGE_BUS=bus):
        author = registry.b.Author.create({"name": "Book author"})
        return [
            registry.b.Book.create(
                {"title": f"Book {i}", "author": author["id"], "isbn": f"978{i:010d}"}
            )
            for i in range(10)
        ]


def author_count(servlet: str = "one") -> int:
    return len(list(registry[servlet].Author.list()))


@contextmanager
def silent_listener() -> Iterator[socket.socket]:
    """A loopback TCP port that accepts connections (in the backlog) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        sock.settimeout(0.3)
        yield sock


def connected(sock: socket.socket) -> bool:
    try:
        connection, _ = sock.accept()
    except TimeoutError:
        return False
    connection.close()
    return True


# -- several servlets ------------------------------------------------------------------------------


def test_two_servlets_with_the_same_services_have_their_own_descriptor_pools():
    one, two = registry.one, registry.two
    assert one.services == two.services
    assert "catalog.Author" in one.services
    assert one.catalog.pool is not two.catalog.pool
    create_one, create_two = one.Author.create, two.Author.create
    assert create_one.request_class is not create_two.request_class
    assert create_one.request_class.DESCRIPTOR.full_name == "catalog.AuthorData"

    # Both work, and they serve the same database: a row made through one reads through two.
    made = one.Author.create({"name": "Ada"})
    assert two.Author.retrieve({"id": made["id"]}) == made
    # A message of one servlet's class is accepted by the other (same full name).
    message = create_one.request_class(name="Across pools")
    again = two.Author.create(message)
    assert again["name"] == "Across pools"
    assert one.Author.retrieve({"id": again["id"]}) == again


def test_an_ambiguous_short_name_names_every_full_name():
    three = registry.three
    with pytest.raises(exceptions.AmbiguousService) as caught:
        three.Book  # noqa: B018
    message = str(caught.value)
    assert "catalog.Book" in message and "shop.Book" in message
    assert caught.value.full_names == ["catalog.Book", "shop.Book"]
    assert "Book" not in dir(three)
    shop_book = three["shop.Book"]
    assert shop_book.full_name == "shop.Book"
    assert three["catalog.Book"].full_name == "catalog.Book"
    assert three.Customer.full_name == "shop.Customer"
    assert three.Author.full_name == "catalog.Author"
    assert list(three.Customer.list()) == list(three["shop.Customer"].list())


# -- names -----------------------------------------------------------------------------------------


def test_methods_by_snake_case_and_proto_names():
    author = registry.one.Author
    assert author.partial_update is author.PartialUpdate
    assert author.retrieve is author["Retrieve"] is author.method("retrieve")
    assert registry.one["catalog.Author"] is author
    assert registry["one"] is registry.one
    made = author.Create({"name": "Pascal"})
    assert author.Retrieve({"id": made["id"]}) == author.retrieve({"id": made["id"]}) == made
    changed = author.PartialUpdate(
        {"data": {"id": made["id"], "name": "Snake"}, "update_mask": ["name"]}
    )
    assert changed == {"id": made["id"], "name": "Snake"}


def test_dir_lists_servlets_services_and_methods():
    assert {"one", "two", "three"} <= set(dir(registry))
    assert {"Author", "Book", "Everything", "Tag"} <= set(dir(registry.one))
    assert {"Customer", "Author"} <= set(dir(registry.three))
    author_methods = {"list", "create", "retrieve", "update", "partial_update", "destroy"}
    assert author_methods <= set(dir(registry.one.Author))
    assert registry.one.Author.methods == [
        "list", "count", "create", "retrieve", "update", "partial_update", "destroy"
    ]  # fmt: skip
    # TagService is read-only: its proto still has every RPC, the server refuses the writes.
    assert {"list", "retrieve"} <= set(registry.one.Tag.methods)
    with pytest.raises(exceptions.CallError) as write:
        registry.one.Tag.create({"name": "nope"})
    assert write.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_unknown_names_raise_attribute_errors_listing_what_exists():
    with pytest.raises(exceptions.UnknownServlet) as servlet:
        registry.nope  # noqa: B018
    assert isinstance(servlet.value, AttributeError)
    assert "nope" in str(servlet.value)
    assert all(name in str(servlet.value) for name in ("one", "two", "three"))
    assert not hasattr(registry, "nope")

    with pytest.raises(exceptions.UnknownService) as service:
        registry.one.Nope  # noqa: B018
    assert isinstance(service.value, AttributeError)
    message = str(service.value)
    assert "Nope" in message
    assert all(name in message for name in ("Author", "Book", "Everything", "Tag"))
    assert not hasattr(registry.one, "Nope")
    with pytest.raises(exceptions.UnknownService):
        registry.one["catalog.Nope"]

    with pytest.raises(exceptions.UnknownMethod) as method:
        registry.one.Author.nope  # noqa: B018
    assert isinstance(method.value, AttributeError)
    assert "nope" in str(method.value)
    assert all(name in str(method.value) for name in ("create", "partial_update", "destroy"))
    assert not hasattr(registry.one.Author, "nope")
    # Author is not watched: the error says what would serve its Watch.
    with pytest.raises(exceptions.UnknownMethod) as watch:
        registry.one.Author.watch  # noqa: B018
    assert "marks `watch: true`" in str(watch.value)
    # a client that reflected the producer before it gained Watch: how to see it without a restart
    assert "then call registry.one.refresh(), or restart it." in str(watch.value)


def test_error_texts_name_the_servlet_and_the_service_once(settings, servers):
    """A servlet named like the proto package (``catalog``) is not written ``catalog.catalog``."""
    add_servlets(settings, catalog=servlet_entry(servers.one.port))
    with pytest.raises(exceptions.UnknownMethod) as method:
        registry.catalog.Author.nope  # noqa: B018
    assert str(method.value) == (
        "No method 'nope' on catalog.Author (servlet 'catalog'). "
        "Available: count, create, destroy, list, partial_update, retrieve, update."
    )
    with pytest.raises(exceptions.UnknownService) as service:
        registry.catalog.Nope  # noqa: B018
    assert str(service.value).startswith("No service 'Nope' on servlet 'catalog'. Available: ")
    with pytest.raises(exceptions.CallError) as missing:
        registry.catalog.Author.retrieve({"id": INT32_MAX})
    assert str(missing.value) == (
        f"catalog.Author.Retrieve on servlet 'catalog': NOT_FOUND: "
        f"No catalog.Author with id={INT32_MAX}."
    )
    with pytest.raises(exceptions.AmbiguousService) as ambiguous:
        registry.three.Book  # noqa: B018
    assert str(ambiguous.value) == (
        "'Book' on servlet 'three' could mean catalog.Book, shop.Book; use the full name, "
        "e.g. registry.three['catalog.Book']."
    )


def test_registry_opens_no_connection_until_a_service_is_used(settings):
    assert registry._servlets == {}  # the settings change reset it
    dir(registry)
    assert registry._servlets == {}
    with silent_listener() as sock:
        port = sock.getsockname()[1]
        add_servlets(settings, down=servlet_entry(free_port(), 2), mute=servlet_entry(port, 1))
        down = registry.down
        mute = registry.mute
        assert repr(down) == f"<Servlet down at 127.0.0.1:{down.config.targets[0][1]}>"
        assert down._catalog is None and down._channel is None
        assert mute._catalog is None and mute._channel is None
        assert not connected(sock)  # nothing dialled yet
        with pytest.raises(exceptions.ServletUnavailable):
            down.Author  # noqa: B018
        with pytest.raises(exceptions.ServletUnavailable):
            mute.Author  # noqa: B018
        assert connected(sock)  # the first use did dial


def test_importing_the_registry_connects_nowhere(compiled):
    with silent_listener() as sock:
        bus = {"SERVLETS": {"mute": servlet_entry(sock.getsockname()[1], 1)}}
        code = (
            "import django; django.setup()\n"
            "from django_grpc_bus.client.registry import registry\n"
            "from django_grpc_bus.client.aio import aregistry\n"
            "print(len(registry._servlets), len(aregistry._servlets))\n"
            "registry.mute\n"
        )
        env = django_command_env("sqlite://:memory:", **bus_env(**bus))
        result = subprocess.run(
            [sys.executable, "-c", code],
            cwd=TESTS_DIR,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == ["0", "0"]
        assert not connected(sock)


# -- values ----------------------------------------------------------------------------------------

AWARE = dt.datetime(2021, 6, 1, 12, 30, 15, 123456, tzinfo=dt.timezone(dt.timedelta(hours=5.5)))
DURATION = dt.timedelta(days=-1, seconds=5, microseconds=7)
# SQLite keeps decimals as 8-byte floats (15 significant digits; Django documents this), so the
# 30-digit value is only exact on PostgreSQL. Both have 10 decimal places.
BIG_DECIMAL = Decimal("12345678901234567890.0123456789" if ON_POSTGRES else "12345.0123456789")
NESTED_JSON = {
    "n": 1,
    "big": 2**40,
    "neg": -7,
    "f": 2.5,
    "list": [1, None, True, "x"],
    "o": {"z": 0},
}


def everything(author: int, filepath: str, tags: list[int], **changes: Any) -> dict[str, Any]:
    request = {
        "f_int": 0,
        "f_bigint": INT64_MAX,
        "f_smallint": -32768,
        "f_posint": 2**31 - 1,
        "f_possmall": 0,
        "f_posbig": INT64_MAX,
        "f_float": 0.0,
        "f_decimal": BIG_DECIMAL,
        "f_bool": False,
        "f_char": "héllo ✓",
        "f_text": "line 1\nline 2",
        "f_slug": "a-slug",
        "f_email": "someone@example.com",
        "f_url": "https://example.com/x?y=1",
        "f_uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
        "f_ip": "2001:db8::1",
        "f_filepath": filepath,
        "f_file": "files/a.txt",
        "f_image": "images/b.png",
        "f_date": dt.date(2020, 2, 29),
        "f_datetime": AWARE,
        "f_time": dt.time(13, 14, 15, 161718),
        "f_duration": DURATION,
        "f_json": NESTED_JSON,
        "f_choice_int": 2,
        "f_choice_str": "b",
        "f_custom": "lower",
        "f_null_int": 0,
        "f_null_bool": False,
        "f_null_decimal": "-12345678.90",
        "f_blank_char": "",
        "author": author,
        "tags": tags,
    }
    request.update(changes)
    return request


def assert_json_ints(value: Any) -> None:
    if isinstance(value, dict):
        for item in value.values():
            assert_json_ints(item)
    elif isinstance(value, list):
        for item in value:
            assert_json_ints(item)
    elif isinstance(value, float):
        assert not value.is_integer(), f"{value!r} should have come back as an int"


def test_values_round_trip_through_create_and_retrieve(filepath, tag_ids):
    author = registry.one.Author.create({"name": "Values"})["id"]
    created = registry.one.Everything.create(everything(author, filepath, tag_ids))
    row = registry.one.Everything.retrieve({"id": created["id"]})
    row["tags"], created["tags"] = sorted(row["tags"]), sorted(created["tags"])
    assert row == created
    assert registry.two.Everything.retrieve({"id": created["id"]})["f_decimal"] == str(BIG_DECIMAL)

    # Integers, int64 at its maximum included, are plain ints.
    for name in ("f_bigint", "f_posbig"):
        assert type(row[name]) is int and row[name] == INT64_MAX
    assert type(row["id"]) is int and type(row["author"]) is int
    assert row["f_posint"] == 2**31 - 1 and row["f_smallint"] == -32768
    # Decimals are strings, exactly.
    assert row["f_decimal"] == str(BIG_DECIMAL)
    assert row["f_null_decimal"] == "-12345678.90"
    # Zero values are kept, not confused with unset.
    assert row["f_int"] == 0 and type(row["f_int"]) is int
    assert row["f_bool"] is False
    assert row["f_float"] == 0.0 and row["f_possmall"] == 0
    assert row["f_null_int"] == 0  # optional, set to zero: 0, not None
    assert row["f_null_bool"] is False
    assert row["f_blank_char"] == ""
    # Unset optional fields come back as None; an unset field with a model default gets it.
    for name in ("f_null_char", "f_null_datetime", "f_null_date", "f_null_json", "editor", "token"):
        assert row[name] is None, name
    assert row["f_default_int"] == 7
    # Repeated fields are lists.
    assert isinstance(row["tags"], list) and row["tags"] == sorted(tag_ids)
    # Timestamps are aware datetimes, the same instant; durations are timedeltas.
    assert isinstance(row["f_datetime"], dt.datetime) and row["f_datetime"].tzinfo is not None
    assert row["f_datetime"] == AWARE
    assert row["f_auto_now"].tzinfo is not None
    assert row["f_duration"] == DURATION and isinstance(row["f_duration"], dt.timedelta)
    # JSON keeps its ints as ints.
    assert row["f_json"] == NESTED_JSON
    assert_json_ints(row["f_json"])
    assert type(row["f_json"]["big"]) is int and type(row["f_json"]["n"]) is int
    # Dates, times and UUIDs are strings in the proto, written from Python values.
    assert row["f_date"] == "2020-02-29"
    assert row["f_time"] == "13:14:15.161718"
    assert row["f_uuid"] == "12345678-1234-5678-1234-567812345678"
    assert row["f_char"] == "héllo ✓"
    if django.VERSION >= (5, 0):
        assert row["f_generated"] == 1  # f_int + 1


def test_partial_update_takes_a_field_mask_as_a_list_of_paths(filepath, tag_ids):
    author = registry.one.Author.create({"name": "Masked"})["id"]
    created = registry.one.Everything.create(everything(author, filepath, []))
    changed = registry.one.Everything.partial_update(
        {
            "data": {"id": created["id"], "f_int": 41, "f_bool": True, "f_char": "not in mask"},
            "update_mask": ["f_int", "f_bool"],
        }
    )
    assert changed["f_int"] == 41 and changed["f_bool"] is True
    assert changed["f_char"] == created["f_char"]
    row = registry.one.Everything.retrieve({"id": created["id"]})
    assert (row["f_int"], row["f_bool"], row["f_char"]) == (41, True, "héllo ✓")
    assert row["f_decimal"] == str(BIG_DECIMAL)


# UTC+05:30 all year (no daylight saving time), so the offset a naive value gets is certain.
KOLKATA = "Asia/Kolkata"
SIX_PM_IN_KOLKATA = dt.datetime(2021, 6, 1, 12, 30, tzinfo=dt.timezone.utc)


def test_a_naive_datetime_is_in_the_consumers_time_zone_with_a_warning(settings, filepath):
    """With USE_TZ, a naive datetime is taken in TIME_ZONE, and warned about as Django does."""
    settings.TIME_ZONE = KOLKATA
    author = registry.one.Author.create({"name": "Naive"})["id"]
    naive = dt.datetime(2021, 6, 1, 18, 0)
    with pytest.warns(RuntimeWarning, match=r"naive datetime \(2021-06-01 18:00:00\)") as caught:
        created = registry.one.Everything.create(everything(author, filepath, [], f_datetime=naive))
    # Once (other threads of the test process may warn about other things meanwhile).
    naive_warnings = [w for w in caught if "naive datetime" in str(w.message)]
    assert len(naive_warnings) == 1 and KOLKATA in str(naive_warnings[0].message)
    row = registry.one.Everything.retrieve({"id": created["id"]})
    assert row["f_datetime"] == SIX_PM_IN_KOLKATA
    assert row["f_datetime"].utcoffset() == dt.timedelta(0)
    # Text without an offset is read in TIME_ZONE too, as DRF reads it, and without a warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        changed = registry.one.Everything.partial_update(
            {
                "data": {"id": created["id"], "f_null_datetime": "2021-06-01T18:00:00"},
                "update_mask": ["f_null_datetime"],
            }
        )
    assert changed["f_null_datetime"] == SIX_PM_IN_KOLKATA


def test_without_use_tz_naive_datetimes_are_local_time_in_time_zone(settings, filepath):
    settings.USE_TZ = False
    settings.TIME_ZONE = KOLKATA
    author = registry.one.Author.create({"name": "Local"})["id"]
    naive = dt.datetime(2021, 6, 1, 18, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        created = registry.one.Everything.create(everything(author, filepath, [], f_datetime=naive))
    assert created["f_datetime"] == naive  # read back as local time, naive
    settings.USE_TZ = True
    row = registry.one.Everything.retrieve({"id": created["id"]})
    assert row["f_datetime"] == SIX_PM_IN_KOLKATA


def test_a_generated_message_instance_is_a_valid_request():
    from generated_grpc.grpc import Author_pb2

    made = registry.one.Author.create(Author_pb2.AuthorData(name="From a message"))
    assert made["name"] == "From a message"
    found = registry.one.Author.retrieve(Author_pb2.AuthorLookupRequest(id=made["id"]))
    assert found == made
    with pytest.raises(exceptions.RequestError, match=r"catalog\.AuthorData"):
        registry.one.Author.create(Author_pb2.AuthorLookupRequest(id=1))


def test_crud_metadata_and_several_hosts(settings, servers):
    author = registry.one.Author
    made = author.create({"name": "Crud"}, metadata={"X-Request-Id": "abc"})
    assert author.update({"id": made["id"], "name": "Crud 2"}, metadata=[("x-a", "1")]) == {
        "id": made["id"],
        "name": "Crud 2",
    }
    assert author.destroy({"id": made["id"]}) == {}
    with pytest.raises(exceptions.CallError) as gone:
        author.retrieve({"id": made["id"]}, timeout=3)
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND

    # One servlet over two servers (round robin): both serve the same database.
    hosts = [f"127.0.0.1:{servers.one.port}", f"127.0.0.1:{servers.two.port}"]
    add_servlets(settings, pair={"hosts": hosts, "timeout": TIMEOUT})
    made = registry.pair.Author.create({"name": "Pair"})
    for _ in range(6):
        assert registry.pair.Author.retrieve({"id": made["id"]}) == made
    assert registry.pair.config.address == ", ".join(hosts)


# -- bad requests ----------------------------------------------------------------------------------


def test_bad_requests_fail_before_anything_is_sent():
    before = author_count()
    cases = [
        ({"nme": "typo"}, "nme"),
        ({"name": 5}, "name"),
        ({"name": b"bytes"}, "name"),
        ({"id": "1", "name": "x"}, "id"),
        ({"id": True, "name": "x"}, "id"),
        ({"id": 2**40, "name": "x"}, "id"),  # int32 overflow
    ]
    for request, field in cases:
        with pytest.raises(exceptions.RequestError) as caught:
            registry.one.Author.create(request)
        assert isinstance(caught.value, ValueError)
        message = str(caught.value)
        assert field in message, message
        assert "id" in message and "name" in message, f"valid fields not listed: {message}"
    with pytest.raises(exceptions.RequestError) as nested:
        registry.one.Author.partial_update({"data": {"nope": 1}, "update_mask": ["name"]})
    assert "data.nope" in str(nested.value)
    with pytest.raises(exceptions.RequestError):
        registry.one.Author.create(["not", "a", "dict"])
    with pytest.raises(exceptions.RequestError):
        registry.one.Author.list({"page_size": "3"})  # raised on the call, not on iteration
    assert author_count() == before


# -- failed calls ----------------------------------------------------------------------------------


def test_a_validation_error_is_a_call_error_with_violations(filepath):
    with pytest.raises(exceptions.CallError) as caught:
        registry.one.Author.create({"name": ""})
    error = caught.value
    assert isinstance(error, grpc.RpcError)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "name" in error.details()
    assert error.servlet == "one"
    assert error.method == "catalog.Author.Create"
    assert error.violations == [("name", "This field may not be blank.")]

    author = registry.one.Author.create({"name": "Validated"})["id"]
    with pytest.raises(exceptions.CallError) as word:
        registry.one.Everything.create(everything(author, filepath, [], f_char="forbidden"))
    assert ("f_char", "This word is not allowed.") in word.value.violations

    with pytest.raises(exceptions.CallError) as empty:
        registry.one.Everything.create({})
    fields = {field for field, _ in empty.value.violations}
    assert {"f_decimal", "f_char", "author"} <= fields
    assert all(isinstance(item, tuple) and len(item) == 2 for item in empty.value.violations)


def test_a_required_foreign_key_left_unset_is_required_not_an_invalid_pk(filepath):
    """proto3 sends 0 for an unset int32 ``author``; no auto key is 0, so it is "not given"."""
    with pytest.raises(exceptions.CallError) as empty:
        registry.one.Book.create({})
    assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert dict(empty.value.violations) == {
        "title": "This field may not be blank.",
        "author": "This field is required.",
        "isbn": "This field may not be blank.",
    }
    assert "Invalid pk" not in empty.value.details()

    author = registry.one.Author.create({"name": "Zero"})["id"]
    row = registry.one.Everything.create(everything(author, filepath, []))
    # Update replaces the row: an author left unset is required there too.
    with pytest.raises(exceptions.CallError) as update:
        registry.one.Everything.update(everything(0, filepath, [], id=row["id"]))
    assert update.value.violations == [("author", "This field is required.")]
    # A mask naming it with no value is refused as for any required field.
    with pytest.raises(exceptions.CallError) as masked:
        registry.one.Everything.partial_update(
            {"data": {"id": row["id"]}, "update_mask": ["author"]}
        )
    assert masked.value.violations == [
        ("data.author", "Set a value or leave it out of update_mask.")
    ]
    # A key that names no row is still reported as such (Book: no row is created).
    with pytest.raises(exceptions.CallError) as missing:
        registry.one.Book.create({"title": "t", "author": INT32_MAX, "isbn": "9780000000998"})
    assert missing.value.violations == [
        ("author", f'Invalid pk "{INT32_MAX}" - object does not exist.')
    ]


def test_a_row_is_found_by_any_unique_field_the_lookup_request_carries():
    """shop.Customer has a unique email, so CustomerLookupRequest carries id and email."""
    customers = registry.three.Customer
    email = f"{uuid.uuid4().hex[:10]}@example.com"
    made = customers.create({"email": email})
    other = customers.create({"email": f"other-{email}"})
    assert customers.retrieve({"email": email}) == made
    assert customers.retrieve({"id": made["id"]}) == made
    # Several set: all must match, as a filter.
    assert customers.retrieve({"id": made["id"], "email": email}) == made
    with pytest.raises(exceptions.CallError) as mismatch:
        customers.retrieve({"id": other["id"], "email": email})
    assert mismatch.value.code() == grpc.StatusCode.NOT_FOUND
    assert mismatch.value.details() == (f"No shop.Customer with id={other['id']}, email={email!r}.")
    # None set: the fields one may set.
    for method in (customers.retrieve, customers.destroy):
        with pytest.raises(exceptions.CallError) as neither:
            method({})
        assert neither.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert neither.value.details() == "id or email is required to find the row."
        assert neither.value.violations == [
            ("id", "Set one of: id, email."),
            ("email", "Set one of: id, email."),
        ]
    # Update and PartialUpdate find the row by the primary key in data: an email there is the
    # new value, not a way to find the row.
    renamed = customers.partial_update(
        {"data": {"id": made["id"], "email": f"new-{email}"}, "update_mask": ["email"]}
    )
    assert renamed == {"id": made["id"], "email": f"new-{email}"}
    assert customers.update({"id": made["id"], "email": email}) == made
    customers.destroy({"email": email})
    with pytest.raises(exceptions.CallError) as gone:
        customers.retrieve({"id": made["id"]})
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND
    assert customers.retrieve({"email": f"other-{email}"}) == other


def test_not_found_and_internal():
    with pytest.raises(exceptions.CallError) as missing:
        registry.one.Author.retrieve({"id": 10**9})
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert missing.value.violations == []
    assert not isinstance(missing.value, exceptions.ServletUnavailable)
    with pytest.raises(exceptions.CallError) as by_isbn:
        registry.one.Book.retrieve({"isbn": "no-such-isbn"})
    assert by_isbn.value.code() == grpc.StatusCode.NOT_FOUND

    with pytest.raises(exceptions.CallError) as internal:
        registry.one.Author.create({"name": "explode"})
    assert internal.value.code() == grpc.StatusCode.INTERNAL
    assert "secret" not in internal.value.details()
    assert internal.value.method == "catalog.Author.Create"
    # The server is fine afterwards.
    assert registry.one.Author.create({"name": "after"})["name"] == "after"


# -- unreachable servers, deadlines ----------------------------------------------------------------


def test_a_closed_port_raises_servlet_unavailable_naming_servlet_and_address(settings):
    port = free_port()
    add_servlets(settings, down=servlet_entry(port, 2))
    for _attempt in range(2):  # a failed fetch is not cached as a success
        started = time.monotonic()
        with pytest.raises(exceptions.ServletUnavailable) as caught:
            registry.down.Author.retrieve({"id": 1})
        assert time.monotonic() - started < 5
        error = caught.value
        assert isinstance(error, exceptions.CallError) and isinstance(error, grpc.RpcError)
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert error.servlet == "down"
        assert "'down'" in str(error) and f"127.0.0.1:{port}" in str(error)
        assert f"127.0.0.1:{port}" in error.details()


def test_a_server_that_never_answers_fails_within_the_deadline(settings):
    with silent_listener() as sock:
        port = sock.getsockname()[1]
        add_servlets(settings, mute=servlet_entry(port, 1))
        started = time.monotonic()
        with pytest.raises(exceptions.ServletUnavailable) as caught:
            registry.mute.Author.retrieve({"id": 1})
        elapsed = time.monotonic() - started
    assert 0.5 < elapsed < 5
    assert caught.value.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)
    assert "'mute'" in str(caught.value) and f"127.0.0.1:{port}" in str(caught.value)


def test_a_call_past_its_deadline_is_deadline_exceeded():
    started = time.monotonic()
    with pytest.raises(exceptions.CallError) as caught:
        registry.one.Author.create({"name": "slow:1.5"}, timeout=0.2)
    assert time.monotonic() - started < 1.2
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The servlet's default applies when no timeout is given, and the call works again.
    assert registry.one.Author.create({"name": "slow:0.1"})["name"] == "slow:0.1"


def test_a_tiny_timeout_on_a_fast_call_is_passed_through():
    """timeout=0.001 reaches grpc; grpcio itself may still finish a sub-millisecond call."""
    made = registry.one.Author.create({"name": "tiny deadline"})
    try:
        assert registry.one.Author.retrieve({"id": made["id"]}, timeout=0.001) == made
    except exceptions.CallError as exc:
        assert exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def services_soon(servlet, within: float = 5.0) -> list[str]:
    """`servlet.services`, refreshing while the first attempts fail.

    grpcio shares connections (subchannels) between channels to the same address, so the new
    channel of refresh() can inherit the old one's reconnect backoff: its first call may fail
    with "Connection refused" for a moment although the server is serving again.
    """
    deadline = time.monotonic() + within
    while True:
        try:
            return servlet.services
        except exceptions.ServletUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
            servlet.refresh()


def test_a_stopped_server_fails_fast_and_refresh_reaches_its_restart(settings, client_database):
    server = start_server(client_database)
    port = server.port
    restarted = None
    try:
        add_servlets(settings, temp=servlet_entry(port, 2))
        temp = registry.temp
        made = temp.Author.create({"name": "before the stop"})
        assert "shop.Customer" not in temp.services
        assert server.stop() == 0

        for call in (
            lambda: temp.Author.retrieve({"id": made["id"]}),  # retried by policy
            lambda: temp.Author.create({"name": "while down"}),  # never retried
            lambda: list(temp.Author.list()),
        ):
            started = time.monotonic()
            with pytest.raises(exceptions.CallError) as caught:
                call()
            assert time.monotonic() - started < 5
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert f"127.0.0.1:{port}" in str(caught.value)

        # Back on the same port, now serving more services: refresh() sees them.
        restarted = start_server(client_database, address=f"127.0.0.1:{port}", env=FULL_HANDLER)
        assert restarted.port == port
        temp.refresh()
        assert "shop.Customer" in services_soon(temp)
        assert temp.Author.retrieve({"id": made["id"]}) == made
        with pytest.raises(exceptions.AmbiguousService):
            temp.Book  # noqa: B018
    finally:
        server.stop()
        if restarted is not None:
            assert restarted.stop() == 0, restarted.output


# -- streams ---------------------------------------------------------------------------------------


def test_list_is_a_generator_of_rows_flattened_from_batches(books):
    rows = registry.one.Book.list()
    assert inspect.isgenerator(rows)
    rows = list(rows)
    assert len(rows) == 10
    assert all(
        isinstance(row, dict) and set(row) == {"id", "title", "author", "isbn"} for row in rows
    )
    assert sorted(row["isbn"] for row in rows) == sorted(book["isbn"] for book in books)
    # Lookup by the service's lookup_field.
    assert registry.one.Book.retrieve({"isbn": books[3]["isbn"]}) == books[3]


def test_batches_keep_the_messages_and_their_page_tokens(books):
    batches = list(registry.one.Book.list.batches())
    assert [len(batch["results"]) for batch in batches] == [3, 3, 3, 1]  # LIST_BATCH_SIZE 3
    # A whole stream's batches but the last carry the token of the rows after them: where a
    # stream cut there resumes (SPEC §13).
    assert [bool(batch["next_page_token"]) for batch in batches] == [True, True, True, False]
    resumed = list(registry.one.Book.list.batches({"page_token": batches[1]["next_page_token"]}))
    assert [row for batch in resumed for row in batch["results"]] == batches[2]["results"] + (
        batches[3]["results"]
    )

    seen: list[dict[str, Any]] = []
    token, pages = "", 0
    while True:
        page = list(registry.one.Book.list.batches({"page_size": 4, "page_token": token}))
        pages += 1
        rows = [row for batch in page for row in batch["results"]]
        assert 1 <= len(rows) <= 4
        seen += rows
        token = page[-1]["next_page_token"]
        if not token:
            break
        assert pages < 10
    assert pages == 3
    assert sorted(row["id"] for row in seen) == sorted(book["id"] for book in books)


def test_closing_a_stream_early_cancels_the_call(books):
    rows = registry.one.Book.list()
    first = next(rows)
    assert first["isbn"]
    calls = [value for value in rows.gi_frame.f_locals.values() if isinstance(value, grpc.Call)]
    assert len(calls) == 1
    rows.close()
    assert calls[0].code() == grpc.StatusCode.CANCELLED

    # Abandoning a loop (the generator is collected) cancels as well.
    rows = registry.one.Book.list()
    for _row in rows:
        break
    (call,) = [value for value in rows.gi_frame.f_locals.values() if isinstance(value, grpc.Call)]
    del rows
    assert call.code() == grpc.StatusCode.CANCELLED

    # An error in a stream is a CallError too, raised while iterating.
    rows = registry.one.Book.list({"page_size": 2, "page_token": "not a token"})
    with pytest.raises(exceptions.CallError) as bad_token:
        next(rows)
    assert bad_token.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [field for field, _ in bad_token.value.violations] == ["page_token"]
    assert bad_token.value.method == "catalog.Book.List"

    # The server keeps serving.
    assert len(list(registry.one.Book.list())) == 10
    assert registry.one.Book.retrieve({"isbn": books[0]["isbn"]}) == books[0]


# -- threads, caching, refresh ---------------------------------------------------------------------


def test_twenty_threads_share_one_channel_and_one_catalog_fetch(monkeypatch):
    ids = {registry.two.Author.create({"name": f"T{i}"})["id"]: f"T{i}" for i in range(20)}
    fetches = counting_load_catalog(monkeypatch)
    servlet = registry.one
    barrier = threading.Barrier(20, timeout=30)
    channels: list[Any] = []
    failures: list[BaseException] = []
    wrong: list[Any] = []
    keys = list(ids)

    def work(number: int) -> None:
        try:
            barrier.wait()
            for i in range(10):
                key = keys[(number + i) % len(keys)]
                row = registry.one.Author.retrieve({"id": key}, timeout=10)
                if row != {"id": key, "name": ids[key]}:
                    wrong.append(row)
                channels.append(servlet.channel)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert failures == [] and wrong == []
    assert len(channels) == 200
    assert all(channel is channels[0] for channel in channels)
    assert fetches.count("one") == 1


def test_refresh_drops_the_catalog_and_the_channel(monkeypatch):
    fetches = counting_load_catalog(monkeypatch)
    servlet = registry.one
    made = servlet.Author.create({"name": "Refresh"})
    retrieve = servlet.Author.retrieve  # held across the refresh
    old_channel = servlet.channel
    old_pool = servlet.catalog.pool
    servlet.refresh()
    assert fetches == ["one"]
    with pytest.raises(ValueError):  # the old channel is closed
        old_channel.unary_unary("/catalog.Author/Retrieve")(b"", timeout=1)
    assert servlet.Author.retrieve({"id": made["id"]}) == made
    assert fetches == ["one", "one"]
    assert servlet.channel is not old_channel
    assert servlet.catalog.pool is not old_pool
    assert retrieve({"id": made["id"]}) == made  # a Method from before uses the new channel
    assert registry.one is servlet  # refresh keeps the servlet, only its state goes


# -- a third-party reflective client ---------------------------------------------------------------


def test_grpc_requests_reads_the_same_row(servers, filepath):
    from google.protobuf.descriptor_pool import DescriptorPool
    from grpc_requests import Client

    made = registry.one.Author.create({"name": "Shared"})
    author = made["id"]
    row = registry.one.Everything.retrieve(
        {"id": registry.one.Everything.create(everything(author, filepath, []))["id"]}
    )
    client = Client(servers.one.target, descriptor_pool=DescriptorPool())
    try:
        assert "catalog.Author" in client.service_names
        theirs = client.request("catalog.Author", "Retrieve", {"id": author}, timeout=TIMEOUT)
        assert theirs == registry.one.Author.retrieve({"id": author}) == made
        other = client.request("catalog.Everything", "Retrieve", {"id": row["id"]}, timeout=TIMEOUT)
    finally:
        client.channel.close()
    # protobuf's JSON mapping: int64 as a string, Timestamp as RFC 3339, Duration as "Ns".
    assert int(other["f_bigint"]) == row["f_bigint"] == INT64_MAX
    assert other["f_decimal"] == row["f_decimal"]
    assert other["f_char"] == row["f_char"]
    assert other["f_json"] == row["f_json"]
    assert (
        dt.datetime.fromisoformat(other["f_datetime"].replace("Z", "+00:00")) == row["f_datetime"]
    )
    assert other["author"] == row["author"] == author
    assert other.get("f_null_int", 0) == row["f_null_int"] == 0
    assert "f_null_char" not in other and row["f_null_char"] is None


# -- configuration ---------------------------------------------------------------------------------


def test_a_malformed_servlet_does_not_break_its_siblings(settings):
    add_servlets(settings, broken={"host": "127.0.0.1"})
    assert registry.one.Author.methods


def test_a_malformed_servlet_is_reported_by_name(settings):
    add_servlets(settings, broken={"host": "127.0.0.1"})
    with pytest.raises((ImproperlyConfigured, exceptions.ClientError), match="broken"):
        registry.broken  # noqa: B018
