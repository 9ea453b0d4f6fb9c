"""``grpclist`` and ``grpccall`` against real ``rungrpcserver`` processes."""

from __future__ import annotations

import datetime as dt
import io
import json
import uuid

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from support import bus_env, free_port, running_server, servlet_entry

from django_grpc_bus.client.registry import registry

TIMEOUT = 5
FULL_HANDLER = bus_env(ROOT_HANDLERS_HOOK="handlers.full_handler")


@pytest.fixture(scope="module")
def full_server(server_database):
    with running_server(server_database, env=FULL_HANDLER) as server:
        yield server


@pytest.fixture(scope="module")
def down_port() -> int:
    return free_port()


@pytest.fixture(autouse=True)
def servlets(settings, grpc_server, full_server, down_port):
    settings.MESSAGE_BUS = {
        **settings.MESSAGE_BUS,
        "SERVLETS": {
            "one": servlet_entry(grpc_server.port, TIMEOUT),
            "three": servlet_entry(full_server.port, TIMEOUT),
            "down": servlet_entry(down_port, 2),
        },
    }


def run(name: str, *args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command(name, *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def fails(name: str, *args: str) -> tuple[int, str, str]:
    """Run a command expected to exit non-zero: (code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(SystemExit) as caught:
        call_command(name, *args, stdout=out, stderr=err)
    return caught.value.code, out.getvalue(), err.getvalue()


# -- grpclist --------------------------------------------------------------------------------------


def test_grpclist_prints_services_methods_and_request_fields():
    out, _ = run("grpclist", "one")
    lines = out.splitlines()
    for service in ("catalog.Author", "catalog.Book", "catalog.Everything", "catalog.Tag"):
        assert service in lines
    assert "  create (Create): catalog.AuthorData -> catalog.AuthorData" in lines
    assert "  list (List): catalog.AuthorListRequest -> stream catalog.AuthorListResponse" in lines
    assert (
        "  partial_update (PartialUpdate): catalog.AuthorPartialUpdateRequest -> "
        "catalog.AuthorData" in lines
    )
    assert "    request:" in lines
    assert "      name: string" in lines
    assert "      id: optional int32" in lines
    assert "      update_mask: google.protobuf.FieldMask" in lines
    assert "      tags: repeated int32" in lines
    assert "      f_datetime: google.protobuf.Timestamp" in lines
    assert "grpc.reflection.v1.ServerReflection" not in out


def test_grpclist_with_a_service():
    out, _ = run("grpclist", "one", "Author")
    assert out.splitlines()[0] == "catalog.Author"
    assert "catalog.Book" not in out and "catalog.Everything" not in out
    assert run("grpclist", "one", "catalog.Author") == (out, "")
    brief, _ = run("grpclist", "one", "Author", "--brief")
    assert "request:" not in brief
    assert "  retrieve (Retrieve): catalog.AuthorLookupRequest -> catalog.AuthorData" in brief

    shop, _ = run("grpclist", "three", "shop.Book")
    assert shop.splitlines()[0] == "shop.Book"
    with pytest.raises(CommandError) as ambiguous:
        run("grpclist", "three", "Book")
    assert "catalog.Book" in str(ambiguous.value) and "shop.Book" in str(ambiguous.value)
    with pytest.raises(CommandError) as unknown:
        run("grpclist", "one", "Nope")
    assert "Nope" in str(unknown.value) and "Author" in str(unknown.value)


def test_grpclist_with_a_bare_host_port(grpc_server, full_server):
    assert run("grpclist", f"127.0.0.1:{grpc_server.port}") == run("grpclist", "one")
    out, _ = run("grpclist", f"127.0.0.1:{full_server.port}", "Customer")
    assert out.splitlines()[0] == "shop.Customer"


def test_grpclist_unknown_or_unreachable_servlet(down_port):
    with pytest.raises(CommandError) as unknown:
        run("grpclist", "nope")
    message = str(unknown.value)
    assert "nope" in message and all(name in message for name in ("one", "three", "down"))
    with pytest.raises(CommandError) as down:
        run("grpclist", "down")
    assert "'down'" in str(down.value) and f"127.0.0.1:{down_port}" in str(down.value)


# -- grpccall --------------------------------------------------------------------------------------


def test_grpccall_prints_the_response_as_json(grpc_server):
    out, err = run("grpccall", "one", "Author.create", '{"name": "Cli"}')
    assert err == ""
    made = json.loads(out)
    assert made == {"id": made["id"], "name": "Cli"} and isinstance(made["id"], int)
    request = json.dumps({"id": made["id"]})
    assert json.loads(run("grpccall", "one", "Author.retrieve", request)[0]) == made
    assert json.loads(run("grpccall", "one", "catalog.Author.Retrieve", request)[0]) == made
    by_address = run("grpccall", f"127.0.0.1:{grpc_server.port}", "Author.retrieve", request)
    assert json.loads(by_address[0]) == made
    pretty, _ = run("grpccall", "one", "Author.retrieve", request, "--indent", "2")
    assert pretty.count("\n") > 2 and json.loads(pretty) == made
    assert registry.one.Author.retrieve({"id": made["id"]}) == made


def test_grpccall_a_stream_prints_one_json_document_per_line():
    for i in range(3):
        run("grpccall", "one", "Author.create", json.dumps({"name": f"Line {i}"}))
    out, _ = run("grpccall", "one", "Author.list")
    lines = out.splitlines()
    rows = [json.loads(line) for line in lines]
    assert rows == list(registry.one.Author.list())
    assert all(set(row) == {"id", "name"} for row in rows)
    paged, _ = run("grpccall", "one", "Author.list", '{"page_size": 2}')
    assert len(paged.splitlines()) == 2


def test_grpccall_json_values(filepath):
    author = json.loads(run("grpccall", "one", "Author.create", '{"name": "Values"}')[0])["id"]
    request = {
        "f_int": 7,
        "f_bigint": 2**63 - 1,
        "f_smallint": 0,
        "f_posint": 0,
        "f_possmall": 0,
        "f_posbig": 0,
        "f_float": 1.5,
        "f_decimal": "12.3400000000",
        "f_bool": True,
        "f_char": "cli",
        "f_text": "t",
        "f_slug": "s",
        "f_email": "cli@example.com",
        "f_url": "https://example.com/",
        "f_uuid": str(uuid.uuid4()),
        "f_ip": "10.0.0.1",
        "f_filepath": filepath,
        "f_file": "files/c.txt",
        "f_image": "images/c.png",
        "f_date": "2001-02-03",
        "f_datetime": "2001-02-03T04:05:06.789+02:00",
        "f_time": "04:05:06",
        "f_duration": 90.5,
        "f_json": {"a": [1, 2], "b": None},
        "f_choice_int": 1,
        "f_choice_str": "a",
        "f_custom": "c",
        "author": author,
    }
    out, _ = run("grpccall", "one", "Everything.create", json.dumps(request))
    row = json.loads(out)
    assert row["f_bigint"] == 2**63 - 1
    assert row["f_decimal"] == "12.3400000000"
    assert dt.datetime.fromisoformat(row["f_datetime"]) == dt.datetime.fromisoformat(
        "2001-02-03T04:05:06.789+02:00"
    )
    assert row["f_duration"] == "90.5s"
    assert row["f_json"] == {"a": [1, 2], "b": None}
    assert row["f_null_int"] is None and row["f_null_datetime"] is None
    assert row["f_binary"] is None or isinstance(row["f_binary"], str)


def test_grpccall_accepts_metadata_and_timeout():
    out, _ = run(
        "grpccall",
        "one",
        "Author.create",
        '{"name": "With metadata"}',
        "--metadata",
        "x-request-id=abc",
        "--metadata",
        "X-Tenant=t1",
        "--timeout",
        "5",
    )
    assert json.loads(out)["name"] == "With metadata"
    code, _, err = fails(
        "grpccall", "one", "Author.create", '{"name": "slow:1.5"}', "--timeout", "0.2"
    )
    assert code == 1
    assert err.startswith("DEADLINE_EXCEEDED")
    with pytest.raises(CommandError, match="KEY=VALUE"):
        run("grpccall", "one", "Author.create", "{}", "--metadata", "novalue")


def test_grpccall_errors_exit_1_with_the_status_and_violations_on_stderr():
    code, out, err = fails("grpccall", "one", "Author.create", '{"name": ""}')
    assert code == 1 and out == ""
    lines = err.splitlines()
    assert lines[0].startswith("INVALID_ARGUMENT: ")
    assert "  name: This field may not be blank." in lines

    code, _, err = fails("grpccall", "one", "Author.retrieve", '{"id": 1000000000}')
    assert code == 1 and err.startswith("NOT_FOUND: ")
    code, _, err = fails("grpccall", "one", "Author.create", '{"name": "explode"}')
    assert code == 1 and err.startswith("INTERNAL: ") and "secret" not in err
    code, _, err = fails("grpccall", "one", "Author.list", '{"page_token": "bad"}')
    assert code == 1 and err.startswith("INVALID_ARGUMENT: ") and "  page_token: " in err


def test_grpccall_an_unreachable_servlet_exits_1_naming_it(down_port):
    code, _, err = fails("grpccall", "down", "Author.retrieve", '{"id": 1}')
    assert code == 1
    assert err.startswith("UNAVAILABLE: ")
    assert "'down'" in err and f"127.0.0.1:{down_port}" in err


def test_grpccall_usage_errors_are_command_errors():
    with pytest.raises(CommandError) as unknown:
        run("grpccall", "nope", "Author.create", "{}")
    assert all(name in str(unknown.value) for name in ("nope", "one", "three", "down"))
    with pytest.raises(CommandError, match="not JSON"):
        run("grpccall", "one", "Author.create", "{name: x}")
    with pytest.raises(CommandError, match=r"Service\.method"):
        run("grpccall", "one", "create", "{}")
    with pytest.raises(CommandError) as method:
        run("grpccall", "one", "Author.nope", "{}")
    assert "partial_update" in str(method.value)
    with pytest.raises(CommandError) as service:
        run("grpccall", "one", "Nope.create", "{}")
    assert "Author" in str(service.value)
    with pytest.raises(CommandError) as ambiguous:
        run("grpccall", "three", "Book.list")
    assert "shop.Book" in str(ambiguous.value)
    with pytest.raises(CommandError) as field:
        run("grpccall", "one", "Author.create", '{"nme": "x"}')
    assert "nme" in str(field.value) and "name" in str(field.value)
    with pytest.raises(CommandError):
        run("grpccall", "one", "Author.create", "[1, 2]")


def test_a_malformed_servlet_is_a_command_error(settings):
    settings.MESSAGE_BUS = {**settings.MESSAGE_BUS, "SERVLETS": {"broken": {"host": "h"}}}
    for command in ("grpclist", "grpccall"):
        args = ["broken"] if command == "grpclist" else ["broken", "Author.list"]
        with pytest.raises(CommandError, match=r"SERVLETS'\]\['broken'\]"):
            call_command(command, *args, stdout=io.StringIO(), stderr=io.StringIO())
    with pytest.raises(CommandError):
        call_command("grpclist", "host:notaport:1", stdout=io.StringIO())


def test_an_argument_that_is_neither_a_servlet_nor_an_address():
    with pytest.raises(CommandError, match="neither a servlet in MESSAGE_BUS"):
        call_command("grpclist", "nonsense", stdout=io.StringIO())
