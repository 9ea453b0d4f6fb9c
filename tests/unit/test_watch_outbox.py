"""Watch, producer side, without a server: service_meta.yaml's `watch`, the generated messages,
the cursor, WATCH_RETENTION's check, and the outbox the ORM's signals write (SPEC §11)."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
from pathlib import Path

import pytest
from catalog.models import Author, Book, Tag
from django.db import connection, transaction
from django.test import override_settings
from django.utils import timezone
from support import requires_postgres

from django_grpc_bus.checks import check_settings
from django_grpc_bus.meta import ModelSelection, ServiceMetaError, load_selection, selectable_fields
from django_grpc_bus.models import WatchEvent, WatchPruned
from django_grpc_bus.protogen.schema import build_file
from django_grpc_bus.watch import prune_events, record_changes
from django_grpc_bus.watch.cursor import BadCursor, Position, decode
from django_grpc_bus.watch.reading import current_position, pruned_after, read_after
from django_grpc_bus.watch.recording import outermost_pairs

# -- service_meta.yaml ----------------------------------------------------------------------------


def test_watch_per_model_and_at_the_top_level(project):
    project.write_meta(
        {"apps": [{"name": "catalog", "models": ["Author", {"name": "Book", "watch": True}]}]}
    )
    assert {s.name: s.watch for s in load_selection()} == {"Author": False, "Book": True}
    project.write_meta(
        {"watch": True, "apps": [{"name": "catalog", "models": [{"name": "Tag", "watch": False}]}]}
    )
    assert {s.name: s.watch for s in load_selection()} == {"Tag": False}
    project.write_meta({"watch": True, "apps": ["shop"]})
    assert all(s.watch for s in load_selection()) and len(load_selection()) == 2


@pytest.mark.parametrize(
    ("document", "where"),
    [
        ({"watch": "yes", "apps": ["shop"]}, "top level.watch"),
        ({"apps": [{"name": "shop", "models": [{"name": "Book", "watch": 1}]}]}, "(Book).watch"),
    ],
)
def test_watch_must_be_a_boolean(project, document, where):
    project.write_meta(document)
    with pytest.raises(ServiceMetaError, match="expected true or false") as excinfo:
        load_selection()
    assert where in str(excinfo.value)


# -- the generated messages ---------------------------------------------------------------------


def _watched_book(watch: bool = True) -> ModelSelection:
    return ModelSelection(Book, tuple(selectable_fields(Book)), watch)


def test_watch_rpc_and_messages_have_the_contracts_numbers():
    proto = build_file(_watched_book(), query=None)
    by_name = {m.name: m for m in proto.messages}
    assert [(f.name, f.number) for f in by_name["BookWatchRequest"].fields] == [
        ("since", 2),
        ("snapshot", 3),
    ]
    assert [(f.name, f.number) for f in by_name["BookEvent"].fields] == [
        ("type", 1),
        ("data", 2),
        ("changed", 3),
        ("cursor", 4),
        ("time", 5),
        ("id", 6),
    ]
    assert "CREATED = 1;" in " ".join(by_name["BookEvent"].enum_lines)
    watch = [r for r in proto.rpcs if r.name == "Watch"]
    assert watch and watch[0].server_streaming and watch[0].response == "BookEvent"
    assert "google/protobuf/timestamp.proto" in proto.imports


def test_no_watch_without_the_flag():
    proto = build_file(_watched_book(watch=False))
    assert "Watch" not in {r.name for r in proto.rpcs}
    assert "BookEvent" not in {m.name for m in proto.messages}


# -- the cursor ---------------------------------------------------------------------------------


def test_cursor_round_trip_and_covers():
    position = Position(10, 12, 7, 1_700_000_000_000)
    assert decode(position.encode()) == position
    assert position.covers(9, 999) and position.covers(11, 7) and not position.covers(11, 8)
    assert not position.covers(12, 1)


@pytest.mark.parametrize("text", ["", "x", "0", "dzEuMS4y", Position(5, 1, 0, 0).encode()])
def test_malformed_cursors_are_refused(text):
    with pytest.raises(BadCursor):
        decode(text)


# -- WATCH_RETENTION ----------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, -5, dt.timedelta(0), "7 days", True, None])
def test_watch_retention_check(value):
    with override_settings(MESSAGE_BUS={"WATCH_RETENTION": value}):
        errors = [e for e in check_settings() if "WATCH_RETENTION" in e.msg]
    assert len(errors) == 1 and errors[0].id in ("django_grpc_bus.E003", "django_grpc_bus.E030")


@pytest.mark.parametrize("value", [60, 0.5, dt.timedelta(hours=1)])
def test_watch_retention_accepts_durations(value):
    with override_settings(MESSAGE_BUS={"WATCH_RETENTION": value}):
        assert [e for e in check_settings() if "WATCH_RETENTION" in e.msg] == []


# -- recording ----------------------------------------------------------------------------------


def events() -> list[tuple[str, int, str, list[str] | None]]:
    return [(e.model, e.kind, e.object_pk, e.changed) for e in WatchEvent.objects.order_by("id")]


@pytest.fixture
def author(db):
    return Author.objects.create(name="Herbert")


def test_create_update_delete_are_recorded(author):
    book = Book.objects.create(title="Dune", author=author, isbn="1")
    book.title = "Dune II"
    book.save()
    book.save()  # nothing differs from the loaded values: recorded, `changed` unknown
    Book.objects.get(pk=book.pk).save(update_fields=["isbn"])
    pk = str(book.pk)
    book.delete()
    assert events() == [
        ("catalog.book", WatchEvent.CREATED, pk, None),
        ("catalog.book", WatchEvent.UPDATED, pk, ["title"]),
        ("catalog.book", WatchEvent.UPDATED, pk, None),
        ("catalog.book", WatchEvent.UPDATED, pk, ["isbn"]),
        ("catalog.book", WatchEvent.DELETED, pk, None),
    ]
    last = WatchEvent.objects.order_by("id").last()
    assert last.data == {
        "id": book.id or int(pk),
        "title": "Dune II",
        "author_id": author.pk,
        "isbn": "1",
    }


def test_unwatched_models_record_nothing(author):
    Tag.objects.create(name="x")
    assert events() == []  # Author (the fixture) and Tag are not watched


@pytest.mark.django_db(transaction=True)
def test_a_rolled_back_change_records_nothing():
    author = Author.objects.create(name="A")
    with pytest.raises(RuntimeError), transaction.atomic():
        Book.objects.create(title="Gone", author=author, isbn="g")
        raise RuntimeError
    Book.objects.create(title="Kept", author=author, isbn="k")
    assert [e[1] for e in events()] == [WatchEvent.CREATED]
    assert WatchEvent.objects.get().data["title"] == "Kept"


@pytest.mark.django_db(transaction=True)
def test_a_bare_save_in_autocommit_is_one_transaction_with_its_event(monkeypatch):
    """Django sends post_save after the row's statement; in autocommit that statement would
    commit alone. A watched model's save runs in a transaction that includes its event, so an
    event that cannot be written takes the row with it (nothing committed without its event)."""
    from django_grpc_bus.watch import recording

    author = Author.objects.create(name="A")
    assert connection.get_autocommit()

    def fail(*args, **kwargs):
        raise RuntimeError("the outbox is unwritable")

    monkeypatch.setattr(recording, "write_events", fail)
    with pytest.raises(RuntimeError, match="unwritable"):
        Book.objects.create(title="Orphan", author=author, isbn="o")
    book = Book(title="Edited", author=author, isbn="e")
    monkeypatch.undo()
    book.save()
    monkeypatch.setattr(recording, "write_events", fail)
    book.title = "Edited twice"
    with pytest.raises(RuntimeError, match="unwritable"):
        book.save()
    monkeypatch.undo()
    assert not Book.objects.filter(title="Orphan").exists()
    assert Book.objects.get(pk=book.pk).title == "Edited"
    assert [e[1] for e in events()] == [WatchEvent.CREATED]
    # Unwatched models keep Django's own save.
    assert "save_base" not in Author.__dict__


def test_record_changes_for_bulk_paths(author):
    made = Book.objects.bulk_create([Book(title=t, author=author, isbn=t) for t in "ab"])
    assert events() == []  # bulk_create sends no signals
    assert record_changes(made, "created") == 2
    pks = [b.pk for b in made]
    Book.objects.filter(pk__in=pks).update(title="same")
    assert record_changes(Book.objects.filter(pk__in=pks), "updated", changed=["title"]) == 2
    assert record_changes([author], "updated") == 0  # not watched
    assert [(e[1], e[3]) for e in events()] == [
        (1, None),
        (1, None),
        (2, ["title"]),
        (2, ["title"]),
    ]
    with pytest.raises(ValueError, match="kind must be one of"):
        record_changes(made, "changed")


def test_prune_events_deletes_only_older_than_retention(author):
    for isbn in "xyz":
        Book.objects.create(title="t", author=author, isbn=isbn)
    WatchEvent.objects.order_by("id").filter(
        id__in=WatchEvent.objects.order_by("id").values("id")[:2]
    ).update(time=timezone.now() - dt.timedelta(days=8))
    assert prune_events(batch=1) == 2
    assert WatchEvent.objects.count() == 1


def test_prune_events_records_the_outermost_of_what_it_removed(author):
    for isbn in "xyz":
        Book.objects.create(title="t", author=author, isbn=isbn)
    removed = list(WatchEvent.objects.order_by("id").values_list("txid", "id")[:2])
    WatchEvent.objects.filter(id__in=[id_ for _, id_ in removed]).update(
        time=timezone.now() - dt.timedelta(days=8)
    )
    assert prune_events(batch=1) == 2
    assert list(WatchPruned.objects.values_list("txid", "event_id")) == outermost_pairs(removed)
    assert prune_events() == 0 and WatchPruned.objects.count() == 1


def test_outermost_pairs_are_those_no_other_pair_is_at_or_past_in_both():
    pairs = [(1, 5), (2, 3), (1, 2), (2, 1), (0, 9), (2, 3), (0, 4)]
    assert outermost_pairs(pairs) == [(2, 3), (1, 5), (0, 9)]
    assert outermost_pairs([]) == []


@pytest.mark.django_db
def test_pruned_after_is_exact_for_every_position():
    """Whatever was pruned, a position is told "pruned after it" exactly when one of the removed
    events is not covered by it (checked on a grid of positions and removed sets)."""
    grid = [(t, i) for t in range(4) for i in range(4)]
    positions = [
        Position(lo, hi, last, 0)
        for lo, hi in [(0, 0), (1, 2), (2, 2), (0, 3)]
        for last in range(4)
    ]
    for removed in ([(1, 1)], [(0, 3), (2, 0)], [(3, 0), (1, 2), (0, 3)], grid):
        WatchPruned.objects.all().delete()
        WatchPruned.objects.bulk_create(
            WatchPruned(txid=t, event_id=i) for t, i in outermost_pairs(removed)
        )
        for position in positions:
            expected = any(not position.covers(t, i) for t, i in removed)
            assert pruned_after("default", position) == expected, (removed, position)


@pytest.mark.django_db(transaction=True)  # PostgreSQL: our own open transaction holds reads
def test_a_cursor_between_two_events_is_out_of_range_only_once_the_later_one_is_pruned():
    author = Author.objects.create(name="A")
    start = current_position("default")
    Book.objects.create(title="a", author=author, isbn="a")
    Book.objects.create(title="b", author=author, isbn="b")
    (a,) = read_after("default", "catalog.book", start, limit=1).rows  # a full batch: mid-way
    aged = timezone.now() - dt.timedelta(days=8)
    WatchEvent.objects.filter(id=a.id).update(time=aged)
    assert prune_events() == 1
    assert not pruned_after("default", a.cursor)
    WatchEvent.objects.update(time=aged)
    assert prune_events() == 1
    assert pruned_after("default", a.cursor)


@pytest.mark.django_db(transaction=True)  # PostgreSQL: our own open transaction holds reads
def test_read_positions():
    author = Author.objects.create(name="A")
    start = current_position("default")
    Book.objects.create(title="a", author=author, isbn="a")
    Book.objects.create(title="b", author=author, isbn="b")
    read = read_after("default", "catalog.book", start)
    assert [r.data["title"] for r in read.rows] == ["a", "b"]
    again = read_after("default", "catalog.book", read.rows[0].cursor)
    assert [r.data["title"] for r in again.rows] == ["b"]
    assert read_after("default", "catalog.book", read.position).rows == ()


@requires_postgres
@pytest.mark.django_db(transaction=True)
def test_a_late_commit_is_never_skipped():
    """Transaction A writes its event first (lower id) and commits after B: a reader must not
    move past A's event while A runs, though B's (higher id) is visible."""
    from support import pg_connect

    author = Author.objects.create(name="A")
    start = current_position("default")
    db = connection.settings_dict
    url = f"postgres://{db['USER']}@{db['HOST']}:{db['PORT'] or 5432}/{db['NAME']}"
    with pg_connect(url) as other:
        other.autocommit = False
        with other.cursor() as cursor:
            cursor.execute(
                "INSERT INTO django_grpc_bus_watchevent "
                "(uid, model, kind, object_pk, data, time, txid) VALUES (gen_random_uuid(), "
                "'catalog.book', 1, '999', '{\"title\": \"late\"}', now(), "
                "pg_current_xact_id()::text::bigint)"
            )
        Book.objects.create(title="early", author=author, isbn="e")  # commits now
        held = read_after("default", "catalog.book", start)
        assert held.rows == () and held.held_back
        other.commit()
    read = read_after("default", "catalog.book", held.position)
    assert [r.data["title"] for r in read.rows] == ["late", "early"]  # both, in id order


def test_watch_protos_pass_buf_lint_basic_and_generateproto_check(project):
    project.write_meta({"watch": True, "apps": ["catalog"]})
    project.call("generategrpc")
    assert "rpc Watch(BookWatchRequest)" in (project.root / "catalog/Book.proto").read_text()
    project.call("generateproto", "--check")  # up to date: exits 0
    local = Path(__file__).resolve().parents[2] / ".tools/node_modules/.bin/buf"
    buf = str(local) if local.exists() else shutil.which("buf")
    if buf is None:
        pytest.skip("buf is not installed (make tools installs it with npm)")
    (project.root / "buf.yaml").write_text("version: v2\nlint:\n  use:\n    - BASIC\n")
    result = subprocess.run(
        [buf, "lint"], cwd=project.root, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_generateproto_check_sees_watch_turned_on(project):
    project.write_meta({"apps": ["catalog"]})
    project.call("generateproto")
    project.write_meta({"watch": True, "apps": ["catalog"]})
    with pytest.raises(SystemExit) as exited:
        project.call("generateproto", "--check")
    assert exited.value.code == 1


def test_only_watched_models_keep_their_loaded_values():
    from django.db.models.signals import post_init

    from django_grpc_bus.watch.recording import LOADED

    assert LOADED in Book(title="x", isbn="1", author_id=1).__dict__
    assert LOADED not in Author(name="x").__dict__
    assert not any(post_init._live_receivers(Author))  # unwatched models pay nothing


def test_deferred_fields_are_never_loaded_by_recording(author):
    """post_init reads only what was loaded: only()/defer()/refresh_from_db(fields=...) used to
    recurse (reading a deferred field loads another instance, whose post_init reads...)."""
    book = Book.objects.create(title="Dune", author=author, isbn="1")
    only = Book.objects.only("title").get(pk=book.pk)
    assert only.get_deferred_fields() == {"author_id", "isbn"}
    Book.objects.defer("title").get(pk=book.pk).refresh_from_db(fields=["title"])
    only.title = "Dune II"
    only.save()  # Django saves the loaded fields only (update_fields)
    other = Book.objects.defer("isbn").get(pk=book.pk)
    other.isbn = "2"  # set without being loaded: what it was is unknown
    other.save()  # every field (none deferred any more): `changed` unknown
    assert [(e[1], e[3]) for e in events()] == [
        (WatchEvent.CREATED, None),
        (WatchEvent.UPDATED, ["title"]),
        (WatchEvent.UPDATED, None),
    ]
    assert Book.objects.get(pk=book.pk).isbn == "2"


def test_a_save_is_recorded_even_when_its_instance_saw_nothing_change(author):
    """The diff is against the values as loaded, not the database: a stale instance saved
    after another writer's update changes the row though it sees no difference."""
    book = Book.objects.create(title="Dune", author=author, isbn="1")
    stale = Book.objects.get(pk=book.pk)
    Book.objects.filter(pk=book.pk).update(title="Changed elsewhere")
    stale.save()  # writes "Dune" back
    assert events()[-1][1:] == (WatchEvent.UPDATED, str(book.pk), None)
    assert WatchEvent.objects.order_by("id").last().data["title"] == "Dune"


