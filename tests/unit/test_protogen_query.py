"""generateproto and SPEC §8: filters, ordering and search as typed List request fields, Count,
where the declarations are read from, and regeneration with a missing or stale package."""

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import grpc
import pytest
from catalog.models import Author, Book, Everything, Tag
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import CommandError
from django.db import models
from django.test.utils import isolate_apps
from django_filters import rest_framework as filters
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from support import TESTS_DIR

from django_grpc_bus.meta import ModelSelection, Selection, selectable_fields
from django_grpc_bus.protogen import placeholders
from django_grpc_bus.protogen.files import check_symbol_collisions
from django_grpc_bus.protogen.query import QueryDeclarationError, filter_fields, list_query
from django_grpc_bus.testing import ServerProcess
from unit.test_protogen import book_meta, descriptor, find_buf, message, numbers, reserved_numbers

FieldProto = descriptor_pb2.FieldDescriptorProto
REPEATED = FieldProto.LABEL_REPEATED

HANDLER_MODULE = """
from django_filters import rest_framework as filters

from catalog.models import Book, Everything
from django_grpc_bus.generics import ModelService
from django_grpc_bus.handlers import BasicHandler


class BookService(ModelService):
    queryset = Book.objects.all()
{body}

handler = BasicHandler()
handler.register(BookService)
"""


def service(model=Book, **attributes):
    """A service class with `attributes`, as generation sees it: only class attributes."""
    return type("BookService", (), {"queryset": model.objects.all(), **attributes})


def fields_of(service_class, model=Book):
    """{proto name: (type, repeated, optional, django-filter name)} of `service_class`'s filters."""
    found, _ = filter_fields(service_class, model)
    return {f.name: (f.type, f.repeated, f.optional, f.filter_name) for f in found}


def generate_with(project, make_module, body, meta=None):
    """Generate the project's protos with a handler whose BookService has `body`."""
    source = HANDLER_MODULE.format(body=textwrap.indent(textwrap.dedent(body), "    "))
    name = make_module(source)
    project.write_meta(meta or book_meta())
    project.configure(ROOT_HANDLERS_HOOK=f"{name}.handler")
    return project.call("generateproto")


def parsed_book(project):
    return descriptor(project, "catalog/Book.proto")


def field(msg, name):
    return next(f for f in msg.field if f.name == name)


# -- the typed fields ---------------------------------------------------------------------------


def test_list_of_field_names_gives_exact_filters_typed_as_the_model_fields():
    assert fields_of(service(filterset_fields=["title", "author", "id"])) == {
        "title": ("string", False, True, "title"),
        "author": ("int32", False, True, "author"),  # the related primary key's type
        "id": ("int64", False, True, "id"),
    }


def test_dict_lookups_are_named_with_single_underscores():
    declared = {"title": ["exact", "icontains"], "id": ["lt", "gte", "in", "range", "isnull"]}
    assert fields_of(service(filterset_fields=declared)) == {
        "title": ("string", False, True, "title"),
        "title_icontains": ("string", False, True, "title__icontains"),
        "id_lt": ("int64", False, True, "id__lt"),
        "id_gte": ("int64", False, True, "id__gte"),
        "id_in": ("int64", True, False, "id__in"),
        "id_range": ("int64", True, False, "id__range"),
        "id_isnull": ("bool", False, True, "id__isnull"),
    }


