from django_grpc_bus.generics import ModelService
from shop import models, serializers


class BookService(ModelService):
    queryset = models.Book.objects.all()
    serializer_class = serializers.BookSerializer


class CustomerService(ModelService):
    queryset = models.Customer.objects.all()
    serializer_class = serializers.CustomerSerializer