def test_refresh_from_db_refreshes_the_loaded_values(author):
    book = Book.objects.create(title="Dune", author=author, isbn="1")
    Book.objects.filter(pk=book.pk).update(title="Elsewhere")
    book.refresh_from_db()
    book.title = "Dune"  # differs from the database's value, not from the first load
    book.save()
    assert events()[-1][3] == ["title"]
    Book.objects.filter(pk=book.pk).update(isbn="9")
    book.refresh_from_db(fields=["isbn"])
    book.isbn = "1"
    book.save()
    assert events()[-1][3] == ["isbn"]


def test_a_mutable_value_changed_in_place_counts_as_changed():
    from django_grpc_bus.watch.recording import LOADED, _changed_fields, _remember

    book = Book(title="x", isbn="1", author_id=1)
    book.title = ["a"]  # stands for a JSONField's list or dict (no watched model has one)
    _remember(book)
    book.title.append("b")
    assert book.__dict__[LOADED]["title"] == ["a"]  # a copy, not the same object
    assert _changed_fields(book, tuple(Book._meta.concrete_fields), None) == ["title"]


# -- proxies, multi-table children, many-to-many ------------------------------------------------


def define_models():
    """A proxy and a multi-table child of Book, and a watched Shelf with an exposed M2M."""
    from django.db import models

    class BookProxy(Book):
        class Meta:
            app_label = "catalog"
            proxy = True

    class SignedBook(Book):
        signature = models.CharField(max_length=20)

        class Meta:
            app_label = "catalog"

    class Shelf(models.Model):
        name = models.CharField(max_length=20)
        tags = models.ManyToManyField(Tag, related_name="shelves")

        class Meta:
            app_label = "catalog"

    return BookProxy, SignedBook, Shelf


