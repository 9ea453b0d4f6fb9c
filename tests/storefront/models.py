"""The storefront's own table: one row per event its consumer handled (tests count them)."""

from django.db import models


class Seen(models.Model):
    """An event the ``book_changed`` consumer handled: written in the handler's transaction."""

    event_id = models.CharField(max_length=100)
    book_id = models.BigIntegerField()
    kind = models.CharField(max_length=20)
    title = models.CharField(max_length=200, blank=True)
