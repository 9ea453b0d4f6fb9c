"""generateproto / generategrpc: output, stable numbering, --check, collisions, errors, buf."""

import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import CommandError
from django.db import models
from django.test.utils import isolate_apps
from google.protobuf import descriptor_pb2

from django_grpc_bus.meta import ModelSelection, Selection, selectable_fields
from django_grpc_bus.protogen.files import check_symbol_collisions
from django_grpc_bus.protogen.protoc import run_protoc

BOOK_FIELDS = ["title", "isbn"]


def book_meta(fields=None, exclude=None):
    entry = {"name": "Book"}
    if fields is not None:
        entry["fields"] = fields
    if exclude is not None:
        entry["exclude"] = exclude
    return {"apps": [{"name": "catalog", "models": [entry]}]}


def descriptor(project, relpath):
    """The file as protoc parses it: what any gRPC tool will see."""
    out = project.base / "parsed.pb"
    run_protoc([f"-I{project.root}", f"--descriptor_set_out={out}", relpath])
    return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]


def message(file_proto, name):
    return next(m for m in file_proto.message_type if m.name == name)


def numbers(msg):
    return {f.name: f.number for f in msg.field}


def reserved_numbers(msg):
    return {n for r in msg.reserved_range for n in range(r.start, r.end)}