@pytest.fixture
def extra_models(transactional_db, tmp_path, settings):
    """The models registered and their tables made, Shelf watched, and all of it undone."""
    from django.apps import apps

    made = define_models()
    _, signed, shelf = made
    with connection.schema_editor() as editor:
        editor.create_model(signed)
        editor.create_model(shelf)
    meta = tmp_path / "service_meta.yaml"
    meta.write_text(
        "apps:\n- name: catalog\n  models:\n  - name: Book\n    watch: true\n"
        "  - name: Shelf\n    watch: true\n  - name: Tag\n"
    )
    try:
        with override_settings(MESSAGE_BUS={**settings.MESSAGE_BUS, "SERVICE_META": str(meta)}):
            yield made
    finally:
        with connection.schema_editor() as editor:
            editor.delete_model(shelf)
            editor.delete_model(signed)
        for model in [*made, shelf.tags.through]:
            del apps.all_models["catalog"][model._meta.model_name]
        apps.clear_cache()


def test_proxies_and_multi_table_children_record_for_the_watched_model(extra_models):
    proxy_model, signed_model, _ = extra_models
    author = Author.objects.create(name="A")
    proxy = proxy_model.objects.create(title="P", author=author, isbn="p")
    proxy.title = "P2"
    proxy.save()
    proxy_model.objects.get(pk=proxy.pk).delete()
    signed = signed_model.objects.create(title="S", author=author, isbn="s", signature="x")
    signed.title = "S2"
    signed.save()
    signed = signed_model.objects.get(pk=signed.pk)
    signed.signature = "y"  # the child's own field: not one of Book's
    signed.save()
    p, s = str(proxy.pk), str(signed.pk)
    signed.delete()  # Django deletes (and signals) the Book row itself: one event
    assert events() == [
        ("catalog.book", WatchEvent.CREATED, p, None),
        ("catalog.book", WatchEvent.UPDATED, p, ["title"]),
        ("catalog.book", WatchEvent.DELETED, p, None),
        ("catalog.book", WatchEvent.CREATED, s, None),
        ("catalog.book", WatchEvent.UPDATED, s, ["title"]),
        ("catalog.book", WatchEvent.UPDATED, s, None),
        ("catalog.book", WatchEvent.DELETED, s, None),
    ]
    created = WatchEvent.objects.order_by("id")[3]
    assert created.data == {"id": int(s), "title": "S", "author_id": author.pk, "isbn": "s"}


