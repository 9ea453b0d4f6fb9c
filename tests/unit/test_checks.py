"""System checks on MESSAGE_BUS: one test per check id, each naming the key at fault."""

from __future__ import annotations

import io
import os

import pytest
import yaml
from django.core.checks import run_checks
from django.core.management import call_command, execute_from_command_line
from django.core.management.base import SystemCheckError

from django_grpc_bus.conf import DEFAULTS

CONFIG = ["grpc_bus"]
SERVER = ["grpc_bus_server"]
VALID_SERVLET = {"host": "127.0.0.1", "port": 50051}


def messages(tags=CONFIG, check_id=None):
    found = run_checks(tags=tags)
    return [m for m in found if check_id is None or m.id == check_id]


def only(check_id, tags=CONFIG):
    """The single message with `check_id`; fails when there is none or several."""
    found = messages(tags, check_id)
    assert len(found) == 1, f"expected one {check_id}, got {run_checks(tags=tags)!r}"
    return found[0]


def run_cli(*argv: str) -> int:
    """Run a command the way `manage.py` does (system checks included); return its exit code."""
    try:
        execute_from_command_line(["manage.py", *argv])
    except SystemExit as exc:
        return exc.code or 0
    return 0


# -- the whole setting ----------------------------------------------------------------------------


def test_valid_configuration_has_no_messages(project, make_module):
    module = make_module(
        "from django_grpc_bus.handlers import BasicHandler\n\nhandler = BasicHandler()\n"
    )
    (project.base / "service_templates").mkdir()
    (project.base / "handler_templates").mkdir()
    project.write_meta({"apps": [{"name": "catalog"}, {"name": "shop", "models": ["Book"]}]})
    project.configure(
        ROOT_HANDLERS_HOOK=f"{module}.handler",
        SERVICE_TEMPLATE="service_templates",
        HANDLER_TEMPLATE=project.base / "handler_templates",
        SERVLETS={"library": VALID_SERVLET, "shop": {"host": "shop.internal", "port": 65535}},
    )

    assert messages(CONFIG) == []
    assert messages(SERVER) == []


def test_absent_message_bus_has_no_messages(settings, tmp_path):
    del settings.MESSAGE_BUS
    settings.BASE_DIR = tmp_path

    assert messages(CONFIG) == []
    assert messages(SERVER) == []


@pytest.mark.parametrize("value", [["PRODUCER_ROOT"], "generated_grpc", 1])
def test_e001_message_bus_not_a_dict(settings, tmp_path, value):
    settings.BASE_DIR = tmp_path
    settings.MESSAGE_BUS = value

    error = only("django_grpc_bus.E001")
    assert "MESSAGE_BUS" in error.msg
    assert type(value).__name__ in error.msg
    assert error.is_serious()


def test_e002_unknown_key_with_close_match_hint(project):
    project.configure(PRODUCER_ROT="gen")

    error = only("django_grpc_bus.E002")
    assert "'PRODUCER_ROT'" in error.msg
    assert "'PRODUCER_ROOT'" in error.hint
    assert error.is_serious()


def test_e002_unknown_key_without_close_match_lists_known_keys(project):
    project.configure(COMPLETELY_DIFFERENT=1)

    error = only("django_grpc_bus.E002")
    assert "'COMPLETELY_DIFFERENT'" in error.msg
    for key in ("PRODUCER_ROOT", "SERVICE_META", "SERVLETS", "ROOT_HANDLERS_HOOK"):
        assert key in error.hint


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("SERVICE_META", 3.5),
        ("PRODUCER_ROOT", None),
        ("PRODUCER_ROOT", ["generated_grpc"]),
        ("SERVICE_TEMPLATE", 1),
        ("HANDLER_TEMPLATE", {"folder": "x"}),
        ("SERVLETS", [("library", VALID_SERVLET)]),
        ("SERVLETS", None),
    ],
)
def test_e003_wrong_type(project, key, value):
    project.configure(**{key: value})

    error = only("django_grpc_bus.E003")
    assert f"['{key}']" in error.msg
    assert type(value).__name__ in error.msg
    assert error.hint == f"Leave {key!r} out for its default, {DEFAULTS[key]!r}."
    assert error.is_serious()


