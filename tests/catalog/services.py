import time

from catalog import models, serializers
from django_grpc_bus.generics import ModelService, ReadOnlyModelService

NUMBER_LOOKUPS = ["exact", "in", "range", "lt", "lte", "gt", "gte"]


class EverythingService(ModelService):
    queryset = models.Everything.objects.all()
    serializer_class = serializers.EverythingSerializer
    # Every field type django-filter can filter, with the lookups it offers for it (file,
    # binary, JSON and generated fields have no django-filter filter class).
    filterset_fields = {
        "id": ["exact", "in", "lt", "gt"],
        "f_int": NUMBER_LOOKUPS,
        "f_bigint": NUMBER_LOOKUPS,
        "f_smallint": ["exact", "in", "lt", "gte"],
        "f_posint": ["exact", "gte"],
        "f_possmall": ["exact", "lte"],
        "f_posbig": ["exact", "in", "gt"],
        "f_float": ["exact", "range", "lt", "gte"],
        "f_decimal": NUMBER_LOOKUPS,
        "f_bool": ["exact"],
        "f_char": ["exact", "in", "icontains", "startswith", "iexact"],
        "f_text": ["icontains"],
        "f_slug": ["exact", "in"],
        "f_email": ["iexact", "endswith"],
        "f_url": ["exact", "startswith"],
        "f_uuid": ["exact", "in"],
        "f_ip": ["exact", "in"],
        "f_filepath": ["exact"],
        "f_date": [*NUMBER_LOOKUPS, "year", "month", "year__gte", "week_day"],
        "f_datetime": [*NUMBER_LOOKUPS, "date", "year", "hour", "date__gte"],
        "f_time": ["exact", "range", "lt", "gte", "hour"],
        "f_duration": ["exact", "in", "lt", "gt"],
        "f_choice_int": ["exact", "in"],
        "f_choice_str": ["exact", "in"],
        "f_custom": ["exact", "icontains"],
        "f_null_int": ["exact", "isnull", "lt", "gte"],
        "f_null_char": ["exact", "isnull"],
        "f_null_decimal": ["isnull", "gte"],
        "f_null_bool": ["exact", "isnull"],
        "f_null_datetime": ["isnull", "gte", "lt"],
        "f_null_date": ["isnull", "range"],
        "f_default_int": ["exact"],
        "f_blank_char": ["exact"],
        "f_auto_now": ["gte", "lt"],
        "author": ["exact", "in"],
        "author__name": ["icontains"],
        "editor": ["exact", "isnull"],
        "token": ["exact", "isnull"],
        "tags": ["exact"],
    }
    ordering_fields = ["id", "f_int", "f_decimal", "f_char", "f_datetime"]
    search_fields = ["f_char", "f_text"]


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
    filterset_fields = {
        "title": ["exact", "icontains", "startswith"],
        "author": ["exact", "in"],
        "isbn": ["exact"],
    }
    ordering_fields = ["title", "isbn"]
    search_fields = ["title", "author__name"]


class TagService(ReadOnlyModelService):
    queryset = models.Tag.objects.all()
    serializer_class = serializers.TagSerializer