def test_many_to_many_changes_of_an_exposed_field_are_updates_naming_it(extra_models):
    _, _, shelf_model = extra_models
    red, blue = Tag.objects.create(name="red"), Tag.objects.create(name="blue")
    shelf = shelf_model.objects.create(name="s")
    other = shelf_model.objects.create(name="o")
    shelf.tags.add(red, blue)
    shelf.tags.add(red)  # already there: nothing added, nothing recorded
    shelf.tags.remove(blue)
    shelf.tags.clear()
    red.shelves.add(shelf, other)  # from the other side
    red.shelves.clear()
    s, o = str(shelf.pk), str(other.pk)
    assert [(e[0], e[1], e[2], e[3]) for e in events()] == [
        ("catalog.shelf", WatchEvent.CREATED, s, None),
        ("catalog.shelf", WatchEvent.CREATED, o, None),
        ("catalog.shelf", WatchEvent.UPDATED, s, ["tags"]),
        ("catalog.shelf", WatchEvent.UPDATED, s, ["tags"]),
        ("catalog.shelf", WatchEvent.UPDATED, s, ["tags"]),
        ("catalog.shelf", WatchEvent.UPDATED, s, ["tags"]),
        ("catalog.shelf", WatchEvent.UPDATED, o, ["tags"]),
        ("catalog.shelf", WatchEvent.UPDATED, s, ["tags"]),
        ("catalog.shelf", WatchEvent.UPDATED, o, ["tags"]),
    ]