def test_e003_for_a_none_watch_backend_names_the_default(project):
    project.configure(WATCH_BACKEND=None)

    error = only("django_grpc_bus.E003")
    assert "not NoneType" in error.msg
    assert "default, 'database'" in error.hint


def test_e010_hook_that_is_neither_a_path_nor_a_handler(project):
    project.configure(ROOT_HANDLERS_HOOK=42)

    assert not run_checks(tags=["grpc_bus"])
    (error,) = run_checks(tags=["grpc_bus_server"])
    assert error.id == "django_grpc_bus.E010"
    assert "ROOT_HANDLERS_HOOK" in error.msg and "int" in error.msg


def test_hook_given_as_a_handler_object_is_accepted(project):
    class Handler:
        def bind_to_server(self, server):
            pass

    project.configure(ROOT_HANDLERS_HOOK=Handler())

    assert not run_checks(tags=["grpc_bus", "grpc_bus_server"])


# -- SERVLETS --------------------------------------------------------------------------------------


@pytest.mark.parametrize("entry", ["127.0.0.1:50051", ["127.0.0.1", 50051], None])
def test_e004_servlet_not_a_dict(project, entry):
    project.configure(SERVLETS={"library": entry})

    error = only("django_grpc_bus.E004")
    assert "SERVLETS" in error.msg
    assert "'library'" in error.msg
    assert "dict" in error.msg


@pytest.mark.parametrize("missing", ["host", "port"])
def test_e004_servlet_missing_host_or_port(project, missing):
    entry = {k: v for k, v in VALID_SERVLET.items() if k != missing}
    project.configure(SERVLETS={"library": entry})

    error = only("django_grpc_bus.E004")
    assert "'library'" in error.msg
    assert f"'{missing}'" in error.msg


def test_e004_servlet_missing_both(project):
    project.configure(SERVLETS={"library": {}})

    error = only("django_grpc_bus.E004")
    assert "'host'" in error.msg
    assert "'port'" in error.msg


@pytest.mark.parametrize("host", ["", "   ", None, 127])
def test_e004_servlet_host_empty_or_not_a_string(project, host):
    project.configure(SERVLETS={"library": {"host": host, "port": 50051}})

    error = only("django_grpc_bus.E004")
    assert "['library']['host']" in error.msg


@pytest.mark.parametrize("port", ["50051", 0, 70000, -1, 65536, True, 50051.0, None])
def test_e005_invalid_port(project, port):
    project.configure(SERVLETS={"library": {"host": "127.0.0.1", "port": port}})

    error = only("django_grpc_bus.E005")
    assert "SERVLETS" in error.msg
    assert "['library']['port']" in error.msg
    assert repr(port) in error.msg
    assert error.is_serious()


@pytest.mark.parametrize("port", [1, 50051, 65535])
def test_valid_ports_pass(project, port):
    project.configure(SERVLETS={"library": {"host": "127.0.0.1", "port": port}})

    assert messages(CONFIG) == []


@pytest.mark.parametrize("name", ["my-servlet", "2fast", "with space", 7])
def test_w002_servlet_name_not_an_identifier(project, name):
    project.configure(SERVLETS={name: VALID_SERVLET})

    warning = only("django_grpc_bus.W002")
    assert repr(name) in warning.msg
    assert not warning.is_serious()
    assert [m.id for m in messages(CONFIG)] == ["django_grpc_bus.W002"]


@pytest.mark.parametrize("name", ["class", "import"])
def test_w002_servlet_name_that_is_a_keyword(project, name):
    project.configure(SERVLETS={name: VALID_SERVLET})

    only("django_grpc_bus.W002")


def test_w003_unknown_servlet_key(project):
    project.configure(SERVLETS={"library": {**VALID_SERVLET, "ssl": True, "deadline": 3}})

    warnings = messages(CONFIG, "django_grpc_bus.W003")
    assert len(warnings) == 2
    assert any("['library']['ssl']" in w.msg for w in warnings)
    assert any("['library']['deadline']" in w.msg for w in warnings)
    assert not any(w.is_serious() for w in warnings)
    assert all(m.id == "django_grpc_bus.W003" for m in messages(CONFIG))


# -- paths -----------------------------------------------------------------------------------------


