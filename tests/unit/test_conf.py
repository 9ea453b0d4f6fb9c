"""The ``bus_settings`` object: defaults, path resolution, reloads and lazy imports."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from django_grpc_bus.conf import DEFAULTS, bus_settings

# -- defaults --------------------------------------------------------------------------------------


def test_defaults_when_message_bus_is_absent(settings, tmp_path):
    del settings.MESSAGE_BUS
    settings.BASE_DIR = tmp_path  # also fires setting_changed, so nothing stale is cached

    assert bus_settings.PRODUCER_ROOT == tmp_path.resolve() / "generated_grpc"
    assert bus_settings.SERVICE_META is None
    assert bus_settings.SERVICE_TEMPLATE is None
    assert bus_settings.HANDLER_TEMPLATE is None
    assert bus_settings.ROOT_HANDLERS_HOOK is None
    assert bus_settings.SERVLETS == {}


def test_partial_message_bus_keeps_defaults_for_missing_keys(settings, tmp_path):
    servlets = {"library": {"host": "127.0.0.1", "port": 50051}}
    settings.BASE_DIR = tmp_path
    settings.MESSAGE_BUS = {"SERVLETS": servlets}

    assert bus_settings.SERVLETS == servlets
    assert bus_settings.PRODUCER_ROOT == tmp_path.resolve() / "generated_grpc"
    assert bus_settings.SERVICE_META is None
    assert bus_settings.raw("PRODUCER_ROOT") == DEFAULTS["PRODUCER_ROOT"]


def test_message_bus_that_is_not_a_dict_falls_back_to_defaults(settings, tmp_path):
    # The system check reports it (E001); the settings object must not crash meanwhile.
    settings.BASE_DIR = tmp_path
    settings.MESSAGE_BUS = ["PRODUCER_ROOT", "elsewhere"]

    assert bus_settings.PRODUCER_ROOT == tmp_path.resolve() / "generated_grpc"
    assert bus_settings.SERVLETS == {}


# -- paths -----------------------------------------------------------------------------------------


def test_relative_producer_root_resolves_against_base_dir_not_cwd(
    project, tmp_path_factory, monkeypatch
):
    elsewhere = tmp_path_factory.mktemp("cwd")
    monkeypatch.chdir(elsewhere)
    project.configure(PRODUCER_ROOT="out/gen", SERVICE_META="meta/service_meta.yaml")

    assert Path.cwd() == elsewhere.resolve()
    assert bus_settings.PRODUCER_ROOT == project.base.resolve() / "out" / "gen"
    assert bus_settings.SERVICE_META == project.base.resolve() / "meta" / "service_meta.yaml"
    assert not bus_settings.PRODUCER_ROOT.is_relative_to(elsewhere.resolve())


@pytest.mark.parametrize("value", ["gen/sub", Path("gen/sub")], ids=["str", "Path"])
def test_path_settings_accept_str_and_path(project, value):
    project.configure(PRODUCER_ROOT=value, SERVICE_TEMPLATE=value, HANDLER_TEMPLATE=value)

    expected = project.base.resolve() / "gen" / "sub"
    assert bus_settings.PRODUCER_ROOT == expected
    assert bus_settings.SERVICE_TEMPLATE == expected
    assert bus_settings.HANDLER_TEMPLATE == expected
    assert isinstance(bus_settings.PRODUCER_ROOT, Path)


@pytest.mark.parametrize("as_path", [False, True], ids=["str", "Path"])
def test_absolute_paths_are_kept(project, tmp_path_factory, as_path):
    outside = tmp_path_factory.mktemp("absolute") / "meta.yaml"
    project.configure(SERVICE_META=outside if as_path else str(outside))

    assert bus_settings.SERVICE_META == outside.resolve()
    assert not bus_settings.SERVICE_META.is_relative_to(project.base.resolve())


def test_tilde_is_expanded(project, tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    project.configure(SERVICE_TEMPLATE="~/templates")

    assert bus_settings.SERVICE_TEMPLATE == home.resolve() / "templates"


def test_missing_base_dir_is_improperly_configured_naming_it(settings):
    del settings.BASE_DIR
    settings.MESSAGE_BUS = {"PRODUCER_ROOT": "generated_grpc"}  # fires the reload

    with pytest.raises(ImproperlyConfigured, match="BASE_DIR"):
        bus_settings.PRODUCER_ROOT  # noqa: B018


# -- reloading ------------------------------------------------------------------------------------


def test_override_of_message_bus_reloads_and_reverts(project):
    before = bus_settings.PRODUCER_ROOT
    assert before == project.base.resolve() / "generated_grpc"
    assert bus_settings.SERVLETS == {}

    servlets = {"shop": {"host": "shop", "port": 50052}}
    with override_settings(MESSAGE_BUS={"PRODUCER_ROOT": "other", "SERVLETS": servlets}):
        assert bus_settings.PRODUCER_ROOT == project.base.resolve() / "other"
        assert bus_settings.SERVLETS == servlets

    assert bus_settings.PRODUCER_ROOT == before
    assert bus_settings.SERVLETS == {}


def test_override_of_base_dir_reloads_and_reverts(project, tmp_path_factory):
    before = bus_settings.PRODUCER_ROOT
    other_base = tmp_path_factory.mktemp("other_base")

    with override_settings(BASE_DIR=other_base):
        assert bus_settings.PRODUCER_ROOT == other_base.resolve() / "generated_grpc"

    assert bus_settings.PRODUCER_ROOT == before == project.base.resolve() / "generated_grpc"


def test_other_settings_do_not_reload(project):
    first = bus_settings.PRODUCER_ROOT
    with override_settings(TIME_ZONE="Europe/Paris"):
        assert bus_settings.PRODUCER_ROOT is first  # still the cached object


# -- ROOT_HANDLERS_HOOK ---------------------------------------------------------------------------


def test_root_handlers_hook_is_imported_lazily(project, make_module):
    module = make_module("handler = object()\n")
    project.configure(ROOT_HANDLERS_HOOK=f"{module}.handler")

    assert module not in sys.modules
    assert bus_settings.raw("ROOT_HANDLERS_HOOK") == f"{module}.handler"
    assert module not in sys.modules  # raw() does not import

    hook = bus_settings.ROOT_HANDLERS_HOOK

    assert module in sys.modules
    assert hook is sys.modules[module].handler


def test_unimportable_root_handlers_hook_raises_import_error_naming_the_key(project):
    project.configure(ROOT_HANDLERS_HOOK="no_such_module_for_bus_tests.handler")

    with pytest.raises(ImportError) as excinfo:
        bus_settings.ROOT_HANDLERS_HOOK  # noqa: B018

    message = str(excinfo.value)
    assert "ROOT_HANDLERS_HOOK" in message
    assert "no_such_module_for_bus_tests.handler" in message


def test_root_handlers_hook_missing_attribute_raises_import_error_naming_the_key(
    project, make_module
):
    module = make_module("something_else = 1\n")
    project.configure(ROOT_HANDLERS_HOOK=f"{module}.handler")

    with pytest.raises(ImportError, match="ROOT_HANDLERS_HOOK"):
        bus_settings.ROOT_HANDLERS_HOOK  # noqa: B018


# -- raw() and unknown names ----------------------------------------------------------------------


def test_raw_returns_the_value_as_written(project):
    project.configure(PRODUCER_ROOT="gen/../gen2", SERVLETS={"a": {"host": "h", "port": 1}})

    assert bus_settings.raw("PRODUCER_ROOT") == "gen/../gen2"
    assert bus_settings.PRODUCER_ROOT == project.base.resolve() / "gen2"
    assert bus_settings.raw("SERVLETS") == {"a": {"host": "h", "port": 1}}
    assert bus_settings.raw("SERVICE_META") is None  # the default


def test_raw_of_unknown_key_raises_attribute_error(project):
    with pytest.raises(AttributeError, match="NOPE"):
        bus_settings.raw("NOPE")


@pytest.mark.parametrize("name", ["NOPE", "producer_root", "_secret"])
def test_unknown_attribute_raises_attribute_error(project, name):
    with pytest.raises(AttributeError):
        getattr(bus_settings, name)
    assert not hasattr(bus_settings, name)
