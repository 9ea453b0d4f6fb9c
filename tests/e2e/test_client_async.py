"""``aregistry``, the asyncio client, against a real ``rungrpcserver`` process.

Each test runs its coroutine with ``asyncio.run`` (a new event loop) and closes that loop's
channels with ``aregistry.aclose()`` before the loop ends.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import pytest
from support import add_servlets, counting_load_catalog, free_port, servlet_entry

from django_grpc_bus.client import exceptions
from django_grpc_bus.client.aio import AsyncMethod, aregistry
from django_grpc_bus.client.registry import registry

TIMEOUT = 5


@pytest.fixture(autouse=True)
def servlets(settings, grpc_server):
    add_servlets(settings, one=servlet_entry(grpc_server.port, TIMEOUT))
    return grpc_server


def run(coroutine_function, *args: Any) -> Any:
    """Run on a new event loop, closing its channels before the loop ends."""

    async def main() -> Any:
        try:
            return await asyncio.wait_for(coroutine_function(*args), timeout=30)
        finally:
            await aregistry.aclose()

    return asyncio.run(main())


def test_await_unary_calls():
    async def main():
        author = aregistry.one.Author
        made = await author.create({"name": "Async Ada"})
        assert isinstance(made["id"], int) and made["name"] == "Async Ada"
        assert await author.retrieve({"id": made["id"]}) == made
        assert await aregistry.one["catalog.Author"].Retrieve({"id": made["id"]}) == made
        changed = await author.partial_update(
            {"data": {"id": made["id"], "name": "Async Grace"}, "update_mask": ["name"]},
            metadata={"x-request-id": "1"},
            timeout=3,
        )
        assert changed == {"id": made["id"], "name": "Async Grace"}
        assert await author.destroy({"id": made["id"]}) == {}
        return made

    made = run(main)
    # The synchronous registry sees the same server.
    with pytest.raises(exceptions.CallError) as gone:
        registry.one.Author.retrieve({"id": made["id"]})
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND


def test_streams_async_for_and_await():
    async def main():
        made = [await aregistry.one.Author.create({"name": f"Stream {i}"}) for i in range(5)]
        iterated = [row async for row in aregistry.one.Author.list()]
        awaited = await aregistry.one.Author.list()
        return made, iterated, awaited

    made, iterated, awaited = run(main)
    assert isinstance(awaited, list)
    assert all(isinstance(row, dict) for row in iterated)
    assert iterated == awaited
    ids = [row["id"] for row in iterated]
    assert len(ids) == len(set(ids))
    assert all(row in iterated for row in made)
    assert iterated == list(registry.one.Author.list())


def test_async_batches_are_the_list_responses_with_their_page_tokens():
    async def main():
        for i in range(3):
            await aregistry.one.Author.create({"name": f"Batch {i}"})
        batches = aregistry.one.Author.list.batches({"page_size": 2})
        first = [batch async for batch in batches]
        second = [
            batch
            async for batch in aregistry.one.Author.list.batches(
                {"page_size": 2, "page_token": first[0]["next_page_token"]}
            )
        ]
        awaited = await aregistry.one.Author.list.batches({"page_size": 2})
        return first, second, awaited

    first, second, awaited = run(main)
    assert len(first) == 1 and set(first[0]) == {"results", "next_page_token"}
    assert len(first[0]["results"]) == 2 and first[0]["next_page_token"]
    assert first == awaited == list(registry.one.Author.list.batches({"page_size": 2}))
    pages = list(
        registry.one.Author.list.batches(
            {"page_size": 2, "page_token": first[0]["next_page_token"]}
        )
    )
    assert second == pages
    assert second[0]["results"][0]["id"] > first[0]["results"][-1]["id"]


def test_leaving_an_async_stream_early_keeps_the_server_serving():
    async def main():
        for _ in range(3):
            await aregistry.one.Author.create({"name": "Early"})
        rows = aregistry.one.Author.list().__aiter__()
        first = await rows.__anext__()
        await rows.aclose()
        async for _row in aregistry.one.Author.list():
            break
        return first, await aregistry.one.Author.retrieve({"id": first["id"]})

    first, again = run(main)
    assert first == again


class RecordingCall:
    """A stream call that records cancel()."""

    def __init__(self, call: Any) -> None:
        self.call = call
        self.cancel_calls = 0

    def __aiter__(self):
        return self.call.__aiter__()

    def cancel(self) -> bool:
        self.cancel_calls += 1
        return self.call.cancel()


def test_closing_an_async_stream_cancels_the_call_at_once(monkeypatch):
    calls: list[RecordingCall] = []
    resolve = AsyncMethod.resolve

    async def recording_resolve(self):
        method, multicallable = await resolve(self)
        if not method.server_streaming:
            return method, multicallable

        def start(*args: Any, **kwargs: Any) -> RecordingCall:
            calls.append(RecordingCall(multicallable(*args, **kwargs)))
            return calls[-1]

        return method, start

    monkeypatch.setattr(AsyncMethod, "resolve", recording_resolve)

    async def main():
        for _ in range(3):
            await aregistry.one.Author.create({"name": "Cancelled"})
        rows = aregistry.one.Author.list().__aiter__()
        await rows.__anext__()
        await rows.aclose()
        return calls[-1].cancel_calls

    assert run(main) == 1


def test_errors_are_the_same_call_errors():
    async def main():
        author = aregistry.one.Author
        with pytest.raises(exceptions.CallError) as missing:
            await author.retrieve({"id": 10**9})
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        assert isinstance(missing.value, grpc.RpcError)
        assert missing.value.servlet == "one" and missing.value.method == "catalog.Author.Retrieve"

        with pytest.raises(exceptions.CallError) as invalid:
            await author.create({"name": ""})
        assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert invalid.value.violations == [("name", "This field may not be blank.")]

        with pytest.raises(exceptions.CallError) as internal:
            await author.create({"name": "explode"})
        assert internal.value.code() == grpc.StatusCode.INTERNAL
        assert "secret" not in internal.value.details()

        with pytest.raises(exceptions.CallError) as bad_token:
            await author.list({"page_size": 1, "page_token": "not a token"})
        assert bad_token.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert [field for field, _ in bad_token.value.violations] == ["page_token"]
        with pytest.raises(exceptions.CallError):
            async for _row in author.list({"page_token": "not a token"}):
                pass

        started = time.monotonic()
        with pytest.raises(exceptions.CallError) as late:
            await author.create({"name": "slow:1.5"}, timeout=0.2)
        assert time.monotonic() - started < 1.2
        assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

        # Bad requests fail before anything is sent.
        before = len(await author.list())
        for request, field in (({"nme": "x"}, "nme"), ({"name": 5}, "name")):
            with pytest.raises(exceptions.RequestError) as bad:
                await author.create(request)
            assert field in str(bad.value) and "id, name" in str(bad.value)
        assert len(await author.list()) == before

    run(main)


def test_unknown_names_raise_when_awaited():
    async def main():
        call = aregistry.one.Nope.retrieve({"id": 1})  # nothing is resolved yet
        with pytest.raises(exceptions.UnknownService) as service:
            await call
        assert "Author" in str(service.value) and "Nope" in str(service.value)
        with pytest.raises(exceptions.UnknownMethod) as method:
            await aregistry.one.Author.nope({})
        assert "partial_update" in str(method.value)
        with pytest.raises(exceptions.UnknownService):
            async for _row in aregistry.one.Nope.list():
                pass

    run(main)
    with pytest.raises(exceptions.UnknownServlet) as servlet:
        aregistry.nope  # noqa: B018
    assert "one" in str(servlet.value)


def test_an_unreachable_servlet_fails_within_the_deadline(settings):
    port = free_port()
    add_servlets(settings, down={"host": "127.0.0.1", "port": port, "timeout": 2})

    async def main():
        started = time.monotonic()
        with pytest.raises(exceptions.ServletUnavailable) as caught:
            await aregistry.down.Author.retrieve({"id": 1})
        assert time.monotonic() - started < 5
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "'down'" in str(caught.value) and f"127.0.0.1:{port}" in str(caught.value)

    run(main)


def test_the_reflection_cache_is_shared_with_the_sync_registry(monkeypatch):
    fetches = counting_load_catalog(monkeypatch)
    made = registry.one.Author.create({"name": "Shared cache"})

    async def main():
        assert aregistry.one.servlet is registry.one
        assert await aregistry.one.Author.retrieve({"id": made["id"]}) == made
        return await asyncio.gather(
            *(aregistry.one.Author.retrieve({"id": made["id"]}) for _ in range(50))
        )

    assert run(main) == [made] * 50
    assert registry.one.Author.retrieve({"id": made["id"]}) == made
    assert fetches == ["one"]


def test_the_first_async_use_fetches_once_for_both(monkeypatch):
    fetches = counting_load_catalog(monkeypatch)

    async def main():
        return await asyncio.gather(
            *(aregistry.one.Author.create({"name": f"First {i}"}) for i in range(10))
        )

    made = run(main)
    assert len({row["id"] for row in made}) == 10
    assert registry.one.Author.retrieve({"id": made[0]["id"]}) == made[0]
    assert fetches == ["one"]


def test_two_event_loops_in_sequence_each_get_a_channel(monkeypatch):
    fetches = counting_load_catalog(monkeypatch)

    async def main(name: str):
        made = await aregistry.one.Author.create({"name": name})
        assert await aregistry.one.Author.retrieve({"id": made["id"]}) == made
        return await aregistry.one.channel()

    first = run(main, "Loop 1")
    second = run(main, "Loop 2")
    assert first is not second
    assert fetches == ["one"]