def test_e006_base_dir_missing(project, settings):
    del settings.BASE_DIR

    error = only("django_grpc_bus.E006")
    assert "BASE_DIR" in error.msg


def test_e007_producer_root_outside_base_dir(project, tmp_path_factory):
    project.configure(PRODUCER_ROOT=str(tmp_path_factory.mktemp("outside")))

    error = only("django_grpc_bus.E007")
    assert "PRODUCER_ROOT" in error.msg
    assert "BASE_DIR" in error.msg


def test_e007_producer_root_escaping_with_dotdot(project):
    project.configure(PRODUCER_ROOT="../generated_grpc")

    error = only("django_grpc_bus.E007")
    assert "PRODUCER_ROOT" in error.msg


@pytest.mark.parametrize("value", [".", "", "sub/.."])
def test_e007_producer_root_equal_to_base_dir(project, value):
    project.configure(PRODUCER_ROOT=value)

    error = only("django_grpc_bus.E007")
    assert "PRODUCER_ROOT" in error.msg


@pytest.mark.parametrize("value", ["my-gen", "gen/my-gen", "2gen"])
def test_e007_producer_root_folder_not_an_identifier(project, value):
    project.configure(PRODUCER_ROOT=value)

    error = only("django_grpc_bus.E007")
    assert "PRODUCER_ROOT" in error.msg
    assert value.rsplit("/", 1)[-1] in error.msg


def test_e007_producer_root_that_would_shadow_an_installed_package(project):
    project.configure(PRODUCER_ROOT="grpc")

    error = only("django_grpc_bus.E007")
    assert "'grpc'" in error.msg and "installed package" in error.msg


def test_e007_producer_root_folder_that_is_a_keyword(project):
    project.configure(PRODUCER_ROOT="gen/class")

    only("django_grpc_bus.E007")


def test_nested_identifier_producer_root_is_fine(project):
    project.configure(PRODUCER_ROOT="artifacts/generated_grpc")

    assert messages(CONFIG) == []


@pytest.mark.parametrize("key", ["SERVICE_TEMPLATE", "HANDLER_TEMPLATE"])
def test_e008_template_folder_missing(project, key):
    project.configure(**{key: "no_such_templates"})

    error = only("django_grpc_bus.E008")
    assert f"['{key}']" in error.msg
    assert "no_such_templates" in error.msg


def test_e008_template_that_is_a_file(project):
    (project.base / "template.txt").write_text("not a folder")
    project.configure(SERVICE_TEMPLATE="template.txt")

    error = only("django_grpc_bus.E008")
    assert "SERVICE_TEMPLATE" in error.msg


def test_w004_service_meta_missing_file_is_only_a_warning(project):
    # The seed sets SERVICE_META first and generates the file next: commands must still run.
    project.configure(SERVICE_META="missing_meta.yaml")

    warning = only("django_grpc_bus.W004")
    assert not warning.is_serious()
    assert "SERVICE_META" in warning.msg
    assert "missing_meta.yaml" in warning.msg
    assert "generatemetayaml" in warning.hint


def test_generatemetayaml_runs_while_service_meta_is_missing_or_broken(project, monkeypatch):
    monkeypatch.chdir(project.base)
    project.configure(SERVICE_META="service_meta.yaml")
    argv = ["manage.py", "generatemetayaml", "--file", "service_meta.yaml"]
    execute_from_command_line(argv)
    assert (project.base / "service_meta.yaml").is_file()
    # a broken file (an error for other commands) can be replaced with --force
    (project.base / "service_meta.yaml").write_text("apps: [nope]\n")
    assert any(m.id == "django_grpc_bus.E009" for m in messages(CONFIG))
    execute_from_command_line([*argv, "--force"])
    assert "catalog" in (project.base / "service_meta.yaml").read_text()


def test_e009_service_meta_invalid_yaml(project):
    project.write_meta("apps: [catalog\n  - : :")

    error = only("django_grpc_bus.E009")
    assert "SERVICE_META" in error.msg
    assert "not valid YAML" in error.msg


def test_e009_service_meta_unknown_app(project):
    project.write_meta({"apps": [{"name": "catalog"}, {"name": "no_such_app"}]})

    error = only("django_grpc_bus.E009")
    assert "SERVICE_META" in error.msg
    assert "apps[1] (no_such_app)" in error.msg


