from generated_grpc.grpc import Entry_pb2, Ledger_pb2, Sleeper_pb2

from django_grpc_bus import serializers as proto_serializers
from faults import models


class LedgerSerializer(proto_serializers.ModelProtoSerializer):
    class Meta:
        model = models.Ledger
        proto_class = Ledger_pb2.LedgerData


class EntrySerializer(proto_serializers.ModelProtoSerializer):
    class Meta:
        model = models.Entry
        proto_class = Entry_pb2.EntryData


class SleeperSerializer(proto_serializers.ModelProtoSerializer):
    class Meta:
        model = models.Sleeper
        proto_class = Sleeper_pb2.SleeperData


class FrozenSleeperSerializer(proto_serializers.ModelProtoSerializer):
    """A field list frozen before the model's other fields were exposed (check E016)."""

    class Meta:
        model = models.Sleeper
        proto_class = Sleeper_pb2.SleeperData
        fields = ["id"]
