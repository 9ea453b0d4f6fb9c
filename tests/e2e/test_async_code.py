"""async def service code: actions on the asyncio server's loop, hooks on either server.

In process (``GrpcTestServer``): every kind of RPC of ``library.BookActions`` written as
``async def`` actions with Django's async ORM, through the error table; ``perform_create`` and
``perform_destroy`` written as ``async def`` hooks run on an event loop while their queries,
through ``sync_to_async``, run in the call's thread, in the action's transaction.
"""

from __future__ import annotations

import importlib
import sys
import threading

import grpc
import pytest
from asgiref.sync import sync_to_async
from catalog.models import Author
from catalog.services import AuthorService
from handwritten import compile_proto

from django_grpc_bus.generics import GenericService
from django_grpc_bus.handlers import BasicHandler
from django_grpc_bus.testing import GrpcTestServer

TIMEOUT = 10
Code = grpc.StatusCode


@pytest.fixture(scope="module")
def book_actions(tmp_path_factory):
    """``library.book_actions_pb2`` and ``_pb2_grpc``, compiled for this module."""
    folder = compile_proto(tmp_path_factory.mktemp("async_code"))
    sys.path.insert(0, str(folder))
    try:
        yield (
            importlib.import_module("library.book_actions_pb2"),
            importlib.import_module("library.book_actions_pb2_grpc"),
        )
    finally:
        sys.path.remove(str(folder))


class AsyncBookActions(GenericService):
    """``library.BookActions`` in async def actions over ``catalog.Author``."""

    grpc_module = "library.book_actions_pb2_grpc"
    proto_service = "BookActions"
    atomic_actions: frozenset[str] = frozenset()
    threads: list[str] = []

    async def lookup(self, request, context):
        AsyncBookActions.threads.append(threading.current_thread().name)
        ids = [
            pk async for pk in Author.objects.filter(name=request.name).values_list("pk", flat=True)
        ]
        if not ids:
            await context.abort(Code.NOT_FOUND, f"No author is named {request.name!r}.")
        return self.response_class(count=len(ids), ids=sorted(ids))

    async def count(self, request, context):
        for left in range(request.start, 0, -1):
            yield self.response_class(name=str(left), seen=request.start - left + 1)

    async def bulk_create(self, request, context):
        ids = []
        async for message in request:
            ids.append((await Author.objects.acreate(name=message.name)).pk)
        return self.response_class(count=len(ids), ids=ids)

    async def resolve(self, request, context):
        seen = 0
        async for message in request:
            seen += 1
            author = await Author.objects.aget(name=message.name)  # unknown: NOT_FOUND
            yield self.response_class(id=author.pk, name=author.name, seen=seen)


@pytest.mark.django_db(transaction=True)
def test_async_actions_of_every_kind_on_the_asyncio_server(book_actions):
    pb, pb_grpc = book_actions
    AsyncBookActions.threads = []
    handler = BasicHandler()
    handler.register(AsyncBookActions)
    with GrpcTestServer(handler, asyncio=True) as server:
        stub = pb_grpc.BookActionsStub(server.channel)
        created = stub.BulkCreate(
            iter([pb.AuthorName(name="Ada"), pb.AuthorName(name="Grace")]), timeout=TIMEOUT
        )
        assert created.count == 2
        assert stub.Lookup(pb.AuthorName(name="Ada"), timeout=TIMEOUT).ids == [created.ids[0]]
        assert AsyncBookActions.threads == ["grpc-bus-aio-loop"]  # on the server's loop
        assert [r.seen for r in stub.Count(pb.Countdown(start=3), timeout=TIMEOUT)] == [1, 2, 3]
        resolved = stub.Resolve(
            iter([pb.AuthorName(name="Grace"), pb.AuthorName(name="Ada")]), timeout=TIMEOUT
        )
        assert [(r.id, r.seen) for r in resolved] == [(created.ids[1], 1), (created.ids[0], 2)]

        with pytest.raises(grpc.RpcError) as aborted:
            stub.Lookup(pb.AuthorName(name="Nobody"), timeout=TIMEOUT)
        assert aborted.value.code() == Code.NOT_FOUND
        assert "Nobody" in aborted.value.details()
        with pytest.raises(grpc.RpcError) as missing:  # through the error table
            list(stub.Resolve(iter([pb.AuthorName(name="Nobody")]), timeout=TIMEOUT))
        assert missing.value.code() == Code.NOT_FOUND
    assert sorted(Author.objects.values_list("name", flat=True)) == ["Ada", "Grace"]


class HookedAuthors(AuthorService):
    """AuthorService with async def hooks; a name starting with "!" fails after the save."""

    seen: list[tuple[str, str]] = []

    async def perform_create(self, serializer):
        HookedAuthors.seen.append(("hook", threading.current_thread().name))
        await sync_to_async(self.save)(serializer)
        if serializer.instance.name.startswith("!"):
            raise RuntimeError("after the save")

    def save(self, serializer):
        HookedAuthors.seen.append(("save", threading.current_thread().name))
        serializer.save()

    async def perform_destroy(self, instance):
        await sync_to_async(instance.delete)()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("asyncio", [False, True], ids=["threaded", "asyncio"])
def test_async_hooks_run_on_a_loop_with_the_queries_in_the_transaction(asyncio):
    from generated_grpc.grpc import Author_pb2 as pb

    HookedAuthors.seen = []
    handler = BasicHandler()
    handler.register(HookedAuthors)
    with GrpcTestServer(handler, asyncio=asyncio) as server:
        stub = server.stub(Author)
        created = stub.Create(pb.AuthorData(name="Hooked"), timeout=TIMEOUT)
        (_hook, hook_thread), (_save, save_thread) = HookedAuthors.seen
        assert hook_thread != save_thread  # the hook on a loop, the save in the call's thread
        if asyncio:
            assert (hook_thread, save_thread[:14]) == ("grpc-bus-aio-loop", "grpc-bus-sync-")

        with pytest.raises(grpc.RpcError) as failed:
            stub.Create(pb.AuthorData(name="!rolled back"), timeout=TIMEOUT)
        assert failed.value.code() == Code.INTERNAL

        stub.Destroy(pb.AuthorLookupRequest(id=created.id), timeout=TIMEOUT)
    # The failed create's save was in its transaction: rolled back. The destroy happened.
    assert not Author.objects.exists()
