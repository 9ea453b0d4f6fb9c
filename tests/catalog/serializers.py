from generated_grpc.grpc import Author_pb2, Everything_pb2, Tag_pb2, catalog_Book_pb2
from rest_framework import serializers

from catalog import models
from django_grpc_bus import serializers as proto_serializers


class EverythingSerializer(proto_serializers.ModelProtoSerializer):
    class Meta:
        model = models.Everything
        proto_class = Everything_pb2.EverythingData
        fields = "__all__"

    def validate_f_char(self, value):
        if value == "forbidden":
            raise serializers.ValidationError("This word is not allowed.")
        return value


class AuthorSerializer(proto_serializers.ModelProtoSerializer):
    class Meta:
        model = models.Author
        proto_class = Author_pb2.AuthorData


class BookSerializer(proto_serializers.ModelProtoSerializer):
    class Meta:
        model = models.Book
        proto_class = catalog_Book_pb2.BookData
        fields = ["id", "title", "author", "isbn"]


class TagSerializer(proto_serializers.ModelProtoSerializer):
    class Meta:
        model = models.Tag
        proto_class = Tag_pb2.TagData
        fields = ["id", "name"]
