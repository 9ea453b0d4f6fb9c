"""One schema for a SERVLETS entry (client.config.servlet_problems): the checks report its
problems under their ids, the client refuses an entry with an error; host:port text is parsed
by transport.parse_address for both."""

from __future__ import annotations

import pytest
from django.core.checks import run_checks

from django_grpc_bus.client.config import (
    ADDRESS,
    ENTRY,
    NAME,
    SETTING,
    UNKNOWN_KEY,
    ServletConfig,
    servlet_problems,
)
from django_grpc_bus.client.exceptions import ServletMisconfigured
from django_grpc_bus.transport import AddressError, PortError, parse_address

VALID = {"host": "127.0.0.1", "port": 50051}


def kinds(name, entry) -> list[tuple[str, str | None]]:
    return [(problem.kind, problem.key) for problem in servlet_problems(name, entry)]


def test_a_valid_entry_has_no_problems():
    assert servlet_problems("library", VALID) == []
    assert servlet_problems("pair", {"hosts": ["10.0.0.1:1", ("10.0.0.2", 2)], "timeout": 2}) == []


@pytest.mark.parametrize(
    ("name", "entry", "expected"),
    [
        ("my-servlet", VALID, [(NAME, None)]),
        ("library", "127.0.0.1:50051", [(ENTRY, None)]),
        ("library", {"host": "h"}, [(ENTRY, "port")]),
        ("library", {}, [(ENTRY, None)]),
        ("library", {"host": "", "port": 1}, [(ENTRY, "host")]),
        ("library", {"host": "h", "port": "50051"}, [(ADDRESS, "port")]),
        ("library", {"hosts": ["10.0.0.1"]}, [(ADDRESS, "hosts")]),
        ("library", {**VALID, "timeout": 0}, [(SETTING, "timeout")]),
        ("library", {**VALID, "metadata": ["x"]}, [(SETTING, "metadata")]),
        ("library", {**VALID, "tls": {"CERT": "x"}}, [(SETTING, "tls")]),
        ("library", {**VALID, "options": [("grpc.x", 1, 2)]}, [(SETTING, "options")]),
        ("library", {**VALID, "ssl": True}, [(UNKNOWN_KEY, "ssl")]),
    ],
)
def test_each_problem_has_its_kind_and_key(name, entry, expected):
    assert kinds(name, entry) == expected


def test_warnings_are_not_serious():
    problems = servlet_problems("my-servlet", {**VALID, "ssl": True})
    assert [problem.serious for problem in problems] == [False, False]
    assert ServletConfig.from_settings("my-servlet", {**VALID, "ssl": True}).targets == (
        ("127.0.0.1", 50051),
    )


@pytest.mark.parametrize(
    "entry", [{"host": "h"}, {"host": "h", "port": "50051"}, {**VALID, "timeout": "5"}]
)
def test_the_client_refuses_what_the_checks_call_an_error(entry):
    with pytest.raises(ServletMisconfigured) as refused:
        ServletConfig.from_settings("broken", entry)
    first = next(problem for problem in servlet_problems("broken", entry) if problem.serious)
    assert str(refused.value) == f"{first.message} Run `manage.py check` for every problem."


def test_the_checks_give_the_schemas_problems_their_ids(project):
    project.configure(
        SERVLETS={
            "my-servlet": {"host": "h", "port": 0, "options": "x", "ssl": 1},
            "gone": {"host": "h"},
        }
    )
    found = [(m.id, m.msg) for m in run_checks(tags=["grpc_bus"])]
    assert [check_id for check_id, _ in found] == [
        "django_grpc_bus.W002",
        "django_grpc_bus.E015",
        "django_grpc_bus.E005",
        "django_grpc_bus.W003",
        "django_grpc_bus.E004",
    ]
    assert found[1][1] == (
        "MESSAGE_BUS['SERVLETS']['my-servlet']['options'] must be a list of (name, value) "
        "pairs, not 'x'."
    )


def test_targets_from_settings_and_from_an_address():
    config = ServletConfig.from_settings("pair", {"hosts": ["[::1]:1", ("10.0.0.2", 2)]})
    assert config.targets == (("::1", 1), ("10.0.0.2", 2))
    assert ServletConfig.from_address("[::1]:50051").targets == (("::1", 50051),)
    with pytest.raises(ValueError):
        ServletConfig.from_address("nonsense")


@pytest.mark.parametrize(
    ("text", "default_host", "expected"),
    [
        ("127.0.0.1:50051", None, ("127.0.0.1", 50051)),
        ("[::1]:50051", None, ("[::1]", 50051)),
        ("[::]:0", None, ("[::]", 0)),
        ("50051", "[::]", ("[::]", 50051)),
    ],
)
def test_parse_address(text, default_host, expected):
    assert parse_address(text, default_host) == expected


@pytest.mark.parametrize(
    ("text", "error"),
    [("50051", AddressError), (":1", AddressError), ("h:", PortError), ("h:65536", PortError)],
)
def test_parse_address_refuses(text, error):
    with pytest.raises(error):
        parse_address(text)
