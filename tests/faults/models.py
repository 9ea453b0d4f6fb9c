"""Models for failure tests: partial writes that must roll back, and a slow service.

``Entry.save()`` writes its ``Ledger`` row first (created on first use, its balance moved by the
entry's amount and its ``touches`` counted), then the entry row itself, and only then fails
when the entry says so: a negative ``amount`` raises ``ValueError``. ``Entry.delete()`` moves
the ledger back and deletes the row, then fails when ``note`` is ``FAIL_ON_DELETE``. Whatever
a failed call wrote before the error must not survive it (the call runs in one transaction).
"""

from django.db import models
from django.db.models import F

FAIL_ON_DELETE = "fail-on-delete"


class Ledger(models.Model):
    name = models.CharField(max_length=50, unique=True)
    balance = models.BigIntegerField(default=0)
    touches = models.IntegerField(default=0)


class Entry(models.Model):
    ledger_name = models.CharField(max_length=50)
    amount = models.IntegerField()
    note = models.CharField(max_length=50, blank=True, default="")

    def save(self, *args, **kwargs):
        previous = 0
        if self.pk is not None:
            stored = Entry.objects.filter(pk=self.pk).values_list("amount", flat=True).first()
            previous = stored or 0
        ledger, _ = Ledger.objects.get_or_create(name=self.ledger_name)
        Ledger.objects.filter(pk=ledger.pk).update(
            balance=F("balance") + self.amount - previous, touches=F("touches") + 1
        )
        super().save(*args, **kwargs)
        if self.amount < 0:
            raise ValueError("negative amount, after the ledger and the entry were written")

    def delete(self, *args, **kwargs):
        Ledger.objects.filter(name=self.ledger_name).update(
            balance=F("balance") - self.amount, touches=F("touches") + 1
        )
        result = super().delete(*args, **kwargs)
        if self.note == FAIL_ON_DELETE:
            raise ValueError("refused after the ledger was written and the row deleted")
        return result


class Sleeper(models.Model):
    """Served by a service whose Retrieve takes a second: for the overload tests."""

    name = models.CharField(max_length=20, blank=True, default="")
