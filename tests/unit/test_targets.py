"""A servlet as any gRPC target (SPEC §13): target URIs are checked (client.targets, the
SERVLETS schema, manage.py check), and each servlet's channel gets gRPC's service config:
round_robin with health checking for a target of several backends, retries for reads and
idempotent methods only, the servlet's own overrides on top."""

from __future__ import annotations

import json

import pytest
from django.core.checks import run_checks
from google.protobuf import descriptor_pb2, descriptor_pool

from django_grpc_bus.client.channels import channel_options, target_of
from django_grpc_bus.client.config import ADDRESS, ENTRY, SETTING, ServletConfig, servlet_problems
from django_grpc_bus.client.exceptions import ServletMisconfigured
from django_grpc_bus.client.service_config import (
    HEALTH_CHECK,
    RETRY_POLICY,
    ROUND_ROBIN,
    service_config,
)
from django_grpc_bus.client.targets import (
    TargetError,
    parse_target,
    resolved_addresses,
    target_problem,
)


@pytest.mark.parametrize(
    ("uri", "scheme", "addresses", "path", "several"),
    [
        ("dns:///inventory.prod.svc:50051", "dns", (("inventory.prod.svc", 50051),), "", True),
        ("dns://10.0.0.53/inventory:50051", "dns", (("inventory", 50051),), "", True),
        ("dns:inventory:50051", "dns", (("inventory", 50051),), "", True),
        ("inventory:50051", "dns", (("inventory", 50051),), "", True),
        ("dns:///inventory", "dns", (("inventory", 443),), "", True),  # gRPC's default port
        ("ipv4:10.0.0.1:1,10.0.0.2:2", "ipv4", (("10.0.0.1", 1), ("10.0.0.2", 2)), "", True),
        ("ipv4:10.0.0.1:1", "ipv4", (("10.0.0.1", 1),), "", False),
        ("ipv6:[::1]:1,[fe80::1]:2", "ipv6", (("::1", 1), ("fe80::1", 2)), "", True),
        ("unix:/run/inventory.sock", "unix", (), "/run/inventory.sock", False),
        ("unix:///run/inventory.sock", "unix", (), "/run/inventory.sock", False),
        ("unix:relative.sock", "unix", (), "relative.sock", False),
        ("unix-abstract:inventory", "unix-abstract", (), "inventory", False),
        ("xds:///inventory", "xds", (), "inventory", False),
    ],
)
def test_target_uris_are_parsed(uri, scheme, addresses, path, several):
    target = parse_target(uri)
    assert (target.scheme, target.addresses, target.path) == (scheme, addresses, path)
    assert target.may_have_several_addresses is several
    assert target_problem(uri) is None


@pytest.mark.parametrize(
    ("uri", "says"),
    [
        ("", "non-empty string"),
        (50051, "non-empty string"),
        ("dns:///", "names no host"),
        ("dns:///inventory:0", "no valid port"),
        ("dns:///inventory:http", "no valid port"),
        ("http://inventory:50051", "scheme 'http'"),
        ("ipv4:", "comma-separated list"),
        ("ipv4:10.0.0.1:1,", "comma-separated list"),
        ("ipv4:inventory:50051", "not an IPV4 address"),
        ("ipv4:[::1]:50051", "not an IPV4 address"),
        ("ipv6:10.0.0.1:1", "not an IPV6 address"),
        ("ipv6:::1:50051", "in brackets"),
        ("unix:", "names no socket"),
        ("unix://host/path", "names no socket"),
        ("xds://inventory", "three slashes"),
        ("xds:///a/b", "three slashes"),
        ("dns:///inventory :50051", "contains spaces"),
    ],
)
def test_malformed_targets_say_what_is_wrong(uri, says):
    with pytest.raises(TargetError, match=says.replace("(", r"\(")):
        parse_target(uri)
    assert says in target_problem(uri)


def test_a_target_entry_is_valid_and_becomes_the_channels_target():
    entry = {"target": "dns:///inventory:50051", "timeout": 3}
    assert servlet_problems("inventory", entry) == []
    config = ServletConfig.from_settings("inventory", entry)
    assert (config.target, config.targets, config.address) == (
        "dns:///inventory:50051",
        (),
        "dns:///inventory:50051",
    )
    assert target_of(config) == "dns:///inventory:50051"


@pytest.mark.parametrize("other", [{"host": "h", "port": 1}, {"hosts": ["10.0.0.1:1"]}])
def test_target_with_host_port_or_hosts_is_an_error_naming_both(other):
    entry = {"target": "dns:///inventory:50051", **other}
    problems = servlet_problems("inventory", entry)
    assert [(p.kind, p.key) for p in problems] == [(ENTRY, "target")]
    message = problems[0].message
    assert message.startswith("MESSAGE_BUS['SERVLETS']['inventory'] has 'target' and ")
    assert all(repr(key) in message for key in other)
    with pytest.raises(ServletMisconfigured, match="has 'target' and"):
        ServletConfig.from_settings("inventory", entry)


def test_a_malformed_target_is_an_address_error_naming_servlet_and_setting():
    problems = servlet_problems("inventory", {"target": "ipv4:inventory:50051"})
    assert [(p.kind, p.key) for p in problems] == [(ADDRESS, "target")]
    assert problems[0].message == (
        "MESSAGE_BUS['SERVLETS']['inventory']['target'] is not a gRPC target URI: "
        "'inventory:50051' is not an IPV4 address with a port."
    )
    assert "dns:///" in problems[0].hint


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ([{"round_robin": {}}], "must be a dict (gRPC's service config), not list"),
        ({"methodConfig": object()}, "cannot be written as JSON"),
    ],
)
def test_a_bad_service_config_is_a_setting_error(value, says):
    entry = {"target": "dns:///inventory:50051", "service_config": value}
    problems = servlet_problems("inventory", entry)
    assert [(p.kind, p.key) for p in problems] == [(SETTING, "service_config")]
    assert problems[0].message.startswith("MESSAGE_BUS['SERVLETS']['inventory']['service_config'] ")
    assert says in problems[0].message


