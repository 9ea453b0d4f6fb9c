"""Services for failure tests.

``EntryService`` writes through ``Entry.save()``/``delete()``, which write a ledger row and the
entry before failing on request (see ``faults.models``). With the note ``FAIL_IN_SERVICE`` (on
Destroy: ``FAIL_DESTROY_IN_SERVICE``) the model succeeds and the service itself fails after the
write, with the ledger, the entry and an extra ledger row ("audit") already written; with
``FAIL_UNIQUE`` it then inserts a second "audit" ledger (an IntegrityError, ALREADY_EXISTS).
``SleeperService.retrieve`` takes SLEEP seconds, for the overload tests.
"""

import time

from django.db.models import F

from django_grpc_bus.generics import ModelService
from faults import models, serializers

FAIL_IN_SERVICE = "fail-in-service"
FAIL_DESTROY_IN_SERVICE = "fail-destroy-in-service"  # only Destroy fails on this one
FAIL_UNIQUE = "fail-unique"  # the service then inserts a duplicate ledger: IntegrityError
AUDIT_LEDGER = "audit"
SLEEP = 1.0  # seconds per Sleeper Retrieve


class LedgerService(ModelService):
    queryset = models.Ledger.objects.all()
    serializer_class = serializers.LedgerSerializer


class EntryService(ModelService):
    queryset = models.Entry.objects.all()
    serializer_class = serializers.EntrySerializer

    def _audit_then_maybe_fail(self, instance, fail_on=FAIL_IN_SERVICE):
        ledger, _ = models.Ledger.objects.get_or_create(name=AUDIT_LEDGER)
        models.Ledger.objects.filter(pk=ledger.pk).update(touches=F("touches") + 1)
        if instance.note == FAIL_UNIQUE:
            models.Ledger.objects.create(name=AUDIT_LEDGER)
        if instance.note == fail_on:
            raise RuntimeError(f"service failure after writing {instance.ledger_name}")

    def perform_create(self, serializer):
        serializer.save()
        self._audit_then_maybe_fail(serializer.instance)

    def perform_update(self, serializer):
        serializer.save()
        self._audit_then_maybe_fail(serializer.instance)

    def perform_destroy(self, instance):
        instance.delete()
        self._audit_then_maybe_fail(instance, FAIL_DESTROY_IN_SERVICE)


class SleeperService(ModelService):
    queryset = models.Sleeper.objects.all()
    serializer_class = serializers.SleeperSerializer

    def retrieve(self, request, context):
        time.sleep(SLEEP)
        return super().retrieve(request, context)


class FrozenSleeperService(ModelService):
    queryset = models.Sleeper.objects.all()
    serializer_class = serializers.FrozenSleeperSerializer