def run_python(base: Path, code: str) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter from an unrelated folder, with BASE_DIR importable."""
    env = {**os.environ, "PYTHONPATH": str(base)}
    return subprocess.run(
        [sys.executable, "-c", code], cwd="/", env=env, capture_output=True, text=True, timeout=60
    )


# -- content ------------------------------------------------------------------------------------


def test_default_selection_writes_one_proto_per_model_in_app_folders(project):
    project.call("generateproto")
    files = sorted(p.relative_to(project.root).as_posix() for p in project.root.rglob("*.proto"))
    assert files == [
        "catalog/Author.proto",
        "catalog/Book.proto",
        "catalog/Everything.proto",
        "catalog/Profile.proto",
        "catalog/Tag.proto",
        "catalog/Token.proto",
        "faults/Entry.proto",
        "faults/Ledger.proto",
        "faults/Sleeper.proto",
        "shop/Book.proto",
        "shop/Customer.proto",
    ]


def test_service_messages_and_rpcs(project):
    project.write_meta(book_meta())
    project.call("generateproto")
    parsed = descriptor(project, "catalog/Book.proto")
    assert parsed.package == "catalog"
    assert {m.name for m in parsed.message_type} == {
        "BookData",
        "BookLookupRequest",
        "BookListRequest",
        "BookListResponse",
        "BookCountResponse",
        "BookPartialUpdateRequest",
    }
    (service,) = parsed.service
    assert service.name == "Book"
    rpcs = {m.name: (m.input_type, m.output_type, m.server_streaming) for m in service.method}
    assert rpcs == {
        "List": (".catalog.BookListRequest", ".catalog.BookListResponse", True),
        "Count": (".catalog.BookListRequest", ".catalog.BookCountResponse", False),
        "Create": (".catalog.BookData", ".catalog.BookData", False),
        "Retrieve": (".catalog.BookLookupRequest", ".catalog.BookData", False),
        "Update": (".catalog.BookData", ".catalog.BookData", False),
        "PartialUpdate": (".catalog.BookPartialUpdateRequest", ".catalog.BookData", False),
        "Destroy": (".catalog.BookLookupRequest", ".google.protobuf.Empty", False),
    }
    lookup = message(parsed, "BookLookupRequest")
    # The primary key and every other unique field, each optional so the server sees which.
    assert [(f.name, f.proto3_optional) for f in lookup.field] == [("id", True), ("isbn", True)]
    partial = message(parsed, "BookPartialUpdateRequest")
    assert [(f.name, f.type_name) for f in partial.field] == [
        ("data", ".catalog.BookData"),
        ("update_mask", ".google.protobuf.FieldMask"),
    ]
    batch = message(parsed, "BookListResponse").field[0]
    assert (batch.name, batch.label, batch.type_name) == ("results", 3, ".catalog.BookData")
    # No query declarations (no handler here): the page only, and Count all the same.
    assert numbers(message(parsed, "BookListRequest")) == {"page_size": 1, "page_token": 2}
    (count,) = message(parsed, "BookCountResponse").field
    assert (count.name, count.number, count.type) == ("count", 1, count.TYPE_INT64)


def test_fields_selection_keeps_primary_key(project):
    project.write_meta(book_meta(fields=["title"]))
    project.call("generateproto")
    data = message(descriptor(project, "catalog/Book.proto"), "BookData")
    assert [f.name for f in data.field] == ["id", "title"]


def test_output_is_byte_identical_across_runs(project):
    project.call("generateproto")
    first = {p: p.read_bytes() for p in project.root.rglob("*.proto")}
    out, _ = project.call("generateproto")
    assert "0 file(s) written or removed, 11 unchanged" in out
    assert {p: p.read_bytes() for p in project.root.rglob("*.proto")} == first


def test_generation_ignores_active_language(project):
    from django.utils import translation

    project.call("generateproto")
    before = (project.root / "catalog/Author.proto").read_text()
    with translation.override("fr"):
        out, _ = project.call("generateproto", "--check")
    assert "up to date" in out
    assert (project.root / "catalog/Author.proto").read_text() == before


# -- field numbers ---------------------------------------------------------------------------


def test_numbers_survive_removal_and_addition_of_fields(project):
    project.write_meta(book_meta(fields=["title", "author", "isbn"]))
    project.call("generateproto")
    first = numbers(message(descriptor(project, "catalog/Book.proto"), "BookData"))
    assert first == {"id": 1, "title": 2, "author": 3, "isbn": 4}

    # Remove `author`: its number and name become reserved; the others keep theirs.
    project.write_meta(book_meta(fields=["title", "isbn"]))
    project.call("generateproto")
    data = message(descriptor(project, "catalog/Book.proto"), "BookData")
    assert numbers(data) == {"id": 1, "title": 2, "isbn": 4}
    assert reserved_numbers(data) == {3}
    assert list(data.reserved_name) == ["author"]

    # Remove `title` too, then bring `author` back: it gets a fresh number, never 3 again.
    project.write_meta(book_meta(fields=["isbn", "author"]))
    project.call("generateproto")
    data = message(descriptor(project, "catalog/Book.proto"), "BookData")
    assert numbers(data) == {"id": 1, "isbn": 4, "author": 5}
    assert reserved_numbers(data) == {2, 3}
    assert list(data.reserved_name) == ["title"]

    # The lookup message follows the same rule.
    lookup = message(descriptor(project, "catalog/Book.proto"), "BookLookupRequest")
    assert numbers(lookup) == {"id": 1, "isbn": 2}


def test_numbers_of_a_renumbered_file_on_disk_are_kept(project):
    project.write_meta(book_meta())
    project.call("generateproto")
    path = project.root / "catalog/Book.proto"
    text = path.read_text()
    # Someone's earlier version numbered `isbn` 9: regeneration keeps what is on disk.
    path.write_text(text.replace("string isbn = 4;", "string isbn = 9;"))
    project.call("generateproto")
    assert numbers(message(descriptor(project, "catalog/Book.proto"), "BookData"))["isbn"] == 9
    project.write_meta(book_meta(exclude=["isbn"]))
    project.call("generateproto")
    data = message(descriptor(project, "catalog/Book.proto"), "BookData")
    assert reserved_numbers(data) == {9}


def test_unreadable_existing_file_is_a_clear_error(project):
    project.write_meta(book_meta())
    project.call("generateproto")
    path = project.root / "catalog/Book.proto"
    path.write_text(path.read_text().replace("message BookData {", "message BookData {{"))
    with pytest.raises(CommandError) as caught:
        project.call("generateproto")
    message_text = str(caught.value)
    assert "catalog/Book.proto:" in message_text  # protoc's own file:line:col
    assert "fix or delete" in message_text


# -- --check ---------------------------------------------------------------------------------


def test_check_exits_zero_when_up_to_date_and_one_with_a_diff(project, capsys):
    project.write_meta(book_meta(fields=["title"]))
    with pytest.raises(SystemExit) as missing:
        project.call("generateproto", "--check")
    assert missing.value.code == 1
    assert not (project.root / "catalog/Book.proto").exists()  # --check writes nothing

    project.call("generateproto")
    out, _ = project.call("generateproto", "--check")
    assert "1 .proto file(s) are up to date" in out

    project.write_meta(book_meta(fields=["title", "isbn"]))
    with pytest.raises(SystemExit) as changed:
        project.call("generateproto", "--check")
    assert changed.value.code == 1


def test_check_prints_a_unified_diff(project):
    import io

    from django.core.management import call_command

    project.write_meta(book_meta(fields=["title"]))
    project.call("generateproto")
    project.write_meta(book_meta(fields=["title", "isbn"]))
    out = io.StringIO()
    with pytest.raises(SystemExit):
        call_command("generateproto", "--check", stdout=out, stderr=io.StringIO())
    diff = out.getvalue()
    assert "--- a/catalog/Book.proto" in diff
    assert "+  string isbn = 3;" in diff


def test_deselected_model_file_is_removed_but_user_files_are_kept(project):
    project.call("generateproto")
    user_file = project.root / "catalog" / "extra.proto"
    user_file.write_text('syntax = "proto3";\npackage catalog;\n')
    project.write_meta(book_meta())
    out, _ = project.call("generateproto")
    assert "delete catalog/Author.proto" in out
    assert not (project.root / "catalog/Author.proto").exists()
    assert user_file.exists()
    assert (project.root / "catalog/Book.proto").exists()


# -- name collisions -------------------------------------------------------------------------


def test_same_class_name_in_two_apps_does_not_collide(project):
    project.write_meta({"apps": [{"name": "catalog", "models": ["Book"]}, {"name": "shop"}]})
    project.call("generategrpc")
    grpc_dir = project.root / "grpc"
    assert (grpc_dir / "catalog_Book_pb2.py").exists()
    assert (grpc_dir / "shop_Book_pb2.py").exists()
    assert (grpc_dir / "Customer_pb2.py").exists()  # unique names stay short
    result = run_python(
        project.base,
        "from generated_grpc.grpc import catalog_Book_pb2 as a, shop_Book_pb2 as b\n"
        "from generated_grpc.grpc import catalog_Book_pb2_grpc, shop_Book_pb2_grpc\n"
        "print(a.DESCRIPTOR.services_by_name['Book'].full_name,"
        " b.DESCRIPTOR.services_by_name['Book'].full_name,"
        " sorted(a.BookData.DESCRIPTOR.fields_by_name),"
        " sorted(b.BookData.DESCRIPTOR.fields_by_name))",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split(" ", 2)[:2] == ["catalog.Book", "shop.Book"]
    assert "isbn" in result.stdout and "price" in result.stdout


def test_symbol_collision_inside_one_app_is_refused():
    with isolate_apps("catalog"):

        class Thing(models.Model):
            class Meta:
                app_label = "catalog"

        class ThingData(models.Model):
            class Meta:
                app_label = "catalog"

        selection = Selection(
            tuple(ModelSelection(m, tuple(selectable_fields(m))) for m in (Thing, ThingData))
        )
        with pytest.raises(ImproperlyConfigured) as caught:
            check_symbol_collisions(selection)
    assert "catalog.Thing and catalog.ThingData" in str(caught.value)
    assert "catalog.ThingData" in str(caught.value)


# -- generategrpc ----------------------------------------------------------------------------


def test_generategrpc_generates_missing_protos_and_an_importable_package(project):
    out, _ = project.call("generategrpc")
    assert "11 .proto file(s) missing; generating them first." in out
    grpc_dir = project.root / "grpc"
    for name in ("Everything_pb2.py", "Everything_pb2.pyi", "Everything_pb2_grpc.py"):
        assert (grpc_dir / name).exists(), name
    assert (grpc_dir / "__init__.py").exists()
    assert (project.root / "__init__.py").exists()
    result = run_python(
        project.base,
        "from generated_grpc.grpc import Everything_pb2, Everything_pb2_grpc\n"
        "print(Everything_pb2.EverythingData.DESCRIPTOR.full_name,"
        " hasattr(Everything_pb2_grpc, 'add_EverythingServicer_to_server'),"
        " hasattr(Everything_pb2_grpc, 'EverythingStub'))",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["catalog.EverythingData", "True", "True"]
    # protos are already there: a second run compiles without regenerating them
    out, _ = project.call("generategrpc")
    assert "missing" not in out


def test_generategrpc_with_nested_producer_root(project):
    project.configure(PRODUCER_ROOT="services/gen")
    project.write_meta(book_meta())
    project.call("generategrpc")
    assert (project.base / "services/gen/grpc/catalog_Book_pb2.py").exists()
    result = run_python(
        project.base,
        "from services.gen.grpc import catalog_Book_pb2_grpc as m\nprint(m.BookStub.__name__)",
    )
    assert result.returncode == 0, result.stderr


def test_generategrpc_removes_modules_of_deselected_models(project):
    project.call("generategrpc")
    assert (project.root / "grpc/Author_pb2.py").exists()
    project.write_meta(book_meta())
    project.call("generateproto")
    project.call("generategrpc")
    assert not (project.root / "grpc/Author_pb2.py").exists()
    # shop.Book still exists in the project, so the name stays prefixed even when unselected
    assert (project.root / "grpc/catalog_Book_pb2.py").exists()


def test_generategrpc_warns_when_protos_are_stale(project):
    project.write_meta(book_meta(fields=["title"]))
    project.call("generateproto")
    project.write_meta(book_meta())
    _, err = project.call("generategrpc")
    assert "differ from the models" in err


def test_protoc_error_is_shown_verbatim_and_leaves_the_package_untouched(project, monkeypatch):
    project.write_meta(book_meta())
    project.call("generategrpc")
    module = project.root / "grpc/catalog_Book_pb2.py"
    before = module.read_bytes()
    # A file that parses (so numbering can be read) but does not compile: an unknown type.
    path = project.root / "catalog/Book.proto"
    path.write_text(path.read_text().replace("string title = 2;", "Unknown title = 2;"))
    with pytest.raises(CommandError) as caught:
        project.call("generategrpc")
    assert '"Unknown" is not defined' in str(caught.value)
    assert module.read_bytes() == before
    assert not list(project.root.glob(".build-*"))


def test_relative_producer_root_ignores_the_working_directory(
    project, tmp_path_factory, monkeypatch
):
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    monkeypatch.chdir(elsewhere)
    project.write_meta(book_meta())
    project.call("generateproto")
    assert (project.base / "generated_grpc/catalog/Book.proto").exists()
    assert not any(elsewhere.iterdir())


# -- buf lint ------------------------------------------------------------------------------------


def find_buf():
    local = Path(__file__).resolve().parents[2] / ".tools/node_modules/.bin/buf"
    return str(local) if local.exists() else shutil.which("buf")


def test_buf_lint_basic(project):
    buf = find_buf()
    if buf is None:
        if os.environ.get("DJANGO_GRPC_BUS_REQUIRE_BUF"):
            pytest.fail("buf is required (DJANGO_GRPC_BUS_REQUIRE_BUF) but was not found")
        pytest.skip("buf is not installed (make tools installs it with npm)")
    project.call("generategrpc")
    (project.root / "buf.yaml").write_text("version: v2\nlint:\n  use:\n    - BASIC\n")
    result = subprocess.run(
        [buf, "lint"], cwd=project.root, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # and buf does read the files: a broken naming rule is reported
    bad = project.root / "catalog/Author.proto"
    bad.write_text(bad.read_text().replace("string name = 2;", "string badName = 2;"))
    result = subprocess.run(
        [buf, "lint"], cwd=project.root, capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert "badName" in result.stdout + result.stderr


def test_compiled_fixture_modules_are_importable(compiled):
    module = importlib.import_module("generated_grpc.grpc.Everything_pb2")
    assert module.EverythingData.DESCRIPTOR.full_name == "catalog.EverythingData"
