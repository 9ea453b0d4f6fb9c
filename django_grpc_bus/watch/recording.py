"""Record each committed change of a watched model's rows, in the transaction that makes it.

Receivers of ``post_save``, ``post_delete`` and ``m2m_changed`` (connected for every model
when the app is ready) write one :class:`~django_grpc_bus.models.WatchEvent` per change of a
model that ``service_meta.yaml`` marks ``watch: true``: on the change's own database connection,
so inside its transaction. A rolled-back change rolls its event back with it. A proxy model's
changes are its concrete model's; a save of a multi-table child also records an event for each
watched parent (the parent's row is written too; Django sends the parent's own ``post_delete``).

Django sends no model signals for ``QuerySet.update()``, ``bulk_create()``, ``bulk_update()``
or raw SQL: call :func:`record_changes` in the same transaction for those.
"""

from __future__ import annotations

import copy
import datetime as dt
import decimal
import json
import logging
import threading
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from django.apps import apps
from django.core.serializers.json import DjangoJSONEncoder
from django.core.signals import setting_changed
from django.db import connections, models, router, transaction
from django.db.models.fields.files import FieldFile
from django.db.models.signals import m2m_changed, post_delete, post_init, post_save
from django.utils import timezone

from django_grpc_bus.models import WatchEvent, WatchPruned

logger = logging.getLogger("django_grpc_bus.watch")

# PostgreSQL NOTIFY channel: the payload is the model's lower-case label.
CHANNEL = "django_grpc_bus_watch"
# Where a loaded instance keeps its values as loaded, to tell which fields an update changed.
LOADED = "_grpc_bus_watch_loaded"
# Where a reverse many-to-many clear keeps the watched rows it is about to unlink.
CLEARING = "_grpc_bus_watch_clearing"
KINDS = {
    "created": WatchEvent.CREATED,
    "updated": WatchEvent.UPDATED,
    "deleted": WatchEvent.DELETED,
}
PG_ROW = "(%s::uuid, %s, %s, %s, %s::jsonb, %s::jsonb, %s, pg_current_xact_id()::text::bigint)"

_watched: dict[type[models.Model], tuple[models.Field, ...]] | None = None
_watched_lock = threading.Lock()
# Through model -> the (watched model, exposed many-to-many field) pairs it stores.
_m2m: dict[type[models.Model], list[tuple[type[models.Model], models.ManyToManyField]]] = {}
# Model -> the watched models its saves change (its concrete model, its multi-table parents).
_targets: dict[type[models.Model], tuple[type[models.Model], ...]] = {}
# Model -> the fields whose loaded values its instances keep (those of all its targets).
_kept: dict[type[models.Model], list[models.Field]] = {}
# The models whose instances keep their loaded values (post_init connected).
_initialised: list[type[models.Model]] = []


def watched_models() -> dict[type[models.Model], tuple[models.Field, ...]]:
    """The models marked ``watch: true``, each with the fields (columns) its events carry."""
    global _watched
    if _watched is None:
        from django_grpc_bus.conf import bus_settings
        from django_grpc_bus.meta import ServiceMetaError, load_selection

        with _watched_lock:
            path = bus_settings.SERVICE_META
            try:
                # Only a service_meta.yaml can say `watch: true`: without one (a consumer, a
                # project before generatemetayaml) nothing is watched, and nothing is said.
                selection = load_selection() if path is not None and Path(path).exists() else None
            except ServiceMetaError as exc:
                # The system checks report the file's error (E009); until it is fixed no
                # model is watched.
                logger.error("No model is watched: %s", exc)
                selection = None
            found = {}
            _m2m.clear()
            _targets.clear()
            _kept.clear()
            for selected in selection or ():
                if selected.watch:
                    fields = tuple(f for f in selected.fields if f.concrete and f.column)
                    found[selected.model] = fields
                    for field in selected.fields:
                        through = getattr(field.remote_field, "through", None)
                        if isinstance(field, models.ManyToManyField) and through is not None:
                            _m2m.setdefault(through, []).append((selected.model, field))
            _watched = found
            # From now on only the instances of watched models, their proxies and their
            # multi-table children keep their loaded values.
            post_init.disconnect(dispatch_uid=FIRST_INIT)
            for model in apps.get_models():
                if _targets_of(model, found):
                    post_init.connect(_on_init, sender=model, dispatch_uid=_init_uid(model))
                    _initialised.append(model)
            for model in found:
                _make_save_atomic(model)
                _track_refresh(model)
    return _watched


