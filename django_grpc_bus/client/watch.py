"""A generated ``Watch`` RPC as an endless stream of event dicts that survives a server restart.

    for event in registry.inventory.Book.watch({"filter": {"price__lt": 10}, "snapshot": True}):
        print(event["type"], event["data"], event["cursor"])

Each event is the ``<Model>Event`` message as a dict, converted as the registry converts every
message (``type`` its name, ``data`` a dict, ``changed`` a list of field names, ``time`` an aware
datetime, ``cursor`` and ``id`` strings). When the call fails UNAVAILABLE (the server restarted,
the network dropped) or the server ends the stream, the watch calls again after a delay
(``Reconnect``: exponential backoff with jitter, ``MESSAGE_BUS['WATCH_RECONNECT']``) with
``since`` = the cursor of the last event it yielded, so nothing is lost; an event may come twice
(delivery is at least once: de-duplicate by ``id`` where it matters). A snapshot interrupted
before its ``SNAPSHOT_COMPLETE`` is asked for again from the start. Any other status (an
OUT_OF_RANGE cursor past retention, INVALID_ARGUMENT, PERMISSION_DENIED...) raises the
registry's ``CallError``. Closing the generator (``break``, ``close()``) cancels the call.
A ``timeout`` is the whole watch's deadline, reconnects and their waits included: each call is
given what is left of it, and the watch ends with DEADLINE_EXCEEDED when none is.

``Watch`` is the synchronous iterator, ``afollow`` the asyncio generator; ``WatchState`` (the
request to send next and the resume cursor) and ``Reconnect`` are what they share.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import AsyncGenerator, Callable, Generator, Iterator, Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import descriptor

from django_grpc_bus.client.exceptions import CallError, ClientError, RequestError
from django_grpc_bus.conf import bus_settings
from django_grpc_bus.conversion.messages import message_to_dict

if TYPE_CHECKING:
    from django_grpc_bus.client.servlet import RPC

logger = logging.getLogger("django_grpc_bus.client.watch")

SNAPSHOT_COMPLETE = "SNAPSHOT_COMPLETE"
BOOKMARK = "BOOKMARK"
SETTING = "MESSAGE_BUS['WATCH_RECONNECT']"


def is_watch(method: descriptor.MethodDescriptor) -> bool:
    """Whether `method` is a generated Watch: a server stream of events with resume cursors."""
    request, event = method.input_type.fields_by_name, method.output_type.fields_by_name
    return (
        method.name == "Watch"
        and method.server_streaming
        and not method.client_streaming
        and "since" in request
        and "cursor" in event
        and "type" in event
    )


@dataclass(frozen=True)
class Reconnect:
    """When a watch calls again after UNAVAILABLE: exponential backoff with jitter.

    The n-th consecutive failure waits ``min(maximum, initial * multiplier ** (n - 1))``
    scaled by a random factor from ``1 - jitter`` to 1 (so many consumers of one restarted
    server do not all call at once). ``attempts`` consecutive failures end the watch with the
    last error; None retries for ever. An event received resets the count.
    """

    initial: float = 0.1
    maximum: float = 10.0
    multiplier: float = 2.0
    jitter: float = 0.5
    attempts: int | None = None

    def __post_init__(self) -> None:
        problem = reconnect_problem(
            {field.name: getattr(self, field.name) for field in fields(self)}
        )
        if problem:
            raise ClientError(f"Reconnect: {problem}")

    def delay(self, failures: int) -> float:
        """Seconds to wait after the `failures`-th consecutive failure (1 for the first)."""
        exponent = max(failures - 1, 0)
        # min() before the power's growth can overflow a float after many failures.
        base = min(self.maximum, self.initial * self.multiplier ** min(exponent, 64))
        return base * (1 - self.jitter * random.random())

    def gives_up(self, failures: int) -> bool:
        return self.attempts is not None and failures > self.attempts

    @classmethod
    def from_settings(cls) -> Reconnect:
        """``MESSAGE_BUS['WATCH_RECONNECT']`` (a dict of these fields) over the defaults."""
        value = bus_settings.WATCH_RECONNECT
        value = {} if value is None else value
        problem = reconnect_problem(value)
        if problem:
            raise ClientError(f"{SETTING}: {problem}")
        return cls(**value)


def reconnect_problem(value: Any) -> str | None:
    """What is wrong with a ``WATCH_RECONNECT`` dict, or None (``manage.py check`` uses it)."""
    if not isinstance(value, Mapping):
        return f"must be a dict, not {type(value).__name__}."
    known = {field.name for field in fields(Reconnect)}
    unknown = sorted(set(value) - known, key=str)
    if unknown:
        return f"{unknown[0]!r} is not one of its keys ({', '.join(sorted(known))})."
    for key in ("initial", "maximum", "multiplier", "jitter"):
        number = value.get(key, 0 if key != "multiplier" else 1)
        if isinstance(number, bool) or not isinstance(number, (int, float)) or number < 0:
            return f"{key!r} must be a number of at least 0, not {number!r}."
    if value.get("multiplier", 1) < 1:
        return f"'multiplier' must be at least 1, not {value['multiplier']!r}."
    if value.get("jitter", 0) > 1:
        return f"'jitter' must be from 0 to 1, not {value['jitter']!r}."
    attempts = value.get("attempts")
    if attempts is not None and (
        isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 0
    ):
        return f"'attempts' must be a whole number of at least 0, or None, not {attempts!r}."
    return None


class WatchState:
    """The request a watch sends next, kept up to date with the events it yields."""

    def __init__(self, rpc: RPC, request: Any, reconnect: Reconnect | None = None) -> None:
        self.rpc = rpc
        self.reconnect = reconnect if reconnect is not None else Reconnect.from_settings()
        self.original = rpc.build_request(request)  # a bad request fails before any call
        if not isinstance(self.original.since, str):
            raise RequestError(f"{rpc.name}: 'since' must be a cursor string.")
        self.cursor: str = self.original.since
        self.in_snapshot = bool(getattr(self.original, "snapshot", False))
        self.failures = 0
        self.started = False
        self.timeout: float | None = None  # the whole watch's, from its first call
        self.deadline: float | None = None  # time.monotonic() of that
        # Called with a BOOKMARK's cursor once it is the resume point (a durable consumer
        # stores it: a restart before the first event then resumes from there).
        self.on_bookmark: Callable[[str], None] | None = None

    def call_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """`options` for the next call: its timeout is what is left of the watch's, whose
        clock starts at the first call. DEADLINE_EXCEEDED (the registry's CallError) when
        nothing is left."""
        if not self.started:
            self.started = True
            self.timeout = options.get("timeout")
            if self.timeout is not None:
                self.deadline = time.monotonic() + self.timeout
        left = self.time_left()
        if left is None:
            return options
        if left <= 0:
            raise CallError(
                None,
                self.rpc.servlet.name,
                self.rpc.name,
                code=grpc.StatusCode.DEADLINE_EXCEEDED,
                details=f"Deadline Exceeded: the watch's timeout ({self.timeout:g} s) has "
                "passed, reconnects included",
            )
        return {**options, "timeout": left}

    def time_left(self) -> float | None:
        """Seconds before the watch's deadline, or None when it has none."""
        return None if self.deadline is None else self.deadline - time.monotonic()

    def request(self) -> Any:
        """The original request, resuming from the last cursor once no snapshot is pending."""
        message: Any = self.rpc.request_class()
        message.CopyFrom(self.original)
        if not self.in_snapshot:
            message.since = self.cursor
            if "snapshot" in message.DESCRIPTOR.fields_by_name:
                message.snapshot = False
        return message  # mid-snapshot: the snapshot again, from the start

    def event(self, message: Any) -> dict[str, Any] | None:
        """`message` as the dict to yield, or None for a BOOKMARK (not yielded); its cursor
        becomes the resume point."""
        self.failures = 0
        if message.type == 5:  # BOOKMARK: only a position (sent at the start and while idle)
            if message.cursor and not self.in_snapshot:
                self.cursor = message.cursor
                if self.on_bookmark is not None:
                    self.on_bookmark(message.cursor)
            return None
        event = message_to_dict(message)
        if event.get("type") == SNAPSHOT_COMPLETE:
            self.in_snapshot = False
        if message.cursor and not self.in_snapshot:
            self.cursor = message.cursor
        return event

    def retry_delay(self, exc: grpc.RpcError | None) -> float | None:
        """Seconds to wait before calling again, or None to end the watch; raises the registry's
        error when the status is not UNAVAILABLE or the attempts are spent. `exc` None: the
        server ended the stream itself."""
        if exc is not None and exc.code() != grpc.StatusCode.UNAVAILABLE:
            raise self.rpc.error(exc) from None
        self.failures += 1
        reconnect = self.reconnect
        if reconnect.gives_up(self.failures):
            if exc is not None:
                raise self.rpc.error(exc) from None
            return None  # the server ended the stream and no retry is left
        delay = reconnect.delay(self.failures)
        left = self.time_left()
        if left is not None:
            delay = max(min(delay, left), 0.0)  # the next call then finds no time left
        logger.warning(
            "Watch %s on servlet %r: %s; calling again in %.2f s from cursor %r",
            self.rpc.name,
            self.rpc.servlet.name,
            "the server ended the stream" if exc is None else f"{exc.code().name}: {exc.details()}",
            delay,
            self.cursor,
        )
        return delay


class Watch(Iterator[dict[str, Any]]):
    """What ``registry.s.Book.watch()`` returns: an iterator of events, like a generator.

    ``close()`` (or leaving a ``for`` loop, or the object's end) cancels the call, from the
    thread that iterates. ``stop()`` may be called from any thread (a signal handler, another
    consumer): the pending ``next()`` ends with StopIteration, as does a wait between calls.
    ``cursor`` is where a new watch would resume from: the cursor of the last event yielded, or
    of a later BOOKMARK (the server's position, sent when the watch starts and while it idles;
    bookmarks are not yielded).
    """

    def __init__(
        self, state: WatchState, multicallable: Callable[[], Any], options: dict[str, Any]
    ) -> None:
        self.state = state
        self._multicallable = multicallable
        self._options = options
        self._stopped = threading.Event()
        self._call: Any = None
        self._events: Generator[dict[str, Any], None, None] = self._follow()

    @property
    def cursor(self) -> str:
        return self.state.cursor

    @property
    def on_bookmark(self) -> Callable[[str], None] | None:
        """A function called (on the iterating thread) with each BOOKMARK's cursor."""
        return self.state.on_bookmark

    @on_bookmark.setter
    def on_bookmark(self, function: Callable[[str], None] | None) -> None:
        self.state.on_bookmark = function

    def __next__(self) -> dict[str, Any]:
        return next(self._events)

    def close(self) -> None:
        self._events.close()

    def stop(self) -> None:
        self._stopped.set()
        call = self._call
        if call is not None:
            call.cancel()

    def _follow(self) -> Generator[dict[str, Any], None, None]:
        state = self.state
        while not self._stopped.is_set():
            options = state.call_options(self._options)
            call = self._call = self._multicallable()(state.request(), **options)
            if self._stopped.is_set():  # stop() ran before the call was there to cancel
                call.cancel()
            failure: grpc.RpcError | None = None
            try:
                for message in call:
                    event = state.event(message)
                    if event is not None:
                        yield event
            except grpc.RpcError as exc:
                failure = exc
            finally:
                call.cancel()  # closed or abandoned early: stop the server's work
            if self._stopped.is_set():
                return
            delay = state.retry_delay(failure)
            if delay is None or self._stopped.wait(delay):
                return


async def afollow(
    state: WatchState, multicallable: Callable[[], Any], options: dict[str, Any]
) -> AsyncGenerator[dict[str, Any], None]:
    """``Watch`` for ``grpc.aio``: an async generator; closing it cancels the call."""
    while True:
        call = multicallable()(state.request(), **state.call_options(options))
        failure: grpc.RpcError | None = None
        try:
            async for message in call:
                event = state.event(message)
                if event is not None:
                    yield event
        except grpc.RpcError as exc:
            failure = exc
        finally:
            call.cancel()
        delay = state.retry_delay(failure)
        if delay is None:
            return
        await asyncio.sleep(delay)
