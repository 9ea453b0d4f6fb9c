"""One consumed server: its catalog (from reflection), its channel, its services and methods.

``Servlet`` fetches the catalog on first use, once, under a lock; ``Service`` and ``Method``
are thin views on it. Calls take a dict (or a message) and return plain Python values.
``RPC`` is what the synchronous ``Method`` and the asyncio client share of one RPC (messages,
call options, errors); ``Method`` adds the blocking calls on the servlet's channel.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import grpc
from google.protobuf import descriptor, message_factory
from google.protobuf import message as _message

from django_grpc_bus.client import exceptions, filters
from django_grpc_bus.client.base import Lookup, MethodCalls
from django_grpc_bus.client.channels import open_channel
from django_grpc_bus.client.config import ServletConfig, servlet_names
from django_grpc_bus.client.discovery import Catalog, ReflectionError, fetch_catalog
from django_grpc_bus.client.watch import Reconnect, Watch, WatchState, is_watch
from django_grpc_bus.conversion.messages import (
    ConversionError,
    dict_reader,
    fill_message,
    message_to_dict,
    repeated,
)
from django_grpc_bus.identifiers import snake_case

NO_DEADLINE = math.inf  # timeout=NO_DEADLINE: a call with no deadline at all
MAX_IDLE_RESUMES = 3  # a List cut this many times in a row with no new batch: give up
UNREACHABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
# How a TLS server's port ends a plaintext connection: it hangs up during the handshake.
HANG_UPS = ("Socket closed", "Connection reset", "Broken pipe")


def tls_hint(config: ServletConfig, exc: grpc.RpcError) -> str:
    """A hint to add when a plaintext channel's failure looks like a TLS server hanging up."""
    details = exc.details() or ""
    if (
        config.tls
        or exc.code() != grpc.StatusCode.UNAVAILABLE
        or not any(text in details for text in HANG_UPS)
    ):
        return ""
    if config.name in servlet_names():
        return f" (the server may require TLS: set MESSAGE_BUS['SERVLETS'][{config.name!r}]['tls'])"
    return " (the server may require TLS: add it to MESSAGE_BUS['SERVLETS'] with 'tls')"


def load_catalog(config: ServletConfig) -> Catalog:
    """Reflection over a short-lived channel; errors name the servlet and its address."""
    channel = open_channel(config)
    try:
        return fetch_catalog(channel, timeout=config.timeout, metadata=config.metadata or None)
    except grpc.RpcError as exc:
        where = f"servlet {config.name!r} at {config.address}"
        if exc.code() in UNREACHABLE:
            raise exceptions.ServletUnavailable(
                exc,
                config.name,
                "reflection",
                details=f"{where} is unreachable ({exc.code().name}): {exc.details()}"
                + tls_hint(config, exc),
            ) from None
        raise exceptions.CallError(
            exc,
            config.name,
            "reflection",
            details=f"{where} refused reflection ({exc.code().name}): {exc.details()}",
        ) from None
    except ReflectionError as exc:
        raise exceptions.ClientError(f"servlet {config.name!r}: {exc}") from None
    finally:
        channel.close()