def test_every_filterable_field_type_and_lookup_of_the_test_project():
    """catalog.services.EverythingService declares every type django-filter filters."""
    from catalog.services import EverythingService

    found = fields_of(EverythingService, Everything)
    timestamp, duration = ".google.protobuf.Timestamp", ".google.protobuf.Duration"
    expected = {
        "f_int": ("int32", False, True, "f_int"),
        "f_int_in": ("int32", True, False, "f_int__in"),
        "f_int_range": ("int32", True, False, "f_int__range"),
        "f_bigint_lte": ("int64", False, True, "f_bigint__lte"),
        "f_posbig_in": ("int64", True, False, "f_posbig__in"),
        "f_float_range": ("double", True, False, "f_float__range"),
        "f_decimal_gt": ("string", False, True, "f_decimal__gt"),
        "f_bool": ("bool", False, True, "f_bool"),
        "f_char_icontains": ("string", False, True, "f_char__icontains"),
        "f_uuid_in": ("string", True, False, "f_uuid__in"),
        "f_date_range": ("string", True, False, "f_date__range"),
        "f_date_year": ("int32", False, True, "f_date__year"),  # date parts are integers
        "f_date_year_gte": ("int32", False, True, "f_date__year__gte"),
        "f_date_week_day": ("int32", False, True, "f_date__week_day"),
        "f_datetime": (timestamp, False, False, "f_datetime"),  # a message: presence of its own
        "f_datetime_in": (timestamp, True, False, "f_datetime__in"),
        "f_datetime_date": ("string", False, True, "f_datetime__date"),
        "f_datetime_date_gte": ("string", False, True, "f_datetime__date__gte"),
        "f_datetime_hour": ("int32", False, True, "f_datetime__hour"),
        "f_time_hour": ("int32", False, True, "f_time__hour"),
        "f_duration_lt": (duration, False, False, "f_duration__lt"),
        "f_choice_int": ("int32", False, True, "f_choice_int"),  # a ChoiceFilter
        "f_choice_str_in": ("string", True, False, "f_choice_str__in"),
        "f_custom_icontains": ("string", False, True, "f_custom__icontains"),
        "f_null_int_isnull": ("bool", False, True, "f_null_int__isnull"),
        "f_null_datetime_isnull": ("bool", False, True, "f_null_datetime__isnull"),
        "f_null_bool": ("bool", False, True, "f_null_bool"),
        "author": ("int32", False, True, "author"),
        "author_in": ("int32", True, False, "author__in"),
        "author_name_icontains": ("string", False, True, "author__name__icontains"),
        "editor_isnull": ("bool", False, True, "editor__isnull"),
        "token": ("string", False, True, "token"),  # a UUID primary key
        "tags": ("int32", True, False, "tags"),  # many-to-many: several keys
    }
    assert {name: found[name] for name in expected} == expected
    assert len(found) == 122


def test_filterset_class_with_declared_and_method_filters():
    class BookFilterSet(filters.FilterSet):
        # backed by a model field: its type, whatever the filter class
        short = filters.NumberFilter(field_name="id", lookup_expr="lt")
        # not backed by a model field: typed by the filter class
        q = filters.CharFilter(method="search_anything")
        score = filters.NumberFilter(method="by_score")
        has_author = filters.BooleanFilter(method="by_author")
        added = filters.DateFromToRangeFilter(method="by_added")
        since = filters.IsoDateTimeFilter(method="by_time")
        writer = filters.ModelChoiceFilter(queryset=Author.objects.all(), method="by_writer")
        tag_names = filters.ModelMultipleChoiceFilter(
            field_name="tags", queryset=Tag.objects.all(), to_field_name="name", conjoined=True
        )
        order = filters.OrderingFilter(fields=["title"])

        class Meta:
            model = Book
            fields = {"title": ["exact", "istartswith"]}

    found = fields_of(service(filterset_class=BookFilterSet))
    assert found == {
        "title": ("string", False, True, "title"),
        "title_istartswith": ("string", False, True, "title__istartswith"),
        "short": ("int64", False, True, "short"),
        "q": ("string", False, True, "q"),
        "score": ("string", False, True, "score"),  # a decimal, as text
        "has_author": ("bool", False, True, "has_author"),
        "added": ("string", True, False, "added"),  # from and to
        "since": (".google.protobuf.Timestamp", False, False, "since"),
        "writer": ("int32", False, True, "writer"),  # Author's primary key
        "tag_names": ("string", True, False, "tag_names"),  # Tag.name (to_field_name)
        "order": ("string", True, False, "order"),
    }
    found, _ = filter_fields(service(filterset_class=BookFilterSet), Book)
    comments = {f.name: f.comment for f in found}
    assert comments["tag_names"] == "all of these values; name of catalog.Tag"
    assert comments["added"] == 'two values, from and to; "" leaves that end open'


def test_a_filter_of_unknown_type_is_an_error_naming_it_and_the_fix():
    class BookFilterSet(filters.FilterSet):
        anything = filters.Filter(method="by_anything")

    with pytest.raises(QueryDeclarationError) as caught:
        filter_fields(service(filterset_class=BookFilterSet), Book)
    text = str(caught.value)
    assert "filter 'anything' (Filter) has no proto type" in text
    assert "BookService (filterset_class BookFilterSet)" in text
    assert "CharFilter" in text


def test_a_lookup_choice_filter_is_refused():
    class BookFilterSet(filters.FilterSet):
        title = filters.LookupChoiceFilter(lookup_choices=["exact", "icontains"])

    with pytest.raises(QueryDeclarationError, match="one filter per lookup"):
        filter_fields(service(filterset_class=BookFilterSet), Book)


