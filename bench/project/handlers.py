"""gRPC handler: every service this server offers.

`manage.py generateservices --handler` appends a register() line for each new service.
"""

from django_grpc_bus.handlers import BasicHandler

handler = BasicHandler()

handler.register("shop.services.BookService")