def _targets_of(
    model: type[models.Model], watched: dict[type[models.Model], tuple[models.Field, ...]]
) -> tuple[type[models.Model], ...]:
    """The watched models whose rows a save of `model` writes."""
    targets = _targets.get(model)
    if targets is None:
        concrete = model._meta.concrete_model or model
        candidates = [concrete, *concrete._meta.get_parent_list()]
        targets = _targets[model] = tuple(m for m in candidates if m in watched)
    return targets


def recorded_as(model: type[models.Model]) -> tuple[type[models.Model], ...]:
    """The watched models a save of `model`'s instance records events for (maybe none)."""
    return _targets_of(model, watched_models())


def _kept_fields(model: type[models.Model]) -> list[models.Field]:
    """The fields whose loaded values an instance of `model` keeps (of all its targets)."""
    kept = _kept.get(model)
    if kept is None:
        watched = watched_models()
        seen: dict[str, models.Field] = {}
        for target in recorded_as(model):
            for field in watched[target]:
                seen.setdefault(field.attname, field)
        kept = _kept[model] = list(seen.values())
    return kept


def forget_watched_models(*, setting: str, **kwargs: Any) -> None:
    global _watched
    if setting in ("MESSAGE_BUS", "BASE_DIR"):
        with _watched_lock:
            for model in _initialised:
                post_init.disconnect(sender=model, dispatch_uid=_init_uid(model))
            _initialised.clear()
            for model in _watched or ():
                _restore(model, "save_base")
                _restore(model, "refresh_from_db")
            _watched = None
            _m2m.clear()
            _targets.clear()
            _kept.clear()
            post_init.connect(_first_init, dispatch_uid=FIRST_INIT)


FIRST_INIT = "django_grpc_bus.watch.first_init"


def _make_save_atomic(model: type[models.Model]) -> None:
    """Run a watched model's ``save_base`` in a transaction, ``post_save`` included.

    Django sends ``post_save`` after the row's own statement, outside any transaction of its
    own: a bare ``save()`` in autocommit would commit the row before its event is written, and
    a process dying between the two would lose the event. Inside the caller's
    ``transaction.atomic()`` this adds nothing (``savepoint=False``).
    """
    if _installed(model, "save_base"):
        return
    original = model.save_base

    def save_base(
        self: models.Model,
        raw: bool = False,
        force_insert: Any = False,
        force_update: bool = False,
        using: str | None = None,
        update_fields: Any = None,
    ) -> Any:
        alias = using or router.db_for_write(type(self), instance=self)
        with transaction.atomic(using=alias, savepoint=False):
            return original(
                self,
                raw=raw,
                force_insert=force_insert,
                force_update=force_update,
                using=using,
                update_fields=update_fields,
            )

    _install(model, "save_base", save_base)


# A method of a watched model replaced by ours keeps what the class itself had defined (None:
# inherited), so that it can be put back when the watched models change (settings in tests).
ORIGINAL = "_grpc_bus_original"


def _installed(model: type[models.Model], name: str) -> bool:
    return hasattr(model.__dict__.get(name), ORIGINAL)


def _install(model: type[models.Model], name: str, method: Any) -> None:
    setattr(method, ORIGINAL, model.__dict__.get(name))
    setattr(model, name, method)


def _restore(model: type[models.Model], name: str) -> None:
    ours = model.__dict__.get(name)
    if not hasattr(ours, ORIGINAL):
        return
    original = getattr(ours, ORIGINAL)
    if original is None:
        delattr(model, name)
    else:
        setattr(model, name, original)


def _track_refresh(model: type[models.Model]) -> None:
    """After ``refresh_from_db()`` the refreshed fields' loaded values are the database's."""
    if _installed(model, "refresh_from_db"):
        return
    original = model.refresh_from_db

    def refresh_from_db(
        self: models.Model, using: str | None = None, fields: Any = None, *args: Any, **kwargs: Any
    ) -> Any:
        result = original(self, using, fields, *args, **kwargs)
        _remember(self, None if fields is None else set(fields))
        return result

    _install(model, "refresh_from_db", refresh_from_db)