def test_declarations_django_filter_refuses_are_errors_naming_the_service():
    with pytest.raises(QueryDeclarationError, match=r"BookService\.filterset_fields .*nope"):
        filter_fields(service(filterset_fields=["nope"]), Book)
    with pytest.raises(QueryDeclarationError, match=r"f_json.*unrecognized field type"):
        filter_fields(service(Everything, filterset_fields=["f_json"]), Everything)

    class TagFilterSet(filters.FilterSet):
        class Meta:
            model = Tag
            fields = ["name"]

    with pytest.raises(QueryDeclarationError, match=r"filterset_class .*does not match"):
        filter_fields(service(filterset_class=TagFilterSet), Book)


def test_two_filters_with_one_proto_name_are_refused_naming_both():
    class BookFilterSet(filters.FilterSet):
        title_icontains = filters.CharFilter(field_name="title", lookup_expr="icontains")

        class Meta:
            model = Book
            fields = {"title": ["icontains"]}

    with pytest.raises(QueryDeclarationError) as caught:
        filter_fields(service(filterset_class=BookFilterSet), Book)
    assert "'title__icontains' and 'title_icontains'" in str(caught.value)
    assert "the field title_icontains of catalog.BookFilter" in str(caught.value)

    class JsonTwinFilterSet(filters.FilterSet):
        titleIcontains = filters.CharFilter(field_name="title")

        class Meta:
            model = Book
            fields = {"title": ["icontains"]}

    with pytest.raises(QueryDeclarationError, match="the JSON name titleIcontains"):
        filter_fields(service(filterset_class=JsonTwinFilterSet), Book)


def test_ordering_and_search_declarations():
    query = list_query(
        service(ordering_fields=["title", "id"], ordering="-id", search_fields=["^title"]), Book
    )
    assert (query.ordering_fields, query.ordering, query.search_fields) == (
        ("title", "id"),
        ("-id",),
        ("^title",),
    )
    assert query.filters == ()
    assert list_query(service(), Book) is None
    assert list_query(service(ordering="title"), Book) is None  # a default alone: no order_by


# -- the generated file -------------------------------------------------------------------------


def test_generated_list_request_filter_message_and_count(project, make_module):
    _, err = generate_with(
        project,
        make_module,
        """
        filterset_fields = {"title": ["exact", "icontains"], "author": ["in"]}
        ordering_fields = "__all__"
        ordering = ["title"]
        search_fields = ["title"]
        """,
    )
    assert err == ""
    parsed = parsed_book(project)
    request = message(parsed, "BookListRequest")
    assert numbers(request) == {
        "page_size": 1,
        "page_token": 2,
        "filter": 3,
        "order_by": 4,
        "search": 5,
    }
    assert field(request, "filter").type_name == ".catalog.BookFilter"
    assert field(request, "order_by").label == REPEATED
    assert field(request, "search").type == FieldProto.TYPE_STRING
    book_filter = message(parsed, "BookFilter")
    assert [
        (f.name, f.number, f.proto3_optional, f.label == REPEATED) for f in book_filter.field
    ] == [
        ("title", 1, True, False),
        ("title_icontains", 2, True, False),
        ("author_in", 3, False, True),
    ]
    (count,) = (m for m in parsed.service[0].method if m.name == "Count")
    assert (count.input_type, count.output_type) == (
        ".catalog.BookListRequest",
        ".catalog.BookCountResponse",
    )
    text = (project.root / "catalog/Book.proto").read_text()
    assert "  // title__icontains\n  optional string title_icontains = 2;" in text
    assert "DRF's OrderingFilter takes it: any field; a leading -" in text
    assert "unset: title" in text
    # deterministic, and --check agrees
    first = text
    project.call("generateproto")
    assert (project.root / "catalog/Book.proto").read_text() == first
    project.call("generateproto", "--check")


def test_only_declared_parts_appear(project, make_module):
    generate_with(project, make_module, 'search_fields = ["title"]')
    parsed = parsed_book(project)
    assert numbers(message(parsed, "BookListRequest")) == {
        "page_size": 1,
        "page_token": 2,
        "search": 3,
    }
    assert "BookFilter" not in {m.name for m in parsed.message_type}