def test_a_many_to_many_field_not_exposed_records_nothing(extra_models, tmp_path, settings):
    _, _, shelf_model = extra_models
    meta = tmp_path / "without_tags.yaml"
    meta.write_text(
        "apps:\n- name: catalog\n  models:\n  - name: Shelf\n    watch: true\n"
        "    exclude: [tags]\n  - name: Tag\n"
    )
    with override_settings(MESSAGE_BUS={**settings.MESSAGE_BUS, "SERVICE_META": str(meta)}):
        shelf = shelf_model.objects.create(name="s")
        shelf.tags.add(Tag.objects.create(name="red"))
        shelf.tags.clear()
    assert [e[1] for e in events()] == [WatchEvent.CREATED]


@pytest.mark.parametrize("meta", ["unset", "absent"])
def test_no_service_meta_watches_nothing_and_says_nothing(tmp_path, caplog, meta):
    """A consumer project, or a producer before generatemetayaml: no `watch: true` can exist,
    so no error is logged on every command (a new user saw one on makemigrations and check)."""
    from django_grpc_bus.watch.recording import watched_models

    bus = {} if meta == "unset" else {"SERVICE_META": tmp_path / "absent.yaml"}
    with override_settings(MESSAGE_BUS=bus), caplog.at_level("DEBUG", "django_grpc_bus.watch"):
        assert watched_models() == {}
    assert [r for r in caplog.records if r.levelname == "ERROR"] == []