def _init_uid(model: type[models.Model]) -> str:
    return f"django_grpc_bus.watch.init.{model._meta.label_lower}"


def _first_init(sender: type[models.Model], instance: models.Model, **kwargs: Any) -> None:
    """The first instance made: find the watched models (which replaces this receiver)."""
    watched_models()
    _on_init(sender, instance)


def label_of(model: type[models.Model]) -> str:
    return model._meta.label_lower


def row_data(instance: models.Model, fields: Iterable[models.Field]) -> dict[str, Any]:
    """The values of `fields` by attname, as JSON (what Django's serializers write)."""
    data: dict[str, Any] = {}
    for field in fields:
        value = field.value_from_object(instance)
        if value is None or isinstance(value, (bool, int, float, str)):
            data[field.attname] = value
        else:
            data[field.attname] = field.value_to_string(instance)
    return json.loads(json.dumps(data, cls=DjangoJSONEncoder))


class _Uncopyable:
    """A loaded value that could not be copied: never equal, so its field counts as changed."""

    def __eq__(self, other: object) -> bool:
        return False

    __hash__ = None  # type: ignore[assignment]


_IMMUTABLE = (
    str,
    int,
    float,
    decimal.Decimal,
    bytes,
    dt.date,
    dt.time,
    dt.timedelta,
    uuid.UUID,
    type(None),
)


def _comparable(value: Any) -> Any:
    if isinstance(value, FieldFile):
        return value.name
    if isinstance(value, memoryview):  # BinaryField on PostgreSQL
        return bytes(value)
    return value


def _copied(value: Any) -> Any:
    """`value` as kept: a deep copy of a mutable one (a JSONField's dict changed in place)."""
    value = _comparable(value)
    if isinstance(value, _IMMUTABLE):
        return value
    try:
        return copy.deepcopy(value)
    except Exception:
        return _Uncopyable()


def _remember(instance: models.Model, names: set[str] | None = None) -> None:
    """Keep the current values of `names` (all: None) as the loaded ones.

    Reads the instance's ``__dict__`` only: a deferred field (``only()``, ``defer()``) is not
    loaded (reading it would query the database, and build another instance) and stays unknown.
    """
    fields = _kept_fields(type(instance))
    if not fields:
        return
    values = instance.__dict__
    loaded = values.setdefault(LOADED, {})
    for field in fields:
        if names is not None and field.name not in names and field.attname not in names:
            continue
        if field.attname in values:
            loaded[field.attname] = _copied(values[field.attname])
        else:
            loaded.pop(field.attname, None)


def _changed_fields(
    instance: models.Model, fields: tuple[models.Field, ...], update_fields: Any
) -> list[str] | None:
    """What an update changed: the exposed fields `update_fields` names, or else the fields
    whose values differ from the loaded ones; None (unknown) when none differ or a field was
    not loaded. An empty list only for `update_fields` naming no exposed field."""
    if update_fields:
        names = set(update_fields)
        return [f.name for f in fields if f.name in names or f.attname in names]
    loaded = instance.__dict__.get(LOADED)
    if loaded is None:
        return None
    now = instance.__dict__
    changed = []
    for field in fields:
        if field.attname not in loaded or field.attname not in now:
            return None
        if loaded[field.attname] != _comparable(now[field.attname]):
            changed.append(field.name)
    # None differ: the row may still differ from the database (another writer's change since
    # this instance was loaded), so the save is recorded with `changed` unknown.
    return changed or None


def _on_init(sender: type[models.Model], instance: models.Model, **kwargs: Any) -> None:
    if recorded_as(sender):
        instance.__dict__[LOADED] = {}
        _remember(instance)


def _on_save(
    sender: type[models.Model],
    instance: models.Model,
    created: bool,
    raw: bool = False,
    using: str | None = None,
    update_fields: Any = None,
    **kwargs: Any,
) -> None:
    targets = recorded_as(sender)
    if not targets:
        return
    watched = watched_models()
    kind = WatchEvent.CREATED if created else WatchEvent.UPDATED
    for model in targets:
        fields = watched[model]
        changed = None if created else _changed_fields(instance, fields, update_fields)
        if changed == []:
            continue  # update_fields wrote none of the fields watchers see
        write_events(model, [(kind, instance, changed)], fields, using)
    _remember(instance, set(update_fields) if update_fields else None)


