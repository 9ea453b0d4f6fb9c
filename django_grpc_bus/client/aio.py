"""``aregistry``: the registry for asyncio code (ASGI views, async tasks) on ``grpc.aio``.

    from django_grpc_bus.client.aio import aregistry

    book = await aregistry.server1.Book.retrieve({"id": 1})
    async for row in aregistry.server1.Book.list():
        ...

It shares the synchronous registry's reflection cache (fetched in a worker thread on first
use, so the event loop never blocks). Each event loop gets its own channel per servlet, as
``grpc.aio`` channels belong to the loop that made them. Names are resolved when the call
runs; an unknown name raises then, with the same errors as the synchronous registry. Lookup,
the call signature and each RPC's messages, options and errors are the synchronous client's own
(``client/base.py``, ``servlet.RPC``); only the I/O differs.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Generator
from typing import Any

import grpc

from django_grpc_bus.client.base import BaseRegistry, Lookup, MethodCalls, reset_with_settings
from django_grpc_bus.client.channels import open_channel
from django_grpc_bus.client.discovery import Catalog
from django_grpc_bus.client.exceptions import RequestError
from django_grpc_bus.client.registry import registry
from django_grpc_bus.client.servlet import (
    MAX_IDLE_RESUMES,
    NO_DEADLINE,
    RPC,
    Servlet,
    stream_request_error,
)
from django_grpc_bus.client.watch import Reconnect, WatchState, afollow


class AsyncServlet(Lookup):
    """The async view of one servlet: ``await aservlet.Book.retrieve(...)``."""

    def __init__(self, servlet: Servlet) -> None:
        self.servlet = servlet
        self._channels: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()

    async def catalog(self) -> Catalog:
        """The servlet's catalog, fetched in a worker thread on first use."""
        catalog = self.servlet.cached_catalog
        if catalog is None:
            catalog = await asyncio.to_thread(lambda: self.servlet.catalog)
        return catalog

    async def channel(self) -> grpc.aio.Channel:
        catalog = await self.catalog()
        loop = asyncio.get_running_loop()
        with self._lock:
            channel = self._channels.get(loop)
            if channel is None:
                channel = open_channel(self.servlet.config, catalog.services, aio=True)
                self._channels[loop] = channel
        return channel

    async def method(self, service: str, method: str) -> RPC:
        await self.catalog()
        return self.servlet.service(service).method(method)

    def _lookup(self, name: str) -> AsyncService:
        return AsyncService(self, name)

    async def aclose(self) -> None:
        with self._lock:
            channels, self._channels = list(self._channels.values()), weakref.WeakKeyDictionary()
        for channel in channels:
            await channel.close()


class AsyncService(Lookup):
    """A service name on an async servlet, resolved when a call runs."""

    def __init__(self, servlet: AsyncServlet, name: str) -> None:
        self._servlet = servlet
        self._name = name

    def _lookup(self, name: str) -> AsyncMethod:
        return AsyncMethod(self._servlet, self._name, name)


class AsyncMethod(MethodCalls):
    """A method name on an async service: calling it gives an ``AsyncCall``."""

    def __init__(self, servlet: AsyncServlet, service: str, method: str) -> None:
        self._servlet = servlet
        self._service = service
        self._method = method

    def __call__(
        self,
        request_dict: Any = None,
        *,
        timeout: float | None = None,
        metadata: Any = None,
        reconnect: Reconnect | None = None,
    ) -> AsyncCall:
        """As the synchronous client's; `reconnect` is for a generated Watch (``async for``)."""
        return AsyncCall(self, request_dict, timeout, metadata, reconnect=reconnect)

    def _send(self, request: Any, timeout: Any, metadata: Any, flatten: bool | None) -> AsyncCall:
        return AsyncCall(self, request, timeout, metadata, flatten)

    async def resolve(self) -> tuple[RPC, Any]:
        method = await self._servlet.method(self._service, self._method)
        channel = await self._servlet.channel()
        return method, method.multicallable_on(channel)


