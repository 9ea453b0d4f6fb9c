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
from typing import IO, Any

LOGGER_NAME = "django_grpc_bus.access"
logger = logging.getLogger(LOGGER_NAME)
INFO = logging.INFO
# What ``rungrpcserver`` prints: runserver's timestamp, then the line.
DEFAULT_FORMAT = "[%(asctime)s] %(message)s"
DEFAULT_DATE_FORMAT = "%d/%b/%Y %H:%M:%S"


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
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter(DEFAULT_FORMAT, DEFAULT_DATE_FORMAT))
    logger.addHandler(handler)
    logger.setLevel(INFO)
    logger.propagate = False
    return handler


def remove_default_handler(handler: Any) -> None:
    """Undo :func:`install_default_handler` (tests, and a server stopped in-process)."""
    if handler is None:
        return
    logger.removeHandler(handler)
    logger.setLevel(logging.NOTSET)
    logger.propagate = True
