"""One line per call on the ``django_grpc_bus.access`` logger, at INFO, in every mode.

The line is the method, the status the call really ended with, its duration, the peer, and the
trace id when the call has a span::

    /catalog.Book/Retrieve OK 1.3ms ipv4:127.0.0.1:53514
    /catalog.Book/Retrieve NOT_FOUND 0.9ms ipv4:127.0.0.1:53514 trace_id=4bf92f35...0e4736

The record also carries these as attributes (``grpc_method``, ``grpc_status``, ``duration_ms``,
``peer``, ``trace_id``) for a structured formatter. Whether the line goes anywhere is the
logging configuration's affair: the project's ``LOGGING`` routes it like any other logger, and
``rungrpcserver`` adds a handler printing it to stderr when nothing else is configured for it
(:func:`install_default_handler`). When the logger is not enabled for INFO, a call costs one
check.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import IO, Any

LOGGER_NAME = "django_grpc_bus.access"
logger = logging.getLogger(LOGGER_NAME)
INFO = logging.INFO
# What ``rungrpcserver`` prints: runserver's timestamp, then the line.
DEFAULT_DATE_FORMAT = "%d/%b/%Y %H:%M:%S"
FLUSH_INTERVAL = 0.1  # seconds: how long a printed line may wait in AccessLogHandler's buffer


def enabled() -> bool:
    """Whether a call's line would be handled (one cached level check)."""
    return logger.isEnabledFor(INFO)


def log_call(
    method: str, status: str, elapsed_ms: float, peer: str, trace_id: str | None = None
) -> None:
    """Write the access line of one finished call."""
    extra = {
        "grpc_method": method,
        "grpc_status": status,
        "duration_ms": round(elapsed_ms, 3),
        "peer": peer,
        "trace_id": trace_id,
    }
    if trace_id:
        logger.info(
            "%s %s %.1fms %s trace_id=%s", method, status, elapsed_ms, peer, trace_id, extra=extra
        )
    else:
        logger.info("%s %s %.1fms %s", method, status, elapsed_ms, peer, extra=extra)


def configured_elsewhere(target: logging.Logger | None = None) -> bool:
    """True when the logging configuration already decides about the access log.

    That is: the access logger has a level or handlers of its own (the project set it up, to
    route or to silence it), or it is enabled for INFO and some logger above it has a handler
    (``django_grpc_bus`` or the root routed at INFO or below).
    """
    target = target or logger
    if target.level != logging.NOTSET or target.handlers:
        return True
    return target.isEnabledFor(INFO) and target.hasHandlers()


def install_default_handler(stream: IO[str] | None = None) -> logging.Handler | None:
    """Print access lines to `stream` (stderr) unless the logging configuration handles them.

    What ``rungrpcserver`` does, as ``runserver`` logs each request. Returns the handler added,
    or None when the configuration already decides (:func:`configured_elsewhere`). The logger
    then stops propagating, so a root handler does not print each line a second time.
    """
    if configured_elsewhere():
        return None
    handler = AccessLogHandler(stream or sys.stderr)
    logger.addHandler(handler)
    logger.setLevel(INFO)
    logger.propagate = False
    return handler


def remove_default_handler(handler: Any) -> None:
    """Undo :func:`install_default_handler` (tests, and a server stopped in-process)."""
    if handler is None:
        return
    logger.removeHandler(handler)
    handler.close()
    logger.setLevel(logging.NOTSET)
    logger.propagate = True


def flush() -> None:
    """Write out what the access log's handlers hold (before a process ends with ``os._exit``)."""
    for handler in logger.handlers:
        handler.flush()


class AccessLogHandler(logging.Handler):
    """``rungrpcserver``'s access lines on a stream, ``[07/Dec/2026 17:02:11] <line>``.

    A line per call is printed at a rate where the usual ``StreamHandler`` and ``Formatter``
    cost as much as a small call itself: a write and a flush per line (a system call, which
    hands the GIL to another thread) and a timestamp formatted anew each time. So the
    timestamp is formatted once a second, and lines are collected and written together by a
    thread of the handler's own every ``FLUSH_INTERVAL`` seconds (and by ``flush()``, which
    ``logging.shutdown()`` calls at exit).
    """

    def __init__(self, stream: IO[str], interval: float = FLUSH_INTERVAL) -> None:
        super().__init__(INFO)
        self.stream = stream
        self._lines: list[str] = []  # under self.lock, which Handler.handle() holds in emit()
        self._second = -1
        self._stamp = ""
        self._closed = threading.Event()
        self._writer = threading.Thread(
            target=self._write_every, args=(interval,), name="access-log", daemon=True
        )
        self._writer.start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            second = int(record.created)
            if second != self._second:
                self._stamp = time.strftime(DEFAULT_DATE_FORMAT, time.localtime(second))
                self._second = second
            self._lines.append(f"[{self._stamp}] {record.getMessage()}\n")
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        lock = self.lock
        assert lock is not None  # Handler.__init__ creates it (createLock)
        with lock:
            lines, self._lines = self._lines, []
        if lines:
            try:
                self.stream.write("".join(lines))
                self.stream.flush()
            except (OSError, ValueError):  # the stream is gone (closed at exit, a dead pipe)
                pass

    def _write_every(self, interval: float) -> None:
        while not self._closed.wait(interval):
            self.flush()

    def close(self) -> None:
        self._closed.set()
        self.flush()
        super().close()
