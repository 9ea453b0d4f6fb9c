"""The test project's handler: what `rungrpcserver` serves in the end-to-end tests."""

from django_grpc_bus.handlers import BasicHandler

handler = BasicHandler()

handler.register("catalog.services.EverythingService")
handler.register("catalog.services.AuthorService")
handler.register("catalog.services.BookService")
handler.register("catalog.services.TagService")

# Everything: catalog.Book and shop.Book both, so the short name "Book" is ambiguous.
full_handler = BasicHandler()

for path in (
    "catalog.services.EverythingService",
    "catalog.services.AuthorService",
    "catalog.services.BookService",
    "catalog.services.TagService",
    "shop.services.BookService",
    "shop.services.CustomerService",
):
    full_handler.register(path)