# -- ROOT_HANDLERS_HOOK (the server tag) ----------------------------------------------------------


def test_w001_root_handlers_hook_module_missing(project):
    project.configure(ROOT_HANDLERS_HOOK="no_such_handlers_module_xyz.handler")

    warning = only("django_grpc_bus.W001", tags=SERVER)
    assert "ROOT_HANDLERS_HOOK" in warning.msg
    assert "no_such_handlers_module_xyz.handler" in warning.msg
    assert not warning.is_serious()
    # The configuration checks never import the hook.
    assert messages(CONFIG) == []


def test_e010_root_handlers_hook_module_raises_on_import(project, make_module):
    module = make_module("raise RuntimeError('broken handlers')\nhandler = object()\n")
    project.configure(ROOT_HANDLERS_HOOK=f"{module}.handler")

    error = only("django_grpc_bus.E010", tags=SERVER)
    assert "ROOT_HANDLERS_HOOK" in error.msg
    assert "RuntimeError" in error.msg
    assert "broken handlers" in error.msg
    assert error.is_serious()
    assert messages(CONFIG) == []


def test_e010_handler_module_importing_a_missing_package_is_an_error(project, make_module):
    module = make_module("import no_such_third_party_pkg_xyz\nhandler = object()\n")
    project.configure(ROOT_HANDLERS_HOOK=f"{module}.handler")

    error = only("django_grpc_bus.E010", tags=SERVER)
    assert "no_such_third_party_pkg_xyz" in error.msg
    assert error.is_serious()


def test_w001_handler_module_importing_not_yet_generated_code(project, make_module):
    module = make_module("from generated_grpc.grpc import Nothing_pb2\nhandler = object()\n")
    project.configure(ROOT_HANDLERS_HOOK=f"{module}.handler")

    warning = only("django_grpc_bus.W001", tags=SERVER)
    assert "generategrpc" in warning.hint


def test_e010_root_handlers_hook_names_something_else(project, make_module):
    module = make_module("handler = object()\n")
    project.configure(ROOT_HANDLERS_HOOK=f"{module}.handler")

    error = only("django_grpc_bus.E010", tags=SERVER)
    assert f"{module}.handler" in error.msg
    assert "object, not a handler" in error.msg
    assert "BasicHandler" in error.hint


def test_e010_root_handlers_hook_attribute_missing(project, make_module):
    module = make_module("other = object()\n")
    project.configure(ROOT_HANDLERS_HOOK=f"{module}.handler")

    error = only("django_grpc_bus.E010", tags=SERVER)
    assert "ROOT_HANDLERS_HOOK" in error.msg
    assert f"{module}.handler" in error.msg


def test_e010_root_handlers_hook_not_a_dotted_path(project):
    project.configure(ROOT_HANDLERS_HOOK="handler")

    error = only("django_grpc_bus.E010", tags=SERVER)
    assert "ROOT_HANDLERS_HOOK" in error.msg


# -- through the commands -------------------------------------------------------------------------


@pytest.mark.django_db  # Django 6's check command runs the database checks too
def test_check_command_raises_system_check_error_on_errors(project):
    project.configure(SERVLETS={"library": {"host": "127.0.0.1", "port": "50051"}})

    with pytest.raises(SystemCheckError) as excinfo:
        call_command("check", stdout=io.StringIO(), stderr=io.StringIO())

    assert "django_grpc_bus.E005" in str(excinfo.value)
    assert "'port'" in str(excinfo.value)


@pytest.mark.django_db  # Django 6's check command runs the database checks too
def test_check_command_passes_with_warnings_only(project):
    project.configure(SERVLETS={"my-servlet": VALID_SERVLET})
    err = io.StringIO()

    call_command("check", stdout=io.StringIO(), stderr=err)

    assert "django_grpc_bus.W002" in err.getvalue()


@pytest.mark.django_db  # Django 6's check command runs the database checks too
def test_check_command_includes_the_handlers_hook(project, make_module):
    module = make_module("raise ValueError('nope')\n")
    project.configure(ROOT_HANDLERS_HOOK=f"{module}.handler")

    with pytest.raises(SystemCheckError, match=r"django_grpc_bus\.E010"):
        call_command("check", stdout=io.StringIO(), stderr=io.StringIO())