class AsyncCall:
    """``await`` it for a unary result, or ``async for`` over a stream's rows."""

    def __init__(
        self,
        method: AsyncMethod,
        request: Any,
        timeout: Any,
        metadata: Any,
        flatten: bool | None = None,
        reconnect: Reconnect | None = None,
    ) -> None:
        self._method = method
        self._request = request
        self._timeout = timeout
        self._metadata = metadata
        self._flatten = flatten  # None: rows of a generated List; False: the messages
        self._reconnect = reconnect
        self._requests: Any = None  # a client stream's, once started

    async def _start(self) -> tuple[RPC, Any]:
        method, multicallable = await self._method.resolve()
        message: Any
        if method.client_streaming and hasattr(self._request, "__aiter__"):
            message = AsyncClientStream(method, self._request)  # sent as it yields
        else:
            message = method.request_messages(self._request)
            if method.client_streaming:
                message = iter(list(message))  # built (and checked) before the call starts
        self._requests = message
        options = method.call_options(self._timeout, self._metadata)
        call = multicallable(message, **options)
        if method.resumes and self._flatten is None:
            call = _ResumableCall(method, multicallable, message, options, call)
        return method, call

    def __await__(self) -> Generator[Any, None, Any]:
        return self._result().__await__()

    async def _result(self) -> Any:
        method, _ = await self._method.resolve()
        if method.watches and self._flatten is None:
            raise RequestError(f"{method.name} never ends: use `async for event in ...watch()`.")
        method, call = await self._start()
        if method.server_streaming:
            return [row async for row in self._rows(method, call, self._flatten)]
        try:
            return method.convert(await call)
        except grpc.RpcError as exc:
            raise method.error(exc, self._requests) from None
        except asyncio.CancelledError:
            _raise_request_error(self._requests)
            raise

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        method, multicallable = await self._method.resolve()
        if method.watches and self._flatten is None:
            state = WatchState(method, self._request, self._reconnect)
            timeout = NO_DEADLINE if self._timeout is None else self._timeout
            options = method.call_options(timeout, self._metadata)
            events = afollow(state, lambda: multicallable, options)
            async with contextlib.aclosing(events):
                async for event in events:
                    yield event
            return
        method, call = await self._start()
        # Closing this generator closes the inner one now, which cancels the call.
        rows_of = self._rows(method, call, self._flatten, self._requests)
        async with contextlib.aclosing(rows_of) as rows:
            async for row in rows:
                yield row

    @staticmethod
    async def _rows(
        method: RPC, call: Any, flatten: bool | None = None, requests: Any = None
    ) -> AsyncGenerator[Any, None]:
        try:
            async for response in call:
                for row in method.results(response, flatten):
                    yield row
        except grpc.RpcError as exc:
            raise method.error(exc, requests) from None
        except asyncio.CancelledError:
            _raise_request_error(requests)
            raise
        finally:
            call.cancel()


class _ResumableCall:
    """A List's call that goes on after a cut (UNAVAILABLE) where it was cut, by page token.

    Iterating it gives the List's messages, holding only rows not yielded before (a page asked
    for again drops its rows up to where the cut was); ``cancel()`` cancels the current call.
    """

    def __init__(
        self, method: RPC, multicallable: Any, message: Any, options: dict[str, Any], call: Any
    ) -> None:
        self._method = method
        self._multicallable = multicallable
        self._message = message
        self._options = options
        self._call = call

    def cancel(self) -> bool:
        return bool(self._call.cancel())

    async def __aiter__(self) -> AsyncIterator[Any]:
        token, rows, skip, idle_cuts = "", 0, 0, 0
        while True:
            try:
                async for response in self._call:
                    idle_cuts = 0
                    if skip:
                        dropped = min(skip, len(response.results))
                        del response.results[:dropped]
                        skip -= dropped
                    rows += len(response.results)
                    yield response
                    token = response.next_page_token
                return
            except grpc.RpcError as exc:
                resumed = self._method.resume_request(exc, self._message, token, rows)
                idle_cuts += 1
                if resumed is None or idle_cuts > MAX_IDLE_RESUMES:
                    raise
                self._message, skip = resumed
                self._call = self._multicallable(self._message, **self._options)


class AsyncRegistry(BaseRegistry[AsyncServlet]):
    """Every configured servlet, for asyncio: ``await aregistry.server1.Book.retrieve(...)``."""

    def servlet(self, name: str) -> AsyncServlet:
        return self._wrap(registry.servlet(name))

    def connect(self, address: str) -> AsyncServlet:
        return self._wrap(registry.connect(address))

    def _wrap(self, servlet: Servlet) -> AsyncServlet:
        with self._lock:
            found = self._servlets.get(id(servlet))
            if found is None or found.servlet is not servlet:
                found = self._servlets[id(servlet)] = AsyncServlet(servlet)
        return found

    async def aclose(self) -> None:
        """Close this event loop's channels (call before the loop ends, e.g. on shutdown)."""
        with self._lock:
            servlets = list(self._servlets.values())
        for servlet in servlets:
            await servlet.aclose()


aregistry = AsyncRegistry()
reset_with_settings(aregistry)


def _raise_request_error(requests: Any) -> None:
    """grpc.aio cancels a call whose request iterator raised: raise what it raised instead."""
    error = getattr(requests, "error", None)
    if error is not None:
        raise error from None


class AsyncClientStream:
    """An async iterable of requests as a client stream's messages, as ``ClientStream`` is
    for the sync client: a request that cannot be a message ends the call, kept in `error`."""

    def __init__(self, rpc: RPC, requests: Any) -> None:
        self._rpc = rpc
        self._requests = requests.__aiter__()
        self._index = -1
        self.error: RequestError | None = None

    def __aiter__(self) -> AsyncClientStream:
        return self

    async def __anext__(self) -> Any:
        request = await self._requests.__anext__()
        self._index += 1
        try:
            return self._rpc.build_request(request)
        except RequestError as exc:
            self.error = stream_request_error(exc, self._index)
            raise self.error from None
