"""A service for a hand-written proto (``library.BookActions``): every kind of RPC, no model.

``PROTO`` is the proto; ``compile_proto(folder)`` writes it and its compiled modules
(``library/book_actions_pb2.py``, ``..._pb2_grpc.py``) into `folder`, which the server
process then has on its ``PYTHONPATH``. Served with
``TEST_MESSAGE_BUS='{"ROOT_HANDLERS_HOOK": "handwritten.handler"}'``.

The actions work on ``catalog.Author`` rows: ``BulkCreate`` (client streaming, atomic) and
``BulkCreateEach`` (the same, not atomic) make one author per message, a blank name failing
validation (INVALID_ARGUMENT) after the earlier ones were written; ``Resolve`` (bidi) answers
each name with its author, an unknown name ending the stream NOT_FOUND. ``Forget`` has no
method, so it stays UNIMPLEMENTED.
"""

from __future__ import annotations

from pathlib import Path

from catalog.models import Author

from django_grpc_bus.generics import GenericService
from django_grpc_bus.handlers import BasicHandler

PROTO_FILE = "library/book_actions.proto"
PROTO = """
syntax = "proto3";

package library;

message AuthorName {
  string name = 1;
}

message Authors {
  int64 count = 1;
  repeated int64 ids = 2;
}

message Countdown {
  int32 start = 1;
}

message Resolved {
  int64 id = 1;
  string name = 2;
  int64 seen = 3;
}

service BookActions {
  rpc Lookup(AuthorName) returns (Authors);
  rpc Count(Countdown) returns (stream Resolved);
  rpc BulkCreate(stream AuthorName) returns (Authors);
  rpc BulkCreateEach(stream AuthorName) returns (Authors);
  rpc Resolve(stream AuthorName) returns (stream Resolved);
  rpc Forget(stream AuthorName) returns (Authors);
}
"""


def compile_proto(folder: Path) -> Path:
    """Write ``PROTO`` under `folder` and compile it there (grpc_tools' protoc); `folder`."""
    from support import compile_proto_text  # test-only: not when a server imports the handler

    return compile_proto_text(folder, PROTO_FILE, PROTO)


class BookActionsService(GenericService):
    """All four kinds of RPC of ``library.BookActions``, over ``catalog.Author``."""

    grpc_module = "library.book_actions_pb2_grpc"
    proto_service = "BookActions"
    atomic_actions = frozenset({"bulk_create"})

    def lookup(self, request, context):
        """Unary: the authors of that name."""
        ids = list(Author.objects.filter(name=request.name).values_list("pk", flat=True))
        return self.response_class(count=len(ids), ids=sorted(ids))

    def count(self, request, context):
        """Server streaming: `start` messages, counting down."""
        for left in range(request.start, 0, -1):
            yield self.response_class(name=str(left), seen=request.start - left + 1)

    def bulk_create(self, request, context):
        """Client streaming: one author per name, all in one transaction (atomic)."""
        ids = []
        for message in request:
            author = Author(name=message.name)
            author.full_clean()  # a blank name: ValidationError, mid-stream
            author.save()
            ids.append(author.pk)
        return self.response_class(count=len(ids), ids=ids)

    bulk_create_each = bulk_create  # the same, but not atomic: each write stays

    def resolve(self, request, context):
        """Bidi: each name answered with its author as it arrives."""
        for seen, message in enumerate(request, 1):
            author = Author.objects.get(name=message.name)  # unknown: DoesNotExist
            yield self.response_class(id=author.pk, name=author.name, seen=seen)


handler = BasicHandler()
handler.register(BookActionsService)