def test_generateproto_runs_config_checks(project, capsys):
    project.configure(SERVLETS={"library": {"host": "127.0.0.1", "port": 0}})

    assert run_cli("generateproto") == 1

    assert "django_grpc_bus.E005" in capsys.readouterr().err
    assert not project.root.exists()


@pytest.mark.parametrize("broken", ["missing", "raises"])
def test_generateproto_works_without_an_importable_handlers_hook(
    project, make_module, capsys, broken
):
    """No server check (W001/E010) stops generation; without the handler, no query fields."""
    if broken == "missing":
        hook = "no_such_handlers_module_xyz.handler"
    else:
        hook = f"{make_module('raise RuntimeError(1)')}.handler"
    project.configure(ROOT_HANDLERS_HOOK=hook)

    # A module not written yet: generation goes on, with a note. One that raises: it stops,
    # writing nothing (going on would retire the numbers of what its services declare).
    assert run_cli("generateproto") == (0 if broken == "missing" else 1)

    captured = capsys.readouterr()
    assert "django_grpc_bus.E010" not in captured.err
    assert "django_grpc_bus.W001" not in captured.err
    assert "cannot be imported" in captured.err
    assert "Traceback" not in captured.err
    if broken == "missing":
        assert "No filters" in captured.err
    assert (project.root / "catalog" / "Book.proto").is_file() == (broken == "missing")


def test_call_command_with_skip_checks_false_runs_config_checks(project):
    project.configure(SERVLETS={"library": {"host": "127.0.0.1", "port": 70000}})

    with pytest.raises(SystemCheckError, match=r"django_grpc_bus\.E005"):
        call_command("generateproto", skip_checks=False, stdout=io.StringIO())


def test_skip_checks_flag_on_the_command_line(project, capsys):
    project.configure(SERVLETS={"library": {"host": "127.0.0.1", "port": 70000}})

    assert run_cli("generateproto", "--skip-checks") == 0
    assert (project.root / "catalog" / "Book.proto").is_file()


def test_generatemetayaml_output_is_a_valid_service_meta(project):
    # A check on the file generatemetayaml writes: the two must agree.
    out, _ = project.call("generatemetayaml")
    project.write_meta(out)

    assert yaml.safe_load(out)["apps"]
    assert messages(CONFIG) == []


# -- server settings -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("LIST_BATCH_SIZE", 0),
        ("MAX_WORKERS", 0),
        ("GRACE_PERIOD", -1),
        ("MAX_MESSAGE_SIZE", 0),
        ("MAX_CONCURRENT_RPCS", 0),
        ("LIST_BATCH_SIZE", True),
    ],
)
def test_e011_server_numbers_out_of_range(project, key, value):
    project.configure(**{key: value})

    error = only("django_grpc_bus.E011")
    assert f"['{key}']" in error.msg


def test_e012_interceptor_that_cannot_be_imported(project):
    project.configure(INTERCEPTORS=["no_such_module_xyz.Interceptor"])

    error = only("django_grpc_bus.E012")
    assert "INTERCEPTORS" in error.msg and "no_such_module_xyz" in error.msg


def test_e019_sync_interceptor_with_asyncio(project):
    project.configure(
        ASYNCIO=True,
        INTERCEPTORS=["interceptors.RecordingInterceptor", "interceptors.AioRecordingInterceptor"],
    )

    error = only("django_grpc_bus.E019")
    assert "'interceptors.RecordingInterceptor'" in error.msg
    assert "grpc.aio.ServerInterceptor" in error.msg


def test_asyncio_interceptors_pass_and_sync_ones_do_without_asyncio(project):
    project.configure(ASYNCIO=True, INTERCEPTORS=["interceptors.AioRecordingInterceptor"])
    assert not messages(CONFIG, "django_grpc_bus.E019")
    project.configure(ASYNCIO=False, INTERCEPTORS=["interceptors.RecordingInterceptor"])
    assert not messages(CONFIG, "django_grpc_bus.E019")


def test_e013_server_option_that_is_not_a_pair(project):
    project.configure(SERVER_OPTIONS=[("grpc.keepalive_time_ms", 1000), "grpc.bad"])

    error = only("django_grpc_bus.E013")
    assert "'grpc.bad'" in error.msg