def _on_delete(
    sender: type[models.Model], instance: models.Model, using: str | None = None, **kwargs: Any
) -> None:
    # The concrete model only: deleting a multi-table child deletes its parents' rows, and
    # Django sends their own post_delete.
    model = sender._meta.concrete_model or sender
    fields = watched_models().get(model)
    if fields is not None:
        write_events(model, [(WatchEvent.DELETED, instance, None)], fields, using)


def _on_m2m(
    sender: type[models.Model],
    instance: models.Model,
    action: str,
    reverse: bool,
    pk_set: set[Any] | None,
    using: str | None = None,
    **kwargs: Any,
) -> None:
    """A many-to-many field that a watched model exposes changed: UPDATED naming it."""
    if action not in ("post_add", "post_remove", "post_clear", "pre_clear"):
        return
    watched_models()
    for model, field in _m2m.get(sender, ()):
        if not reverse:  # instance is the watched row
            if action == "pre_clear" or (action != "post_clear" and not pk_set):
                continue
            rows = [instance]
        else:  # instance is the other side; the watched rows are pk_set (or the cleared ones)
            key = f"{CLEARING}.{field.name}"
            if action == "pre_clear":
                # The through model's two foreign keys (a ForeignKey's attname is "<name>_id").
                own = f"{field.m2m_field_name()}_id"
                other = f"{field.m2m_reverse_field_name()}_id"
                instance.__dict__[key] = list(
                    sender._base_manager.using(using)
                    .filter(**{other: instance.pk})
                    .values_list(own, flat=True)
                )
                continue
            pks = instance.__dict__.pop(key, []) if action == "post_clear" else pk_set
            if not pks:
                continue
            rows = list(model._base_manager.using(using).filter(pk__in=pks).order_by("pk"))
        changes: list[tuple[int, models.Model, list[str] | None]] = [
            (WatchEvent.UPDATED, row, [field.name]) for row in rows
        ]
        write_events(model, changes, watched_models()[model], using)


def connect_receivers() -> None:
    """Connect the recording receivers (``post_init`` only for watched models, once known)."""
    post_init.connect(_first_init, dispatch_uid=FIRST_INIT)
    post_save.connect(_on_save, dispatch_uid="django_grpc_bus.watch.save")
    post_delete.connect(_on_delete, dispatch_uid="django_grpc_bus.watch.delete")
    m2m_changed.connect(_on_m2m, dispatch_uid="django_grpc_bus.watch.m2m")
    setting_changed.connect(forget_watched_models, dispatch_uid="django_grpc_bus.watch.settings")


def write_events(
    model: type[models.Model],
    changes: list[tuple[int, models.Model, list[str] | None]],
    fields: tuple[models.Field, ...],
    using: str | None = None,
) -> None:
    """Insert one outbox row per change, on `using`'s connection (so in its transaction)."""
    if not changes:
        return
    alias = using or router.db_for_write(model)
    connection = connections[alias]
    label = label_of(model)
    now = timezone.now()
    rows = [
        (
            str(uuid.uuid4()),
            label,
            kind,
            str(instance.pk),
            json.dumps(row_data(instance, fields)),
            None if changed is None else json.dumps(changed),
            now,
        )
        for kind, instance, changed in changes
    ]
    table = connection.ops.quote_name(WatchEvent._meta.db_table)
    columns = "uid, model, kind, object_pk, data, changed, time, txid"
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            values = ", ".join([PG_ROW] * len(rows))
            cursor.execute(
                f"WITH added AS (INSERT INTO {table} ({columns}) VALUES {values} RETURNING id) "
                "SELECT pg_notify(%s, %s)",
                [value for row in rows for value in row] + [CHANNEL, label],
            )
        else:
            for row in rows:
                WatchEvent.objects.using(alias).create(
                    uid=row[0],
                    model=label,
                    kind=row[2],
                    object_pk=row[3],
                    data=json.loads(row[4]),
                    changed=None if row[5] is None else json.loads(row[5]),
                    time=now,
                )
    # This process's own watchers need not wait for the next poll.
    transaction.on_commit(lambda: _wake_local(label), using=alias)


