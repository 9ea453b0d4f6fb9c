"""The transactional outbox: one row per committed change of a watched model's row.

:mod:`django_grpc_bus.watch.recording` writes a :class:`WatchEvent` in the same transaction as
the change (``post_save``/``post_delete``), so a rolled-back change leaves no event and a
committed one is never lost; :mod:`django_grpc_bus.watch.reading` serves them to ``Watch``.
"""

from __future__ import annotations

import uuid

from django.db import models


class WatchEvent(models.Model):
    """One created, updated or deleted row of a watched model, as it was when it changed."""

    CREATED = 1
    UPDATED = 2
    DELETED = 3
    KINDS = ((CREATED, "created"), (UPDATED, "updated"), (DELETED, "deleted"))

    id = models.BigAutoField(primary_key=True)
    # The event's id for consumers (de-duplication, NATS Nats-Msg-Id): never reused.
    uid = models.UUIDField(default=uuid.uuid4, editable=False)
    # The model's label in lower case, "catalog.book".
    model = models.CharField(max_length=200)
    kind = models.PositiveSmallIntegerField(choices=KINDS)
    object_pk = models.CharField(max_length=255)
    # The row's field values by attname (JSON), as they were after the change (before a delete).
    data = models.JSONField()
    # The names of the fields an update changed, where known; null when unknown.
    changed = models.JSONField(null=True, blank=True)
    # PostgreSQL: the writing transaction's id (pg_current_xact_id()), so that a reader never
    # moves past a transaction that has not committed yet. 0 on other databases.
    txid = models.BigIntegerField(default=0)
    time = models.DateTimeField()

    class Meta:
        indexes = [
            models.Index(fields=["model", "txid", "id"], name="django_grpc_bus_watch_pos"),
            models.Index(fields=["time"], name="django_grpc_bus_watch_time"),
        ]

    def __str__(self) -> str:
        return f"{self.model} {self.get_kind_display()} {self.object_pk} (#{self.id})"


class WatchPruned(models.Model):
    """What pruning removed from the outbox: the outermost ``(txid, id)`` of the removed events.

    Each row is a removed event that no other removed event is at or past in both ``txid`` and
    ``id``; they are a few rows, rewritten by each pruning in the transaction of its delete. A
    cursor misses removed events exactly when one of these rows is past it (a cursor's
    undelivered events are every event at or past one of them), so resuming an old cursor is
    refused only when events after it were removed (:func:`~.watch.reading.pruned_after`).
    """

    id = models.BigAutoField(primary_key=True)
    txid = models.BigIntegerField()  # 0 on databases other than PostgreSQL, as in WatchEvent
    event_id = models.BigIntegerField()

    def __str__(self) -> str:
        return f"pruned up to ({self.txid}, #{self.event_id})"


class SubscriptionCursor(models.Model):
    """Where a durable consumer (``consumer.subscribe``) is: the last event it handled.

    Written in the same transaction as the handler's own writes (``runconsumers``), so a
    consumer that dies mid-handler is given that event again and its effects happen once.
    """

    id = models.BigAutoField(primary_key=True)
    # The subscription's name (the handler's dotted path unless subscribe(name=...) says).
    name = models.CharField(max_length=255, unique=True)
    # The cursor of the last event handled: the subscription resumes after it. Empty: none yet.
    cursor = models.TextField(blank=True, default="")
    # The id of the last event handled, to skip the same event delivered again.
    event_id = models.CharField(max_length=255, blank=True, default="")
    updated = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.name} at {self.cursor or '(start)'}"
