"""The test project's handler: what `rungrpcserver` serves in the end-to-end tests."""

from django_grpc_bus.handlers import BasicHandler

handler = BasicHandler()

handler.register("catalog.services.EverythingService")
handler.register("catalog.services.AuthorService")
handler.register("catalog.services.BookService")
handler.register("catalog.services.TagService")
