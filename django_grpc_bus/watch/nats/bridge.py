"""One NATS connection per process, on an event loop thread of its own.

nats-py is asyncio; the threaded server's calls and the relay are not on a loop, and the asyncio
server's loop should not carry the connection's own work. So the connection lives on one daemon
thread's loop, and everything else hands it coroutines: :meth:`Bridge.call` waits for the result
(threads), :meth:`Bridge.acall` awaits it (another loop). nats-py reconnects by itself; a call
made while NATS is unreachable fails with :class:`NatsUnavailable`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
import logging
import threading
import weakref
from collections.abc import Coroutine
from typing import Any, TypeVar

from django_grpc_bus.watch.nats.backend import NatsConfig

logger = logging.getLogger("django_grpc_bus.watch")

T = TypeVar("T")
CONNECT_TIMEOUT = 2  # seconds, per server
RECONNECT_WAIT: Any = 0.5  # seconds (nats-py's annotation says int; it takes a float)
STREAM_DUPLICATE_WINDOW = 120.0  # seconds: JetStream's default


class NatsUnavailable(Exception):
    """NATS could not be reached (or answered with an error) in time."""


class StreamConflict(NatsUnavailable):
    """The stream named in ``WATCH_BACKEND`` exists with other subjects."""


class Bridge:
    def __init__(self, config: NatsConfig) -> None:
        self.config = config
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="grpc-bus-nats", daemon=True
        )
        self._thread.start()
        self._nc: Any = None
        self._js: Any = None
        self._connecting: asyncio.Lock | None = None
        self._stream_ready = False
        # Counts reconnections: a Watch call's consumer (in memory on the server that was
        # left) is opened again at once, rather than when its heartbeats are found missing.
        self.generation = 0
        self._on_reconnect: weakref.WeakSet[Any] = weakref.WeakSet()
        # Which making of the stream (from its creation time; 0 if not known): a cursor of a
        # stream deleted and made again since is not resumed in the new one.
        self.stream_epoch = 0

    def on_reconnect(self, listener: Any) -> None:
        """Call ``listener.reconnected()`` (from the bridge's loop) after each reconnection."""
        self._on_reconnect.add(listener)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        """Run `coroutine` on the bridge's loop and wait for its result (from a thread)."""
        future = self.submit(coroutine)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise NatsUnavailable(f"NATS did not answer within {timeout:g} s") from None

    async def acall(self, coroutine: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        """Run `coroutine` on the bridge's loop, awaited from another loop."""
        future = self.submit(coroutine)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout)
        except asyncio.TimeoutError:
            raise NatsUnavailable(f"NATS did not answer within {timeout:g} s") from None

    # -- on the bridge's loop -------------------------------------------------------------------

    def _ready(self) -> bool:
        return self._js is not None and self._nc.is_connected and self._stream_ready

    def max_payload(self) -> int:
        """The largest message (headers and body) the connected NATS server takes."""
        return int(self._nc.max_payload) if self._nc is not None else 1024 * 1024

    def stream_lost(self) -> None:
        """The stream is gone (NATS said so): make it again before the next use."""
        self._stream_ready = False

    async def jetstream(self) -> Any:
        """The JetStream context, connecting (and creating the stream) the first time, and
        again after a reconnection or the stream's loss."""
        if self._ready():
            return self._js
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._ready():
                return self._js
            if self._nc is None or self._nc.is_closed:
                self._nc = await self._connect()
                self._js = self._nc.jetstream()
            elif not self._nc.is_connected:
                raise NatsUnavailable(
                    f"NATS at {', '.join(self.config.servers)} is unreachable (reconnecting)"
                )
            if not self._stream_ready:
                await self._ensure_stream()
                self._stream_ready = True
            return self._js

    async def _connect(self) -> Any:
        from nats.aio.client import Client

        async def disconnected() -> None:
            logger.warning("Watch: NATS disconnected; reconnecting")

        async def reconnected() -> None:
            logger.info("Watch: NATS reconnected")
            self._stream_ready = False  # a server without its store lost the stream
            self.generation += 1
            for listener in list(self._on_reconnect):
                listener.reconnected()

        async def error(exc: Exception) -> None:
            logger.debug("Watch: NATS error: %s", exc)

        client = Client()
        # Reconnecting for ever once connected; the first connection is given a bounded time
        # (nats-py would otherwise try the servers for ever).
        first = CONNECT_TIMEOUT * len(self.config.servers) + 1.0
        try:
            await asyncio.wait_for(
                client.connect(
                    servers=list(self.config.servers),
                    connect_timeout=CONNECT_TIMEOUT,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=RECONNECT_WAIT,
                    disconnected_cb=disconnected,
                    reconnected_cb=reconnected,
                    error_cb=error,
                    name="django-grpc-bus",
                ),
                first,
            )
        except Exception as exc:
            try:
                await client.close()
            except Exception:  # half made: nothing more to close
                pass
            servers = ", ".join(self.config.servers)
            reason = (
                f"no answer within {first:g} s"
                if isinstance(exc, asyncio.TimeoutError)
                else str(exc) or type(exc).__name__
            )
            raise NatsUnavailable(
                f"NATS at {servers} (WATCH_BACKEND) is unreachable: {reason}"
            ) from None
        return client

    async def _ensure_stream(self) -> None:
        """Create the stream (or bring its subjects and age limit to the settings')."""
        from nats.js.api import StreamConfig
        from nats.js.errors import BadRequestError, NotFoundError

        from django_grpc_bus.watch.settings import retention

        max_age = retention().total_seconds()
        wanted = StreamConfig(
            name=self.config.stream,
            subjects=[self.config.subjects],
            max_age=max_age,
            # JetStream refuses a duplicate window longer than the stream's max_age.
            duplicate_window=min(STREAM_DUPLICATE_WINDOW, max_age),
        )
        try:
            info = await self._js.stream_info(self.config.stream)
        except NotFoundError:
            try:
                info = await self._js.add_stream(wanted)
                logger.info(
                    "Watch: made the JetStream stream %s (subjects %s)",
                    self.config.stream,
                    self.config.subjects,
                )
            except BadRequestError as exc:  # another process made it meanwhile, or a conflict
                try:
                    info = await self._js.stream_info(self.config.stream)
                except NotFoundError:
                    raise StreamConflict(
                        f"The JetStream stream {self.config.stream} cannot be made: "
                        f"{exc.description} (another stream takes the subjects "
                        f"{self.config.subjects}?). Choose "
                        "another subject_prefix in WATCH_BACKEND."
                    ) from None
            await self._made()
            return
        current = info.config
        if current.subjects != wanted.subjects:
            # Someone else's stream of that name (a typo in "stream"?): not ours to change.
            raise StreamConflict(
                f"The JetStream stream {self.config.stream} exists with subjects "
                f"{current.subjects}, not {wanted.subjects}: WATCH_BACKEND's stream is "
                "another stream's name. Choose another name (or delete that stream)."
            )
        if current.max_age != wanted.max_age:
            logger.info(
                "Watch: stream %s's max_age set to WATCH_RETENTION (%g s, was %g s)",
                self.config.stream,
                wanted.max_age,
                current.max_age or 0,
            )
            current.max_age = wanted.max_age
            current.duplicate_window = wanted.duplicate_window
            info = await self._js.update_stream(current)
        await self._made()

    async def _made(self) -> None:
        """Note when the stream was made: its ``created`` time, as the JetStream API gives it
        (read raw: nats-py before 2.9 drops it), as a number."""
        try:
            answer = await self._nc.request(
                f"$JS.API.STREAM.INFO.{self.config.stream}", b"", timeout=CONNECT_TIMEOUT
            )
            created = str(json.loads(answer.data).get("created") or "")
        except Exception:  # not known: cursors then carry 0, which is not checked
            created = ""
        digest = hashlib.sha256(created.encode()).hexdigest()[:12]
        epoch = int(digest, 16) if created else 0
        if self.stream_epoch and epoch != self.stream_epoch:
            logger.warning(
                "Watch: the JetStream stream %s was made again (deleted, or lost by a NATS "
                "server without its store); open Watch calls end, resumed ones start over",
                self.config.stream,
            )
        self.stream_epoch = epoch
        for listener in list(self._on_reconnect):
            listener.reconnected()


_bridges: dict[NatsConfig, Bridge] = {}
_lock = threading.Lock()


def bridge_for(config: NatsConfig) -> Bridge:
    """The process's bridge to the NATS servers of `config`."""
    with _lock:
        found = _bridges.get(config)
        if found is None:
            found = _bridges[config] = Bridge(config)
        return found