def test_manage_py_check_reports_target_problems_under_their_ids(project):
    project.configure(
        SERVLETS={
            "both": {"target": "dns:///a:1", "host": "a", "port": 1},
            "bad": {"target": "xds://a"},
            "config": {"target": "dns:///a:1", "service_config": "round_robin"},
            "good": {"target": "ipv4:127.0.0.1:1,127.0.0.1:2"},
        }
    )
    found = [(m.id, m.msg) for m in run_checks(tags=["grpc_bus"])]
    assert [check_id for check_id, _ in found] == [
        "django_grpc_bus.E004",
        "django_grpc_bus.E005",
        "django_grpc_bus.E015",
    ]
    assert "['both'] has 'target' and 'host' and 'port'" in found[0][1]
    assert "['bad']['target'] is not a gRPC target URI" in found[1][1]
    assert "['config']['service_config'] must be a dict" in found[2][1]


def services_with_options() -> dict:
    """A reflected catalog's services: a generated-style one and one with an action."""
    pool = descriptor_pool.DescriptorPool()
    proto = descriptor_pb2.FileDescriptorProto(name="shop.proto", package="shop")
    proto.message_type.add(name="M")
    service = proto.service.add(name="OrderService")
    for name, level in [
        ("List", descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS),
        ("Retrieve", None),  # a server generated before the option: retried by name
        ("Count", None),
        ("Create", None),
        ("Destroy", None),
        ("Recalculate", descriptor_pb2.MethodOptions.IDEMPOTENT),  # idempotent=True
        ("Ship", descriptor_pb2.MethodOptions.IDEMPOTENCY_UNKNOWN),
    ]:
        method = service.method.add(name=name, input_type=".shop.M", output_type=".shop.M")
        if level is not None:
            method.options.idempotency_level = level
    pool.Add(proto)
    return {"shop.OrderService": pool.FindServiceByName("shop.OrderService")}


def retried(document: dict) -> list[str]:
    return [
        f"{name['service']}/{name['method']}"
        for config in document["methodConfig"]
        if config.get("retryPolicy")
        for name in config["name"]
    ]


def test_reads_and_idempotent_methods_are_retried_writes_never():
    config = ServletConfig.from_settings("shop", {"host": "127.0.0.1", "port": 1})
    document = service_config(config, services_with_options())
    assert retried(document) == [
        "shop.OrderService/List",
        "shop.OrderService/Retrieve",
        "shop.OrderService/Count",
        "shop.OrderService/Recalculate",
    ]
    assert document["methodConfig"][0]["retryPolicy"] == RETRY_POLICY
    assert RETRY_POLICY["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert document["retryThrottling"] == {"maxTokens": 100, "tokenRatio": 0.5}
    # One address: pick_first (gRPC's default), no health checking.
    assert "loadBalancingConfig" not in document
    assert "healthCheckConfig" not in document


@pytest.mark.parametrize(
    "entry",
    [
        {"target": "dns:///inventory:50051"},
        {"target": "ipv4:10.0.0.1:1,10.0.0.2:1"},
        {"target": "ipv6:[::1]:1,[::1]:2"},
        {"hosts": ["10.0.0.1:1", "10.0.0.2:1"]},
    ],
)
def test_several_backends_balance_round_robin_with_health_checks(entry):
    document = service_config(ServletConfig.from_settings("inventory", entry))
    assert document["loadBalancingConfig"] == ROUND_ROBIN == [{"round_robin": {}}]
    assert document["healthCheckConfig"] == HEALTH_CHECK == {"serviceName": ""}


@pytest.mark.parametrize(
    "target", ["xds:///inventory", "unix:/run/inventory.sock", "ipv4:10.0.0.1:1"]
)
def test_xds_and_single_addresses_keep_grpcs_own_choice(target):
    document = service_config(ServletConfig.from_settings("inventory", {"target": target}))
    assert "loadBalancingConfig" not in document
    assert "healthCheckConfig" not in document


def test_the_servlets_service_config_overrides_key_by_key():
    override = {"loadBalancingConfig": [{"pick_first": {}}], "retryThrottling": None}
    config = ServletConfig.from_settings(
        "inventory", {"target": "dns:///inventory:50051", "service_config": override}
    )
    document = service_config(config, services_with_options())
    assert document["loadBalancingConfig"] == [{"pick_first": {}}]
    assert "retryThrottling" not in document  # None removes a default
    assert document["healthCheckConfig"] == {"serviceName": ""}  # kept
    assert retried(document)  # kept
    options = dict(channel_options(config, services_with_options()))
    assert json.loads(options["grpc.service_config"]) == document
    assert options["grpc.enable_retries"] == 1


def test_grpclist_resolves_what_it_can_for_display():
    assert resolved_addresses("ipv4:10.0.0.1:1,10.0.0.2:2") == ["10.0.0.1:1", "10.0.0.2:2"]
    assert resolved_addresses("ipv6:[::1]:1") == ["[::1]:1"]
    assert resolved_addresses("unix:/run/x.sock") == ["unix:/run/x.sock"]
    assert resolved_addresses("xds:///inventory") == ["(resolved by the xDS control plane)"]
    assert "127.0.0.1:7" in resolved_addresses("dns:///localhost:7")
    assert resolved_addresses("dns:///no-such-host.invalid:7")[0].startswith("(no address")