def test_e014_tls_settings(project):
    (project.base / "cert.pem").write_text("x")
    project.configure(TLS={"CERTIFICATE": "cert.pem", "PRIVATE_KEY": "missing.pem", "CA": "x"})

    texts = [m.msg for m in messages(CONFIG) if m.id == "django_grpc_bus.E014"]
    assert any("['CA'] is not a TLS setting" in t for t in texts)
    assert any("['PRIVATE_KEY']" in t and "missing.pem" in t for t in texts)
    assert not any("cert.pem" in t for t in texts)  # relative to BASE_DIR, and it exists


def test_valid_server_settings_give_no_messages(project):
    project.configure(
        LIST_BATCH_SIZE=500,
        MAX_WORKERS=4,
        GRACE_PERIOD=2.5,
        MAX_MESSAGE_SIZE=1024,
        MAX_CONCURRENT_RPCS=None,
        INTERCEPTORS=["grpc.ServerInterceptor"],
        SERVER_OPTIONS=[("grpc.keepalive_time_ms", 1000)],
        TLS=None,
    )

    assert messages(CONFIG) == []


# -- servlet client settings -----------------------------------------------------------------------


def test_servlet_with_several_hosts_needs_no_host_or_port(project):
    project.configure(SERVLETS={"inventory": {"hosts": ["127.0.0.1:50051", ("127.0.0.2", 50052)]}})

    assert messages(CONFIG) == []


@pytest.mark.parametrize("hosts", [[], "127.0.0.1:1", ["127.0.0.1"], ["h:0"], [("h", "1")]])
def test_e005_bad_hosts_list(project, hosts):
    project.configure(SERVLETS={"inventory": {"hosts": hosts}})

    error = only("django_grpc_bus.E005")
    assert "['hosts']" in error.msg


@pytest.mark.parametrize(
    ("key", "value", "text"),
    [
        ("timeout", 0, "['timeout']"),
        ("timeout", "5", "['timeout']"),
        ("metadata", ["authorization"], "['metadata']"),
        ("tls", {"CERT": "x"}, "['tls']"),
        ("tls", {"CA": "missing-ca.pem"}, "missing-ca.pem"),
    ],
)
def test_e015_servlet_client_settings(project, key, value, text):
    project.configure(SERVLETS={"inventory": {**VALID_SERVLET, key: value}})

    error = only("django_grpc_bus.E015")
    assert text in error.msg


def test_valid_servlet_client_settings(project):
    (project.base / "ca.pem").write_text("x")
    project.configure(
        SERVLETS={
            "inventory": {
                **VALID_SERVLET,
                "timeout": 2.5,
                "metadata": {"authorization": "Token abc"},
                "tls": {"CA": "ca.pem"},
                "options": [("grpc.keepalive_time_ms", 1000)],
            }
        }
    )

    assert messages(CONFIG) == []


def test_e012_authentication_or_permission_class_that_cannot_be_imported(project):
    project.configure(
        DEFAULT_AUTHENTICATION_CLASSES=["rest_framework.authentication.TokenAuthenticatoin"],
        DEFAULT_PERMISSION_CLASSES=["no_such_module_xyz.Permission"],
    )

    texts = [m.msg for m in messages(CONFIG) if m.id == "django_grpc_bus.E012"]
    assert any("DEFAULT_AUTHENTICATION_CLASSES" in t and "TokenAuthenticatoin" in t for t in texts)
    assert any("DEFAULT_PERMISSION_CLASSES" in t for t in texts)


def test_e011_service_timeout_must_be_above_zero(project):
    project.configure(SERVICE_TIMEOUT=0)

    assert "['SERVICE_TIMEOUT']" in only("django_grpc_bus.E011").msg


def test_e015_servlet_tls_value_that_is_not_a_path(project):
    project.configure(SERVLETS={"inventory": {**VALID_SERVLET, "tls": {"CA": 42}}})

    error = only("django_grpc_bus.E015")
    assert "['tls']['CA'] must be a path" in error.msg


# -- serializers of the served services (E016-E018) ------------------------------------------------


def _handler_serving(*serializer_classes):
    from django_grpc_bus.generics import ModelService
    from django_grpc_bus.handlers import BasicHandler

    handler = BasicHandler()
    for serializer_class in serializer_classes:
        handler.register(
            type(
                f"{serializer_class.__name__}Service",
                (ModelService,),
                {
                    "queryset": serializer_class.Meta.model.objects.all(),
                    "serializer_class": serializer_class,
                },
            )
        )
    return handler


