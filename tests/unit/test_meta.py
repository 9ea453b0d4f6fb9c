"""service_meta.yaml: default selection, resolving apps/models/fields, errors, generatemetayaml."""

from __future__ import annotations

import re
import sys

import pytest
import yaml
from django.apps import AppConfig, apps
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import CommandError
from django.test import override_settings

from django_grpc_bus.meta import (
    ServiceMetaError,
    is_project_app,
    load_selection,
    resolve_meta,
)


def picked(selection) -> dict[str, list[str]]:
    """{'catalog.Book': ['id', 'title', ...]} for a Selection, in its order."""
    return {s.label: [f.name for f in s.fields] for s in selection}


def meta_error(project, document) -> str:
    """Write `document` as service_meta.yaml and return the ServiceMetaError it causes."""
    project.write_meta(document)
    with pytest.raises(ServiceMetaError) as excinfo:
        load_selection()
    return str(excinfo.value)


def app(name, *models_):
    entry = {"name": name}
    if models_:
        entry["models"] = list(models_)
    return {"apps": [entry]}


# -- the default selection ------------------------------------------------------------------------


def test_default_selection_is_every_model_of_the_project_apps(project):
    selection = load_selection()

    labels = [s.label for s in selection]
    expected = sorted(
        f"{model._meta.app_label}.{model.__name__}"
        for label in ("catalog", "faults", "shop")
        for model in apps.get_app_config(label).get_models()
    )
    assert labels == expected
    assert {s.app_label for s in selection} == {"catalog", "faults", "shop"}
    assert "catalog.Book" in labels and "shop.Book" in labels


def test_default_selection_excludes_contrib_third_party_and_this_package(project):
    selected_apps = {s.app_label for s in load_selection()}

    for label in ("contenttypes", "auth", "rest_framework", "django_grpc_bus"):
        assert label not in selected_apps
        assert not is_project_app(apps.get_app_config(label))
    assert is_project_app(apps.get_app_config("catalog"))


def test_default_selection_takes_every_stored_field_including_many_to_many(project):
    fields = picked(load_selection())

    assert fields["catalog.Book"] == ["id", "title", "author", "isbn"]
    assert fields["catalog.Profile"] == ["author", "bio"]
    assert fields["catalog.Everything"][-1] == "tags"  # many-to-many come last
    assert "books" not in fields["catalog.Author"]  # reverse relations are not fields


def test_default_selection_with_a_project_app_without_models(project):
    installed = [
        "django.contrib.contenttypes",
        "django.contrib.auth",
        "rest_framework",
        "django_grpc_bus",
        "catalog",
        "shop",
        "testproject",  # a project package with no models
    ]
    with override_settings(INSTALLED_APPS=installed):
        assert {s.app_label for s in load_selection()} == {"catalog", "shop"}


