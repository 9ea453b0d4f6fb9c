import time

from catalog import models, serializers
from django_grpc_bus.generics import ModelService, ReadOnlyModelService


class EverythingService(ModelService):
    queryset = models.Everything.objects.all()
    serializer_class = serializers.EverythingSerializer


class AuthorService(ModelService):
    queryset = models.Author.objects.all()
    serializer_class = serializers.AuthorSerializer

    def perform_create(self, serializer):
        # Slow on request, for the graceful-shutdown tests: a name starting "slow:" sleeps.
        name = serializer.validated_data.get("name", "")
        if name.startswith("slow:"):
            time.sleep(float(name.split(":")[1]))
        if name == "explode":
            raise RuntimeError("secret internal detail")
        serializer.save()


class BookService(ModelService):
    queryset = models.Book.objects.all()
    serializer_class = serializers.BookSerializer
    lookup_field = "isbn"


class TagService(ReadOnlyModelService):
    queryset = models.Tag.objects.all()
    serializer_class = serializers.TagSerializer
