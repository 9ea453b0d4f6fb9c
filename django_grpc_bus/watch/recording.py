"""Record each committed change of a watched model's rows, in the transaction that makes it.

Receivers of ``post_save`` and ``post_delete`` (connected for every model when the app is
ready) write one :class:`~django_grpc_bus.models.WatchEvent` per change of a model that
``service_meta.yaml`` marks ``watch: true``: on the change's own database connection, so
inside its transaction. A rolled-back change rolls its event back with it.

Django sends no model signals for ``QuerySet.update()``, ``bulk_create()``, ``bulk_update()``
or raw SQL: call :func:`record_changes` in the same transaction for those.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import uuid
from collections.abc import Iterable
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.core.signals import setting_changed
from django.db import connections, models, router, transaction
from django.db.models.signals import post_delete, post_init, post_save
from django.utils import timezone

from django_grpc_bus.models import WatchEvent

logger = logging.getLogger("django_grpc_bus.watch")

# PostgreSQL NOTIFY channel: the payload is the model's lower-case label.
CHANNEL = "django_grpc_bus_watch"
# Where a loaded instance keeps its values as loaded, to tell which fields an update changed.
LOADED = "_grpc_bus_watch_loaded"
KINDS = {
    "created": WatchEvent.CREATED,
    "updated": WatchEvent.UPDATED,
    "deleted": WatchEvent.DELETED,
}
PG_ROW = "(%s::uuid, %s, %s, %s, %s::jsonb, %s::jsonb, %s, pg_current_xact_id()::text::bigint)"

_watched: dict[type[models.Model], tuple[models.Field, ...]] | None = None
_watched_lock = threading.Lock()


def watched_models() -> dict[type[models.Model], tuple[models.Field, ...]]:
    """The models marked ``watch: true``, each with the fields (columns) its events carry."""
    global _watched
    if _watched is None:
        from django_grpc_bus.meta import ServiceMetaError, load_selection

        with _watched_lock:
            try:
                selection = load_selection()
            except ServiceMetaError as exc:
                # The system checks report the file's error (E009); until it is fixed no
                # model is watched.
                logger.error("No model is watched: %s", exc)
                selection = None
            found = {}
            for selected in selection or ():
                if selected.watch:
                    fields = tuple(f for f in selected.fields if f.concrete and f.column)
                    found[selected.model] = fields
            _watched = found
            # From now on only watched models' instances keep their loaded values.
            post_init.disconnect(dispatch_uid=FIRST_INIT)
            for model in found:
                post_init.connect(_on_init, sender=model, dispatch_uid=_init_uid(model))
                _make_save_atomic(model)
    return _watched


def forget_watched_models(*, setting: str, **kwargs: Any) -> None:
    global _watched
    if setting in ("MESSAGE_BUS", "BASE_DIR"):
        with _watched_lock:
            for model in _watched or ():
                post_init.disconnect(sender=model, dispatch_uid=_init_uid(model))
                _restore_save(model)
            _watched = None
            post_init.connect(_first_init, dispatch_uid=FIRST_INIT)


FIRST_INIT = "django_grpc_bus.watch.first_init"


def _make_save_atomic(model: type[models.Model]) -> None:
    """Run a watched model's ``save_base`` in a transaction, ``post_save`` included.

    Django sends ``post_save`` after the row's own statement, outside any transaction of its
    own: a bare ``save()`` in autocommit would commit the row before its event is written, and
    a process dying between the two would lose the event. Inside the caller's
    ``transaction.atomic()`` this adds nothing (``savepoint=False``).
    """
    if getattr(model.__dict__.get("save_base"), "_grpc_bus_atomic", False):
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

    save_base._grpc_bus_atomic = True  # type: ignore[attr-defined]
    save_base._grpc_bus_original = model.__dict__.get("save_base")  # type: ignore[attr-defined]
    model.save_base = save_base  # type: ignore[method-assign]


def _restore_save(model: type[models.Model]) -> None:
    ours = model.__dict__.get("save_base")
    if not getattr(ours, "_grpc_bus_atomic", False):
        return
    original = ours._grpc_bus_original  # type: ignore[union-attr]
    if original is None:
        delattr(model, "save_base")
    else:
        model.save_base = original  # type: ignore[method-assign]


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


def _loaded_values(instance: models.Model, fields: Iterable[models.Field]) -> dict[str, Any]:
    return {field.attname: field.value_from_object(instance) for field in fields}


def _changed_fields(
    instance: models.Model, fields: tuple[models.Field, ...], update_fields: Any
) -> list[str] | None:
    if update_fields:
        names = set(update_fields)
        return [f.name for f in fields if f.name in names or f.attname in names]
    loaded = instance.__dict__.get(LOADED)
    if loaded is None:
        return None
    now = _loaded_values(instance, fields)
    return [f.name for f in fields if loaded.get(f.attname) != now[f.attname]]


def _on_init(sender: type[models.Model], instance: models.Model, **kwargs: Any) -> None:
    fields = watched_models().get(sender)
    if fields is not None:
        instance.__dict__[LOADED] = _loaded_values(instance, fields)


def _on_save(
    sender: type[models.Model],
    instance: models.Model,
    created: bool,
    raw: bool = False,
    using: str | None = None,
    update_fields: Any = None,
    **kwargs: Any,
) -> None:
    fields = watched_models().get(sender)
    if fields is None:
        return
    changed = None if created else _changed_fields(instance, fields, update_fields)
    if changed == []:
        return  # saved with nothing changed
    kind = WatchEvent.CREATED if created else WatchEvent.UPDATED
    write_events(sender, [(kind, instance, changed)], fields, using)
    instance.__dict__[LOADED] = _loaded_values(instance, fields)


def _on_delete(
    sender: type[models.Model], instance: models.Model, using: str | None = None, **kwargs: Any
) -> None:
    fields = watched_models().get(sender)
    if fields is not None:
        write_events(sender, [(WatchEvent.DELETED, instance, None)], fields, using)


def connect_receivers() -> None:
    """Connect the recording receivers (``post_init`` only for watched models, once known)."""
    post_init.connect(_first_init, dispatch_uid=FIRST_INIT)
    post_save.connect(_on_save, dispatch_uid="django_grpc_bus.watch.save")
    post_delete.connect(_on_delete, dispatch_uid="django_grpc_bus.watch.delete")
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
        model = type(instance)._meta.concrete_model or type(instance)
        by_model.setdefault(model, []).append(instance)
    count = 0
    for model, group in by_model.items():
        fields = watched_models().get(model)
        if fields is None:
            continue
        write_events(model, [(KINDS[kind], instance, names) for instance in group], fields, using)
        count += len(group)
    return count


def prune_events(
    retention: dt.timedelta | None = None, using: str | None = None, batch: int = 1000
) -> int:
    """Delete the events older than `retention` (default ``WATCH_RETENTION``); how many.

    In batches of `batch` rows, each its own short transaction, so writers never wait long.
    """
    from django_grpc_bus.watch.settings import retention as configured

    cutoff = timezone.now() - (retention if retention is not None else configured())
    alias = using or router.db_for_write(WatchEvent)
    connection = connections[alias]
    table = connection.ops.quote_name(WatchEvent._meta.db_table)
    total = 0
    while True:
        ids = list(
            WatchEvent.objects.using(alias)
            .filter(time__lt=cutoff)
            .order_by("id")
            .values_list("id", flat=True)[:batch]
        )
        if not ids:
            return total
        # Plain SQL: a QuerySet.delete() would load each row to send it signals.
        with transaction.atomic(using=alias), connection.cursor() as cursor:
            marks = ", ".join(["%s"] * len(ids))
            cursor.execute(f"DELETE FROM {table} WHERE id IN ({marks})", ids)
        total += len(ids)