def _wake_local(label: str) -> None:
    from django_grpc_bus.watch.notifier import notifier

    notifier.wake(label)


def record_changes(
    instances: Iterable[models.Model],
    kind: str,
    changed: Iterable[str] | None = None,
    using: str | None = None,
) -> int:
    """Record changes Django sends no signal for; call it in the transaction that makes them.

    `kind` is ``"created"``, ``"updated"`` or ``"deleted"``; `changed`, for updates, the names of
    the fields changed (None: unknown). For ``QuerySet.update()``, pass the rows as they are
    after the update (``Book.objects.filter(pk__in=pks)``); for ``bulk_create()``, the objects it
    returned; for a delete, the instances as they were. Returns how many events it recorded
    (none for a model that is not watched).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    names = None if changed is None else list(changed)
    by_model: dict[type[models.Model], list[models.Model]] = {}
    for instance in instances:
        for model in recorded_as(type(instance)):
            by_model.setdefault(model, []).append(instance)
    count = 0
    for model, group in by_model.items():
        fields = watched_models()[model]
        write_events(model, [(KINDS[kind], instance, names) for instance in group], fields, using)
        count += len(group)
    return count


def prune_events(
    retention: dt.timedelta | None = None, using: str | None = None, batch: int = 1000
) -> int:
    """Delete the events older than `retention` (default ``WATCH_RETENTION``); how many.

    In batches of `batch` rows, each its own short transaction, so writers never wait long.
    Each batch's transaction also records what it removed (:class:`WatchPruned`), which tells
    whether a resumed cursor missed removed events.
    """
    from django_grpc_bus.watch.settings import retention as configured

    cutoff = timezone.now() - (retention if retention is not None else configured())
    alias = using or router.db_for_write(WatchEvent)
    connection = connections[alias]
    table = connection.ops.quote_name(WatchEvent._meta.db_table)
    total = 0
    while True:
        found = list(
            WatchEvent.objects.using(alias)
            .filter(time__lt=cutoff)
            .order_by("id")
            .values_list("id", "txid")[:batch]
        )
        if not found:
            return total
        ids = [id_ for id_, _ in found]
        # Plain SQL: a QuerySet.delete() would load each row to send it signals.
        with transaction.atomic(using=alias), connection.cursor() as cursor:
            marks = ", ".join(["%s"] * len(ids))
            cursor.execute(f"DELETE FROM {table} WHERE id IN ({marks})", ids)
            _mark_pruned(cursor, connection, [(txid, id_) for id_, txid in found])
        total += len(ids)


def _mark_pruned(cursor: Any, connection: Any, removed: list[tuple[int, int]]) -> None:
    """Merge the removed events' (txid, id) into WatchPruned's outermost pairs."""
    table = connection.ops.quote_name(WatchPruned._meta.db_table)
    if connection.vendor == "postgresql":
        # One pruner merges at a time (plain reads of the mark do not wait; writers of events
        # never touch it). SQLite lets one transaction write at a time anyway.
        cursor.execute(f"LOCK TABLE {table} IN EXCLUSIVE MODE")
    cursor.execute(f"SELECT txid, event_id FROM {table}")
    kept = [(int(txid), int(id_)) for txid, id_ in cursor.fetchall()]
    outermost = outermost_pairs([*kept, *removed])
    if set(outermost) != set(kept):
        cursor.execute(f"DELETE FROM {table}")
        cursor.executemany(f"INSERT INTO {table} (txid, event_id) VALUES (%s, %s)", outermost)


def outermost_pairs(pairs: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """The pairs that no other pair is at or past in both parts.

    A cursor's undelivered events are every (txid, id) at or past one of them, so these alone
    tell whether any of `pairs` is undelivered.
    """
    outermost: list[tuple[int, int]] = []
    for txid, id_ in sorted(set(pairs), reverse=True):
        if not outermost or id_ > outermost[-1][1]:
            outermost.append((txid, id_))
    return outermost
