"""A small in-process Watch server built from the Watch contract's messages (SPEC §11).

It stands in for a producer so the client's reconnect and resume logic can be proven on its
own: ``FakeWatchServer`` serves ``fakebus.Book/Watch`` with reflection on a fixed
port, can be stopped and started again on that port (the event log survives), and records the
``since`` and ``snapshot`` of every call it receives. Cursors are the log positions as strings.
"""

from __future__ import annotations

import importlib
import sys
import threading
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from grpc_reflection.v1alpha import reflection
from support import compile_proto_text

PROTO_FILE = "fakebus/book.proto"
PROTO = """
syntax = "proto3";

package fakebus;

import "google/protobuf/field_mask.proto";
import "google/protobuf/timestamp.proto";

message BookData {
  int64 id = 1;
  string title = 2;
}

message BookFilter {
  string title = 1;
}

message BookWatchRequest {
  BookFilter filter = 1;
  string since = 2;
  bool snapshot = 3;
}

message BookEvent {
  enum Type {
    TYPE_UNSPECIFIED = 0;
    CREATED = 1;
    UPDATED = 2;
    DELETED = 3;
    SNAPSHOT_COMPLETE = 4;
    BOOKMARK = 5;
  }
  Type type = 1;
  BookData data = 2;
  google.protobuf.FieldMask changed = 3;
  string cursor = 4;
  google.protobuf.Timestamp time = 5;
  string id = 6;
}

service Book {
  rpc Watch(BookWatchRequest) returns (stream BookEvent);
}

// A model served without Watch.
service Author {
  rpc Retrieve(BookData) returns (BookData);
}
"""


def compile_proto(folder: Path) -> Any:
    """Compile ``PROTO`` into `folder` (on sys.path) and import its modules; (pb2, pb2_grpc)."""
    compile_proto_text(folder, PROTO_FILE, PROTO)
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    return (
        importlib.import_module("fakebus.book_pb2"),
        importlib.import_module("fakebus.book_pb2_grpc"),
    )


class FakeWatchServer:
    """Serves Watch over an in-memory log of events; ``stop()`` and ``start()`` keep the log."""

    def __init__(self, pb2: Any, pb2_grpc: Any, port: int) -> None:
        self.pb2, self.pb2_grpc, self.port = pb2, pb2_grpc, port
        self.log: list[Any] = []  # BookEvent messages; the cursor of log[i] is str(i + 1)
        self.rows: dict[int, str] = {}  # the current rows, for snapshots
        self.pruned = 0  # cursors below this are past retention
        self.bookmarks = False  # a BOOKMARK (the start position) first, as the real server
        self.unavailable = False  # every Watch ends UNAVAILABLE (its NATS down, say)
        self.calls: list[tuple[str, bool]] = []  # (since, snapshot) of every call
        self.open_calls = 0  # Watch calls whose servicer has not returned yet
        self.condition = threading.Condition()
        self.server: grpc.Server | None = None
        self.stopping = threading.Event()

    # -- the producer's side: changes ------------------------------------------------------------

    def change(self, kind: str, book_id: int, title: str = "") -> str:
        """Record a change; its cursor."""
        with self.condition:
            if kind == "DELETED":
                self.rows.pop(book_id, None)
            else:
                self.rows[book_id] = title
            cursor = str(len(self.log) + 1)
            event = self.pb2.BookEvent(
                type=kind, data={"id": book_id, "title": title}, cursor=cursor, id=f"e{cursor}"
            )
            event.time.GetCurrentTime()
            if kind == "UPDATED":
                event.changed.paths.append("title")
            self.log.append(event)
            self.condition.notify_all()
            return cursor

    # -- serving ---------------------------------------------------------------------------------

    def start(self) -> FakeWatchServer:
        self.stopping.clear()
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        self.pb2_grpc.add_BookServicer_to_server(Servicer(self), server)
        reflection.enable_server_reflection(
            ("fakebus.Book", "fakebus.Author", reflection.SERVICE_NAME), server
        )
        assert server.add_insecure_port(f"127.0.0.1:{self.port}") == self.port
        server.start()
        self.server = server
        return self

    def stop(self) -> None:
        """Stop at once: open Watch calls end (the client sees UNAVAILABLE)."""
        self.stopping.set()
        with self.condition:
            self.condition.notify_all()
        if self.server is not None:
            self.server.stop(0).wait(5)
            self.server = None


class Servicer:
    """``Watch``: `since` (a log position) or now; a snapshot of the rows first when asked."""

    def __init__(self, fake: FakeWatchServer) -> None:
        self.fake = fake

    def Watch(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self.fake.condition:
            self.fake.open_calls += 1
        try:
            yield from self.events(request, context)
        finally:
            with self.fake.condition:
                self.fake.open_calls -= 1

    def events(self, request: Any, context: grpc.ServicerContext) -> Any:
        fake, pb2 = self.fake, self.fake.pb2
        fake.calls.append((request.since, request.snapshot))
        if fake.unavailable:
            context.abort(grpc.StatusCode.UNAVAILABLE, "the fake's backend is unreachable")
        with fake.condition:
            if request.since and not request.since.isdigit():
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"since: {request.since!r}")
            position = int(request.since) if request.since else len(fake.log)
            if position < fake.pruned:
                context.abort(grpc.StatusCode.OUT_OF_RANGE, "since: past WATCH_RETENTION")
            snapshot = sorted(fake.rows.items()) if request.snapshot else []
            if request.snapshot:
                position = len(fake.log)
        wanted = request.filter.title
        for book_id, title in snapshot:
            if not wanted or title == wanted:
                yield pb2.BookEvent(
                    type="CREATED", data={"id": book_id, "title": title}, cursor=str(position)
                )
        if request.snapshot:
            yield pb2.BookEvent(type="SNAPSHOT_COMPLETE", cursor=str(position))
        elif fake.bookmarks and not request.since:
            yield pb2.BookEvent(type="BOOKMARK", cursor=str(position))
        while context.is_active() and not fake.stopping.is_set():
            with fake.condition:
                if position >= len(fake.log):
                    fake.condition.wait(0.1)
                    continue
                event = fake.log[position]
            position += 1
            if not wanted or event.data.title == wanted:
                yield event
