"""The test project's catalog services plus the faults services (atomic writes, overload).

Served with ``TEST_MESSAGE_BUS='{"ROOT_HANDLERS_HOOK": "faults.handlers.handler"}'``.
"""

from django_grpc_bus.handlers import BasicHandler

handler = BasicHandler()

for path in (
    "catalog.services.EverythingService",
    "catalog.services.AuthorService",
    "catalog.services.BookService",
    "catalog.services.TagService",
    "faults.services.LedgerService",
    "faults.services.EntryService",
    "faults.services.SleeperService",
):
    handler.register(path)

# A served serializer that does not read every field of its message: refused at start-up.
frozen_handler = BasicHandler()
frozen_handler.register("faults.services.FrozenSleeperService")