def test_e016_a_message_field_the_serializer_does_not_read(project):
    from catalog import models
    from generated_grpc.grpc import catalog_Book_pb2

    from django_grpc_bus import serializers as proto_serializers

    class FrozenBookSerializer(proto_serializers.ModelProtoSerializer):
        class Meta:
            model = models.Book
            proto_class = catalog_Book_pb2.BookData
            fields = ["id", "title"]  # frozen before `author` and `isbn` were exposed

    project.configure(ROOT_HANDLERS_HOOK=_handler_serving(FrozenBookSerializer))

    error = only("django_grpc_bus.E016", SERVER)
    assert "FrozenBookSerializer does not read 'author', 'isbn' of catalog.BookData" in error.msg
    assert "dropped" in error.msg
    assert "Remove Meta.fields" in error.hint and "service_meta.yaml" in error.hint


def test_e017_a_declared_field_the_message_cannot_carry(project):
    from catalog import models
    from generated_grpc.grpc import catalog_Book_pb2
    from rest_framework import serializers

    from django_grpc_bus import serializers as proto_serializers

    class AuthorNameSerializer(proto_serializers.ModelProtoSerializer):
        class Meta:
            model = models.Author
            proto_class = catalog_Book_pb2.BookData
            fields = ["id", "name"]

    class RichBookSerializer(proto_serializers.ModelProtoSerializer):
        shout = serializers.SerializerMethodField()
        writer = AuthorNameSerializer(source="author", read_only=True)

        class Meta:
            model = models.Book
            proto_class = catalog_Book_pb2.BookData

        def get_shout(self, book) -> str:
            return book.title.upper()

    project.configure(ROOT_HANDLERS_HOOK=_handler_serving(RichBookSerializer))

    error = only("django_grpc_bus.E017", SERVER)
    assert "RichBookSerializer declares 'shout', 'writer'" in error.msg
    assert "catalog.BookData has no field for" in error.msg
    assert not messages(SERVER, "django_grpc_bus.E016")


def test_e018_a_serializer_that_cannot_be_built(project):
    from catalog import models
    from generated_grpc.grpc import catalog_Book_pb2

    from django_grpc_bus import serializers as proto_serializers

    class BrokenSerializer(proto_serializers.ModelProtoSerializer):
        class Meta:
            model = models.Book
            proto_class = catalog_Book_pb2.BookData
            fields = ["id", "no_such_field"]

    project.configure(ROOT_HANDLERS_HOOK=_handler_serving(BrokenSerializer))

    error = only("django_grpc_bus.E018", SERVER)
    assert "BrokenSerializer" in error.msg and "no_such_field" in error.msg


def test_the_test_projects_own_serializers_match_their_messages(settings):
    assert messages(SERVER) == []


def test_a_watched_model_served_from_a_proto_without_watch_is_e036(monkeypatch):
    """`watch: true` added but only generategrpc run (it compiles the files on disk): the
    server would start without Watch; the checks, which rungrpcserver runs, say what to run."""
    from catalog.models import Author, Book
    from catalog.services import AuthorService, BookService

    from django_grpc_bus.checks import _watch_errors
    from django_grpc_bus.handlers import BasicHandler
    from django_grpc_bus.watch import recording

    handler = BasicHandler()
    handler.register(AuthorService)
    handler.register(BookService)
    assert _watch_errors(handler) == []  # Book is watched and its proto has Watch
    monkeypatch.setattr(recording, "watched_models", lambda: {Book: (), Author: ()})
    (error,) = _watch_errors(handler)
    assert error.id == "django_grpc_bus.E036"
    assert "catalog.Author is marked `watch: true`" in error.msg
    assert "has no Watch RPC" in error.msg
    # the compiled module that lacks it, a file that exists (not the .proto's virtual name)
    named = error.msg.split("compiled module (")[1].split(")")[0]
    assert named.endswith("generated_grpc/grpc/Author_pb2.py") and os.path.isfile(named), named
    assert error.hint == "Run `manage.py generateproto` and `manage.py generategrpc`."