def test_filter_numbers_are_stable_and_removed_ones_reserved(project, make_module):
    generate_with(project, make_module, 'filterset_fields = {"title": ["exact", "icontains"]}')
    generate_with(
        project,
        make_module,
        """
        filterset_fields = {"title": ["icontains"], "isbn": ["exact"]}
        ordering_fields = ["title"]
        """,
    )
    parsed = parsed_book(project)
    book_filter = message(parsed, "BookFilter")
    assert numbers(book_filter) == {"title_icontains": 2, "isbn": 3}
    assert reserved_numbers(book_filter) == {1}
    assert list(book_filter.reserved_name) == ["title"]
    assert numbers(message(parsed, "BookListRequest"))["order_by"] == 4

    # No filters any more: the request's `filter` is reserved, and never reused.
    generate_with(project, make_module, 'ordering_fields = ["title"]\nsearch_fields = ["title"]')
    parsed = parsed_book(project)
    request = message(parsed, "BookListRequest")
    assert numbers(request) == {"page_size": 1, "page_token": 2, "order_by": 4, "search": 5}
    assert reserved_numbers(request) == {3}
    assert list(request.reserved_name) == ["filter"]
    assert "BookFilter" not in {m.name for m in parsed.message_type}


def test_a_model_named_like_the_filter_message_collides_only_when_filters_are_declared():
    with isolate_apps("catalog"):

        class Thing(models.Model):
            class Meta:
                app_label = "catalog"

        class ThingFilter(models.Model):
            class Meta:
                app_label = "catalog"

        selection = Selection(
            tuple(ModelSelection(m, tuple(selectable_fields(m))) for m in (Thing, ThingFilter))
        )
        check_symbol_collisions(selection)
        with pytest.raises(ImproperlyConfigured, match=r"catalog\.Thing and catalog\.ThingFilter"):
            check_symbol_collisions(selection, [Thing])


def test_no_hook_or_a_broken_one_is_one_line_and_no_query_fields(project, make_module):
    project.write_meta(book_meta())
    _, err = project.call("generateproto")
    assert err.strip().splitlines() == [
        "No filters, ordering or search generated for List, and no actions: "
        "MESSAGE_BUS['ROOT_HANDLERS_HOOK'] "
        "is not set, and they are read from the services its handler registers."
    ]
    # A handler module that does not exist yet (before generateservices --handler): a note.
    project.configure(ROOT_HANDLERS_HOOK="not_written_yet_handlers.handler")
    _, err = project.call("generateproto")
    (line,) = err.strip().splitlines()
    assert "ROOT_HANDLERS_HOOK 'not_written_yet_handlers.handler' cannot be imported" in line
    assert numbers(message(parsed_book(project), "BookListRequest")) == {
        "page_size": 1,
        "page_token": 2,
    }


def test_a_handler_module_that_fails_to_import_stops_generation(project, make_module):
    """Going on without its services would retire their actions', filters' and declared
    fields' numbers (a new user's NameError renumbered a served field): nothing is written."""
    generate_with(project, make_module, 'filterset_fields = ["title"]')
    before = (project.root / "catalog/Book.proto").read_text()
    broken = make_module("import catalog.models\nhandler = undefined_name\n")
    project.configure(ROOT_HANDLERS_HOOK=f"{broken}.handler")
    with pytest.raises(CommandError) as stopped:
        project.call("generateproto")
    text = str(stopped.value)
    assert f"ROOT_HANDLERS_HOOK '{broken}.handler' cannot be imported" in text
    assert "NameError: name 'undefined_name' is not defined, at modules/" in text
    assert "Nothing was written" in text
    assert (project.root / "catalog/Book.proto").read_text() == before


def test_errors_in_declarations_stop_generation(project, make_module):
    with pytest.raises(CommandError, match="filterset_fields cannot be used by django-filter"):
        generate_with(project, make_module, 'filterset_fields = ["nope"]')
    assert not (project.root / "catalog/Book.proto").exists()