def test_project_app_named_like_this_package_is_still_a_project_app(tmp_path, monkeypatch):
    package = tmp_path / "django_grpc_bus_demo"
    package.mkdir()
    (package / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        config = AppConfig.create("django_grpc_bus_demo")
    finally:
        sys.modules.pop("django_grpc_bus_demo", None)

    assert is_project_app(config)


# -- selecting fields -----------------------------------------------------------------------------


def test_fields_keeps_primary_key_and_model_order(project):
    project.write_meta(app("catalog", {"name": "Book", "fields": ["isbn", "title"]}))

    assert picked(load_selection()) == {"catalog.Book": ["id", "title", "isbn"]}


def test_fields_keeps_a_non_auto_primary_key(project):
    project.write_meta(app("catalog", {"name": "Profile", "fields": ["bio"]}))

    assert picked(load_selection()) == {"catalog.Profile": ["author", "bio"]}


def test_exclude_removes_fields(project):
    project.write_meta(app("catalog", {"name": "Book", "exclude": ["isbn", "author"]}))

    assert picked(load_selection()) == {"catalog.Book": ["id", "title"]}


@pytest.mark.parametrize(
    ("model", "pk"),
    [("Book", "id"), ("Token", "key"), ("Profile", "author"), ("Profile", "author_id")],
)
def test_excluding_the_primary_key_is_an_error(project, model, pk):
    message = meta_error(project, app("catalog", {"name": model, "exclude": [pk]}))

    assert f"apps[0] (catalog).models[0] ({model}).exclude" in message
    assert "primary key" in message


@pytest.mark.parametrize("name", ["book", "BOOK", "bOoK"])
def test_model_names_are_case_insensitive(project, name):
    project.write_meta(app("catalog", {"name": name}))

    assert list(picked(load_selection())) == ["catalog.Book"]


def test_model_entry_may_be_a_plain_name(project):
    project.write_meta(app("shop", "Customer", {"name": "Book", "fields": ["price"]}))

    assert picked(load_selection()) == {
        "shop.Book": ["id", "price"],
        "shop.Customer": ["id", "email"],
    }


def test_app_without_models_selects_every_model(project):
    project.write_meta(app("catalog"))

    selection = load_selection()
    assert {s.app_label for s in selection} == {"catalog"}
    assert [s.model for s in selection] == sorted(
        apps.get_app_config("catalog").get_models(), key=lambda m: m.__name__
    )


def test_attname_is_accepted(project):
    project.write_meta(app("catalog", {"name": "Book", "fields": ["author_id"]}))

    assert picked(load_selection()) == {"catalog.Book": ["id", "author"]}


def test_many_to_many_is_selectable(project):
    project.write_meta(app("catalog", {"name": "Everything", "fields": ["tags", "author"]}))

    assert picked(load_selection()) == {"catalog.Everything": ["id", "author", "tags"]}


def test_selection_is_ordered_by_app_then_model(project):
    project.write_meta(
        {
            "apps": [
                {"name": "shop", "models": ["Customer", "Book"]},
                {"name": "catalog", "models": ["Tag", "Author"]},
            ]
        }
    )

    assert list(picked(load_selection())) == [
        "catalog.Author",
        "catalog.Tag",
        "shop.Book",
        "shop.Customer",
    ]


def test_explicit_path_argument(project, tmp_path_factory):
    path = tmp_path_factory.mktemp("meta") / "other.yaml"
    path.write_text(yaml.safe_dump(app("shop", "Customer")))

    assert list(picked(load_selection(path))) == ["shop.Customer"]


# -- errors ---------------------------------------------------------------------------------------


def test_service_meta_error_is_a_library_error_commands_report_with_its_text(project):
    """The library raises ImproperlyConfigured; only the command base makes it a CommandError."""
    assert issubclass(ServiceMetaError, ImproperlyConfigured)
    assert not issubclass(ServiceMetaError, CommandError)
    message = meta_error(project, {"apps": [{"name": "nope"}]})
    with pytest.raises(CommandError) as excinfo:
        project.call("generateproto")
    assert str(excinfo.value) == message


def test_unknown_app(project):
    message = meta_error(project, {"apps": [{"name": "catalog"}, {"name": "nope"}]})

    assert "apps[1] (nope)" in message
    assert "Project apps: catalog, faults, shop" in message
    assert "service_meta.yaml" in message  # the source file


def test_unknown_model(project):
    message = meta_error(project, app("catalog", {"name": "Book"}, {"name": "Nope"}))

    assert "apps[0] (catalog).models[1] (Nope)" in message
    assert "Models: Author, Book, Everything, Profile, Tag, Token" in message


def test_unknown_field(project):
    message = meta_error(project, app("catalog", {"name": "Book", "fields": ["title", "nope"]}))

    assert "apps[0] (catalog).models[0] (Book).fields" in message
    assert "'nope'" in message
    assert "author, id, isbn, title" in message


def test_reverse_relation_is_named_as_such(project):
    message = meta_error(project, app("catalog", {"name": "Author", "fields": ["books"]}))

    assert "apps[0] (catalog).models[0] (Author).fields" in message
    assert "catalog.Author.books" in message
    assert "reverse" in message
    assert "id, name" in message


def test_unknown_field_in_exclude(project):
    message = meta_error(project, app("shop", {"name": "Customer", "exclude": ["phone"]}))

    assert "apps[0] (shop).models[0] (Customer).exclude" in message
    assert "'phone'" in message


def test_fields_and_exclude_together(project):
    message = meta_error(
        project, app("catalog", {"name": "Book", "fields": ["title"], "exclude": ["isbn"]})
    )

    assert "apps[0] (catalog).models[0] (Book)" in message
    assert "`fields` or `exclude`" in message


@pytest.mark.parametrize("names", [["title", "title"], ["author", "author_id"]])
def test_field_listed_twice(project, names):
    message = meta_error(project, app("catalog", {"name": "Book", "fields": names}))

    assert "apps[0] (catalog).models[0] (Book).fields" in message
    assert "listed twice" in message


def test_model_listed_twice(project):
    message = meta_error(project, app("catalog", {"name": "Book"}, {"name": "book"}))

    assert "apps[0] (catalog).models[1] (book)" in message
    assert "listed twice" in message


def test_app_listed_twice(project):
    message = meta_error(project, {"apps": [{"name": "shop"}, "catalog", {"name": "shop"}]})

    assert "apps[2] (shop)" in message
    assert "listed twice" in message


def test_unknown_top_level_key(project):
    message = meta_error(project, {"apps": ["catalog"], "version": 1})

    assert "top level" in message
    assert "version" in message


def test_unknown_app_key(project):
    message = meta_error(project, {"apps": [{"name": "catalog", "model": ["Book"]}]})

    assert "apps[0] (catalog)" in message
    assert "unknown key(s) model" in message
    assert "models" in message  # the allowed keys


def test_unknown_model_key(project):
    message = meta_error(project, app("catalog", {"name": "Book", "field": ["title"]}))

    assert "apps[0] (catalog).models[0] (Book)" in message
    assert "unknown key(s) field" in message
    assert "exclude, fields, name" in message


@pytest.mark.parametrize("document", [["catalog"], "catalog", 3, {"app": ["catalog"]}], ids=str)
def test_top_level_not_a_mapping_with_apps(project, document):
    message = meta_error(project, yaml.safe_dump(document))

    assert "top level" in message
    assert "apps" in message


@pytest.mark.parametrize("value", [[], "catalog", {"name": "catalog"}, None])
def test_apps_empty_or_not_a_list(project, value):
    message = meta_error(project, {"apps": value})

    assert ": apps: " in message
    assert "non-empty list" in message


@pytest.mark.parametrize("value", [[], "Book", {"name": "Book"}], ids=str)
def test_models_empty_or_not_a_list(project, value):
    message = meta_error(project, {"apps": [{"name": "catalog", "models": value}]})

    assert "apps[0] (catalog).models" in message
    assert "non-empty list" in message


@pytest.mark.parametrize("entry", [{"models": ["Book"]}, {"name": 7}, ["catalog"]], ids=str)
def test_app_entry_without_a_name(project, entry):
    message = meta_error(project, {"apps": [entry]})

    assert "apps[0]" in message
    assert "`name:`" in message


@pytest.mark.parametrize("key", ["fields", "exclude"])
@pytest.mark.parametrize("value", ["title", {"title": 1}, [1, 2]], ids=str)
def test_fields_not_a_list_of_names(project, key, value):
    message = meta_error(project, app("catalog", {"name": "Book", key: value}))

    assert f"apps[0] (catalog).models[0] (Book).{key}" in message
    assert "list of field names" in message


@pytest.mark.parametrize("text", ["", "   \n", "# only a comment\n"], ids=repr)
def test_empty_file(project, text):
    message = meta_error(project, text)

    assert "top level" in message


def test_invalid_yaml(project):
    message = meta_error(project, "apps:\n  - name: catalog\n    models: [Book\n")

    assert "not valid YAML" in message
    assert "service_meta.yaml" in message


def test_missing_file_suggests_generatemetayaml(project):
    project.configure(SERVICE_META="missing.yaml")

    with pytest.raises(ServiceMetaError) as excinfo:
        load_selection()

    message = str(excinfo.value)
    assert str(project.base.resolve() / "missing.yaml") in message
    assert "does not exist" in message
    assert "generatemetayaml" in message


def test_missing_file_suggestion_creates_the_right_file(project, monkeypatch):
    project.configure(SERVICE_META="config/service_meta.yaml")
    monkeypatch.chdir(project.base)  # where manage.py is
    with pytest.raises(ServiceMetaError) as excinfo:
        load_selection()
    suggested = re.search(r"--file (\S+?)`", str(excinfo.value)).group(1)

    project.call("generatemetayaml", "--file", suggested)

    assert len(load_selection()) > 0


@pytest.mark.parametrize("nested", [False, True])
def test_yaml_is_safe_loaded(project, tmp_path, nested):
    marker = tmp_path / "x"
    payload = f'!!python/object/apply:os.system ["echo hacked > {marker}"]'
    text = f"apps:\n  - {payload}\n" if nested else payload

    message = meta_error(project, text)

    assert "not valid YAML" in message
    assert not marker.exists()


def test_resolve_meta_names_its_source():
    with pytest.raises(ServiceMetaError, match=r"^custom\.yaml: apps\[0\] \(nope\): "):
        resolve_meta({"apps": ["nope"]}, source="custom.yaml")


# -- generatemetayaml ------------------------------------------------------------------------------


def test_generatemetayaml_stdout_round_trips_to_the_default_selection(project):
    out, _ = project.call("generatemetayaml")

    document = yaml.safe_load(out)
    assert [entry["name"] for entry in document["apps"]] == ["catalog", "shop", "faults"]
    default = picked(load_selection())
    assert picked(resolve_meta(document)) == default

    project.write_meta(out)
    assert picked(load_selection()) == default


def test_generatemetayaml_file_is_relative_to_cwd(project, tmp_path_factory, monkeypatch):
    cwd = tmp_path_factory.mktemp("cwd")
    monkeypatch.chdir(cwd)

    out, _ = project.call("generatemetayaml", "--file", "conf/meta.yaml")

    written = cwd / "conf" / "meta.yaml"
    assert written.is_file()
    assert not (project.base / "conf" / "meta.yaml").exists()
    assert "conf/meta.yaml" in out
    assert picked(load_selection(written)) == picked(load_selection())


def test_generatemetayaml_hint_points_at_the_written_file(project, monkeypatch):
    monkeypatch.chdir(project.base)

    out, _ = project.call("generatemetayaml", "--file", "conf/meta.yaml")

    hint = next(line for line in out.splitlines() if "SERVICE_META" in line)
    assert "conf" in hint


def test_generatemetayaml_refuses_to_overwrite_without_force(project, monkeypatch):
    monkeypatch.chdir(project.base)
    existing = project.base / "service_meta.yaml"
    existing.write_text("# mine\n")

    with pytest.raises(CommandError, match="already exists"):
        project.call("generatemetayaml", "--file", "service_meta.yaml")
    assert existing.read_text() == "# mine\n"

    project.call("generatemetayaml", "--file", "service_meta.yaml", "--force")
    assert existing.read_text() != "# mine\n"
    assert picked(load_selection(existing)) == picked(load_selection())


def test_generatemetayaml_comma_separated_apps(project):
    out, _ = project.call("generatemetayaml", "shop, catalog")

    document = yaml.safe_load(out)
    assert [entry["name"] for entry in document["apps"]] == ["shop", "catalog"]
    assert {s.app_label for s in resolve_meta(document)} == {"catalog", "shop"}


def test_generatemetayaml_single_app(project):
    out, _ = project.call("generatemetayaml", "shop")

    document = yaml.safe_load(out)
    assert document == {
        "apps": [{"name": "shop", "models": [{"name": "Book"}, {"name": "Customer"}]}]
    }
    assert list(picked(resolve_meta(document))) == ["shop.Book", "shop.Customer"]


def test_generatemetayaml_unknown_app(project):
    with pytest.raises(CommandError) as excinfo:
        project.call("generatemetayaml", "catalog,nope")

    message = str(excinfo.value)
    assert "'nope'" in message
    assert "catalog, faults, shop" in message


def test_generatemetayaml_output_loads_with_a_model_less_project_app(project):
    installed = [
        "django.contrib.contenttypes",
        "django.contrib.auth",
        "rest_framework",
        "django_grpc_bus",
        "catalog",
        "shop",
        "testproject",
    ]
    with override_settings(INSTALLED_APPS=installed):
        out, _ = project.call("generatemetayaml")
        project.write_meta(out)
        assert {s.app_label for s in load_selection()} == {"catalog", "shop"}