class Servlet(Lookup):
    """A server named in ``MESSAGE_BUS['SERVLETS']``: ``servlet.Book``, ``servlet['lib.Book']``."""

    def __init__(self, config: ServletConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._catalog: Catalog | None = None
        self._channel: grpc.Channel | None = None
        self._services: dict[str, Service] = {}

    @property
    def name(self) -> str:
        return self.config.name

    def __repr__(self) -> str:
        return f"<Servlet {self.name} at {self.config.address}>"

    @property
    def catalog(self) -> Catalog:
        catalog = self._catalog
        if catalog is None:
            with self._lock:
                if self._catalog is None:
                    catalog = load_catalog(self.config)
                    self._channel = open_channel(self.config, catalog.services)
                    self._catalog = catalog
                catalog = self._catalog
        return catalog

    @property
    def cached_catalog(self) -> Catalog | None:
        """The catalog when it has been fetched, else None; never connects."""
        return self._catalog

    @property
    def channel(self) -> grpc.Channel:
        self.catalog  # noqa: B018  (the channel is opened with the catalog)
        assert self._channel is not None
        return self._channel

    @property
    def services(self) -> list[str]:
        """Full names of the services the server offers."""
        return sorted(self.catalog.services)

    def refresh(self) -> None:
        """Forget the catalog and the channel; the next use fetches them again."""
        with self._lock:
            channel, self._channel = self._channel, None
            self._catalog = None
            self._services = {}
        if channel is not None:
            channel.close()

    close = refresh

    def resolve(self, name: str) -> str:
        """The full name of service `name` (short when unique, or full)."""
        catalog = self.catalog
        if name in catalog.services:
            return name
        full_names = catalog.by_short_name.get(name, [])
        if len(full_names) == 1:
            return full_names[0]
        if full_names:
            raise exceptions.AmbiguousService(name, full_names, self.name)
        raise exceptions.UnknownService("service", name, self._names(), f"servlet {self.name!r}")

    def service(self, name: str) -> Service:
        full_name = self.resolve(name)
        found = self._services.get(full_name)
        if found is None:
            found = self._services[full_name] = Service(self, self.catalog.services[full_name])
        return found

    def _lookup(self, name: str) -> Service:
        return self.service(name)

    def _names(self) -> list[str]:
        catalog = self.catalog
        short = [n for n, full in catalog.by_short_name.items() if len(full) == 1]
        return sorted({*short, *catalog.services})


class Service(Lookup):
    """One service of a servlet; its methods in snake_case or as the proto names them."""

    def __init__(self, servlet: Servlet, service: descriptor.ServiceDescriptor) -> None:
        self.servlet = servlet
        self.descriptor = service
        self.full_name = service.full_name
        self._methods: dict[str, Method] = {}
        for method in service.methods:
            proxy = (WatchMethod if is_watch(method) else Method)(servlet, service, method)
            self._methods[method.name] = proxy
            self._methods[snake_case(method.name)] = proxy

    def __repr__(self) -> str:
        return f"<Service {self.full_name} on {self.servlet.name}>"

    @property
    def methods(self) -> list[str]:
        return [snake_case(method.name) for method in self.descriptor.methods]

    def method(self, name: str) -> Method:
        found = self._methods.get(name)
        if found is None:
            raise exceptions.UnknownMethod(
                "method",
                name,
                self.methods,
                f"{self.full_name} (servlet {self.servlet.name!r})",
                servlet=self.servlet.name,
            )
        return found

    def _lookup(self, name: str) -> Method:
        return self.method(name)

    def _names(self) -> list[str]:
        return self.methods


class RPC:
    """One RPC of a servlet, from its descriptors: its messages, call options and errors.

    No I/O here: ``Method`` calls it on the servlet's channel, the asyncio client on its event
    loop's (``multicallable_on``), and both convert requests, results and errors the same way.
    """

    def __init__(
        self,
        servlet: Servlet,
        service: descriptor.ServiceDescriptor,
        method: descriptor.MethodDescriptor,
    ) -> None:
        self.servlet = servlet
        self.descriptor = method
        self.path = f"/{service.full_name}/{method.name}"
        self.name = f"{service.full_name}.{method.name}"
        self.request_class = message_factory.GetMessageClass(method.input_type)
        self.response_class = message_factory.GetMessageClass(method.output_type)
        self.client_streaming = method.client_streaming
        self.server_streaming = method.server_streaming
        # A generated Watch: calls follow its events across reconnects (client/watch.py).
        self.watches = is_watch(method)
        results = method.output_type.fields_by_name.get("results")
        # A generated List streams batches in `results`; the client flattens them into rows.
        self.flattens = bool(
            self.server_streaming
            and results is not None
            and repeated(results)
            and results.message_type is not None
        )
        # A generated List's rows are resumed after a cut (UNAVAILABLE), by page token.
        self.resumes = bool(
            self.flattens
            and not self.client_streaming
            and "page_token" in method.input_type.fields_by_name
        )
        # A generated List or Count request's `filter` takes Django's spelling too.
        self.filter_message = filters.filter_message(method.input_type)
        self.row_fields = filters.row_fields(service, method.input_type)
        # A generated Count answers {count: n}; the client returns n.
        self.unwraps = (
            "count"
            if method.name == "Count"
            and not (self.client_streaming or self.server_streaming)
            and [field.name for field in method.output_type.fields] == ["count"]
            and self.row_fields
            else None
        )

    def __repr__(self) -> str:
        return f"<Method {self.path} on {self.servlet.name}>"

    # -- requests ----------------------------------------------------------------------------

    def build_request(self, request: Any = None) -> Any:
        """The request message for a dict (or a message of the same type); fails before sending."""
        if isinstance(request, _message.Message):
            if request.DESCRIPTOR.full_name != self.request_class.DESCRIPTOR.full_name:
                raise exceptions.RequestError(
                    f"{self.name} takes {self.request_class.DESCRIPTOR.full_name}, "
                    f"not {request.DESCRIPTOR.full_name}."
                )
            return self.request_class.FromString(request.SerializeToString())
        message = self.request_class()
        if request is None:
            return message
        if self.filter_message is not None and isinstance(request, Mapping):
            given = request.get("filter")
            if isinstance(given, Mapping):
                request = {
                    **request,
                    "filter": filters.proto_keys(
                        self.filter_message, given, self.name, self.row_fields
                    ),
                }
        try:
            return fill_message(message, request)
        except ConversionError as exc:
            fields = ", ".join(f.name for f in self.request_class.DESCRIPTOR.fields) or "(none)"
            raise exceptions.RequestError(
                f"{self.name}: {exc}"
                + ("" if "its fields:" in str(exc) else f" (fields: {fields})")
            ) from None

    def request_messages(self, request_dict: Any) -> Any:
        """The request, or for a client-streaming RPC an iterator of requests, as messages."""
        if self.client_streaming:
            return ClientStream(self, _as_iterable(request_dict, self.name))
        return self.build_request(request_dict)

    # -- results -----------------------------------------------------------------------------

    def convert(self, response: Any) -> Any:
        """A unary response as a dict; a generated Count's as the number."""
        if self.unwraps:
            return getattr(response, self.unwraps)
        return message_to_dict(response)

    def results(self, response: Any, flatten: bool | None = None) -> list[dict[str, Any]]:
        """One stream message as dicts: its rows for a generated List, else itself."""
        if self.flattens if flatten is None else flatten:
            rows = response.results
            if not rows:
                return []
            read = dict_reader(rows[0].DESCRIPTOR)  # one type: its compiled reader, looked up once
            return [read(row) for row in rows]
        return [self.convert(response)]

    def resume_request(
        self, exc: grpc.RpcError, request: Any, token: str, rows: int
    ) -> tuple[Any, int] | None:
        """How to go on with a List cut by `exc` after `rows` rows (the last batch's token
        `token`): the request to send again and how many of its rows were already yielded;
        None when it cannot be resumed (not a List's rows, not UNAVAILABLE, no token yet)."""
        if not self.resumes or exc.code() != grpc.StatusCode.UNAVAILABLE:
            return None
        if getattr(request, "page_size", 0):
            # A page's batches carry no token: ask for the page again, skip what was yielded.
            return request, rows
        if not token:
            return None  # cut before its first batch ended: gRPC's retry policy's part
        resumed = self.request_class()
        resumed.CopyFrom(request)
        resumed.page_token = token  # type: ignore[attr-defined]  # a List request
        return resumed, 0

    # -- calling -----------------------------------------------------------------------------

    def multicallable_on(self, channel: Any) -> Any:
        """This RPC's multicallable on `channel` (sync or ``grpc.aio``)."""
        kind = ("stream_" if self.client_streaming else "unary_") + (
            "stream" if self.server_streaming else "unary"
        )
        return getattr(channel, kind)(
            self.path,
            request_serializer=self.request_class.SerializeToString,
            response_deserializer=self.response_class.FromString,
        )

    def call_options(self, timeout: Any, metadata: Any) -> dict[str, Any]:
        config = self.servlet.config
        merged = list(config.metadata)
        if metadata:
            items = metadata.items() if hasattr(metadata, "items") else metadata
            merged += [(str(key).lower(), value) for key, value in items]
        return {
            # None (the default) is the servlet's deadline; infinity is none at all.
            "timeout": config.timeout
            if timeout is None
            else None
            if timeout == math.inf
            else timeout,
            "metadata": merged or None,
        }

    def error(self, exc: grpc.RpcError, requests: Any = None) -> exceptions.ClientError:
        """The exception for a failed call; for a client stream that a request of ours ended
        (one that cannot become a message), that request's :class:`RequestError`."""
        built = getattr(requests, "error", None)
        if built is not None:
            return built
        # Only UNAVAILABLE means "not reached": past a deadline, a slow server may have acted.
        if exc.code() == grpc.StatusCode.UNAVAILABLE:
            config = self.servlet.config
            return exceptions.ServletUnavailable(
                exc,
                config.name,
                self.name,
                details=f"servlet {config.name!r} at {config.address}: {exc.details()}"
                + tls_hint(config, exc),
            )
        return exceptions.CallError(exc, self.servlet.name, self.name)


class Method(RPC, MethodCalls):
    """One RPC, called on the servlet's channel: a dict back, or a generator of them."""

    def __init__(
        self,
        servlet: Servlet,
        service: descriptor.ServiceDescriptor,
        method: descriptor.MethodDescriptor,
    ) -> None:
        super().__init__(servlet, service, method)
        self._multicallable: tuple[grpc.Channel, Any] | None = None

    def _callable(self) -> Any:
        channel = self.servlet.channel
        cached = self._multicallable
        if cached is not None and cached[0] is channel:
            return cached[1]
        multicallable = self.multicallable_on(channel)
        self._multicallable = (channel, multicallable)
        return multicallable

    def _send(self, request: Any, timeout: Any, metadata: Any, flatten: bool | None) -> Any:
        message = self.request_messages(request)
        options = self.call_options(timeout, metadata)
        multicallable = self._callable()
        if self.server_streaming or flatten is False:
            return self._stream(multicallable, message, options, flatten)
        try:
            return self.convert(multicallable(message, **options))
        except grpc.RpcError as exc:
            raise self.error(exc, message) from None

    def _stream(
        self, multicallable: Any, message: Any, options: dict[str, Any], flatten: bool | None
    ) -> Iterator[Any]:
        """The stream's rows (or messages); a List cut by UNAVAILABLE goes on where it was cut."""
        resumes = self.resumes and flatten is None
        call = multicallable(message, **options)
        token, rows, skip, idle_cuts = "", 0, 0, 0
        try:
            while True:
                try:
                    for response in call:
                        idle_cuts = 0
                        for row in self.results(response, flatten):
                            if skip:
                                skip -= 1
                                continue
                            rows += 1
                            yield row
                        if resumes:
                            token = response.next_page_token
                    return
                except grpc.RpcError as exc:
                    resumed = self.resume_request(exc, message, token, rows) if resumes else None
                    idle_cuts += 1
                    if resumed is None or idle_cuts > MAX_IDLE_RESUMES:
                        raise self.error(exc, message) from None
                    message, skip = resumed
                    call = multicallable(message, **options)
        finally:
            call.cancel()  # closed or abandoned early: stop the server's work


class WatchMethod(Method):
    """A generated Watch: a generator of events that calls again on UNAVAILABLE (watch.py)."""

    def __call__(
        self,
        request_dict: Any = None,
        *,
        timeout: float | None = None,
        metadata: Any = None,
        reconnect: Reconnect | None = None,
    ) -> Watch:
        """Events from ``since`` (or now) on; `timeout` None is no deadline (a watch is endless).

        `reconnect` overrides ``MESSAGE_BUS['WATCH_RECONNECT']`` for this watch.
        """
        state = WatchState(self, request_dict, reconnect)  # a bad request raises now
        options = self.call_options(NO_DEADLINE if timeout is None else timeout, metadata)
        return Watch(state, self._callable, options)


class ClientStream:
    """A client stream's requests, each made a message as grpc reads it (lazily, so a
    generator is sent as it yields). A request that cannot be made one ends the call (grpc
    cancels it) and is kept in `error`, which the caller gets instead of grpc's status."""

    def __init__(self, rpc: RPC, requests: Iterable[Any]) -> None:
        self._rpc = rpc
        self._requests = iter(requests)
        self._index = -1
        self.error: exceptions.RequestError | None = None

    def __iter__(self) -> ClientStream:
        return self

    def __next__(self) -> Any:
        request = next(self._requests)
        self._index += 1
        try:
            return self._rpc.build_request(request)
        except exceptions.RequestError as exc:
            self.error = stream_request_error(exc, self._index)
            raise self.error from None


def stream_request_error(exc: exceptions.RequestError, index: int) -> exceptions.RequestError:
    return exceptions.RequestError(f"request [{index}] of the stream: {exc}")


def _as_iterable(request: Any, name: str) -> Iterable[Any]:
    if request is None or isinstance(request, (dict, str, bytes, _message.Message)):
        raise exceptions.RequestError(f"{name} is client-streaming: pass an iterable of requests.")
    return request