def test_buf_lint_basic_with_query_fields(project):
    """The test project's own declarations (catalog.Book and Everything) lint clean."""
    buf = find_buf()
    if buf is None:
        pytest.skip("buf is not installed (make tools installs it with npm)")
    project.configure(ROOT_HANDLERS_HOOK="handlers.handler")
    project.call("generateproto")
    assert "message EverythingFilter {" in (project.root / "catalog/Everything.proto").read_text()
    (project.root / "buf.yaml").write_text("version: v2\nlint:\n  use:\n    - BASIC\n")
    result = subprocess.run(
        [buf, "lint"], cwd=project.root, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


# -- placeholders for the compiled package ------------------------------------------------------


def test_placeholders_serve_missing_modules_and_are_forgotten(make_module):
    package = "bus_missing_package.grpc"
    services = make_module(
        "from bus_missing_package.grpc import Thing_pb2, Thing_pb2_grpc\n"
        "import bus_missing_package.grpc.Other_pb2 as other\n"
        "class ThingServicer(Thing_pb2_grpc.ThingServicer):\n"
        "    proto_class = Thing_pb2.ThingData\n"
        "    nested = Thing_pb2.ThingData.DESCRIPTOR.fields_by_name['x']\n"
        "    value = Thing_pb2.Status.Value('ON')\n"
        "    other = other.OtherData\n"
    )
    meta_path = list(sys.meta_path)
    with placeholders.placeholder_imports(package) as finder:
        module = __import__(services)
        assert isinstance(module.ThingServicer.proto_class, placeholders.PlaceholderType)
    assert sys.meta_path == meta_path
    assert "bus_missing_package.grpc.Thing_pb2" in finder.served
    assert not [name for name in sys.modules if name.startswith("bus_missing_package")]
    assert services not in sys.modules  # the project module held placeholders: forgotten


def test_loaded_modules_of_the_package_are_set_aside_and_put_back(compiled, make_module):
    import generated_grpc.grpc
    from generated_grpc.grpc import Everything_pb2

    user = make_module("from generated_grpc.grpc import Everything_pb2\nX = Everything_pb2.Nope\n")
    with placeholders.placeholder_imports("generated_grpc.grpc"):
        module = __import__(user)
        assert isinstance(module.X, placeholders.PlaceholderType)  # a stale name: a placeholder
    assert sys.modules["generated_grpc.grpc.Everything_pb2"] is Everything_pb2
    assert sys.modules["generated_grpc.grpc"] is generated_grpc.grpc
    assert sys.modules["generated_grpc"].grpc is generated_grpc.grpc
    assert generated_grpc.grpc.Everything_pb2 is Everything_pb2


# -- regeneration with a missing or stale package (SPEC §8: never deadlocks) --------------------


def copy_test_project(folder: Path) -> Path:
    for name in ("catalog", "shop", "faults", "testproject"):
        shutil.copytree(
            TESTS_DIR / name, folder / name, ignore=shutil.ignore_patterns("__pycache__")
        )
    shutil.copy(TESTS_DIR / "handlers.py", folder / "handlers.py")
    shutil.copy(TESTS_DIR / "service_meta.yaml", folder / "service_meta.yaml")  # SERVICE_META
    return folder


def django(folder: Path, *args: str, code: str | None = None) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "testproject.settings",
        "DATABASE_URL": f"sqlite:///{folder / 'db.sqlite3'}",
        "PYTHONPATH": str(folder),
    }
    command = [sys.executable, "-c", code] if code else [sys.executable, "-m", "django", *args]
    return subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=180)


def test_regeneration_with_a_missing_then_a_stale_package_and_the_server_starts(tmp_path):
    folder = copy_test_project(tmp_path)
    # Nothing generated at all: services.py imports a package that does not exist.
    for step in ("generateproto", "generategrpc"):
        result = django(folder, step)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "No filters" not in result.stderr
    assert "message BookFilter {" in (folder / "generated_grpc/catalog/Book.proto").read_text()
    assert django(folder, "generateproto", "--check").returncode == 0

    # Stale: a module that lacks the message the serializers read, and one module missing.
    grpc_dir = folder / "generated_grpc/grpc"
    (grpc_dir / "catalog_Book_pb2.py").write_text('"""Stale: no BookData here."""\n')
    (grpc_dir / "Everything_pb2.py").unlink()
    # Both commands in one process, which then imports the services for real.
    result = django(
        folder,
        code=textwrap.dedent(
            """
            import django
            django.setup()
            from django.core.management import call_command
            call_command("generateproto")
            call_command("generategrpc")
            from catalog import serializers
            print(serializers.BookSerializer.Meta.proto_class.DESCRIPTOR.full_name)
            print(serializers.EverythingSerializer.Meta.proto_class.DESCRIPTOR.full_name)
            """
        ),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split()[-2:] == ["catalog.BookData", "catalog.EverythingData"]

    django(folder, "migrate", "--run-syncdb", "-v0")
    env = {
        "DJANGO_SETTINGS_MODULE": "testproject.settings",
        "DATABASE_URL": f"sqlite:///{folder / 'db.sqlite3'}",
        "PYTHONPATH": str(folder),
    }
    with ServerProcess([sys.executable, "-m", "django"], cwd=folder, env=env) as server:
        with grpc.insecure_channel(server.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for name in ("catalog.Book", "catalog.Everything"):
                reply = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
            database = ProtoReflectionDescriptorDatabase(channel)
            pool = descriptor_pool.DescriptorPool(database)
            book = pool.FindServiceByName("catalog.Book")
            assert book.methods_by_name["Count"].output_type.name == "BookCountResponse"
            request = pool.FindMessageTypeByName("catalog.BookListRequest")
            assert {"filter", "order_by", "search"} <= set(request.fields_by_name)
        assert server.stop() == 0
