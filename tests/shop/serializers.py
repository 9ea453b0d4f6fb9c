from generated_grpc.grpc import Customer_pb2, shop_Book_pb2

from django_grpc_bus import serializers as proto_serializers
from shop import models


class BookSerializer(proto_serializers.ModelProtoSerializer):
    class Meta:
        model = models.Book
        proto_class = shop_Book_pb2.BookData
        fields = ["id", "name", "price"]


class CustomerSerializer(proto_serializers.ModelProtoSerializer):
    class Meta:
        model = models.Customer
        proto_class = Customer_pb2.CustomerData
        fields = ["id", "email"]
