"""``MESSAGE_BUS["WATCH_BACKEND"]``: where ``Watch`` reads events from.

``"database"`` (the default): the outbox itself. A ``nats://`` URL (or a list of them, or a dict
``{"url": ..., "stream": ..., "subject_prefix": ...}``): NATS JetStream. The outbox is relayed to
the stream ``stream`` (default ``GRPC_BUS``) on the subjects
``<subject_prefix>.<app_label>.<Model>`` (default prefix ``grpcbus``), and ``Watch`` reads from
the stream.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from django_grpc_bus.conf import bus_settings

DATABASE = "database"
DEFAULT_STREAM = "GRPC_BUS"
DEFAULT_PREFIX = "grpcbus"
SCHEMES = ("nats", "tls", "ws", "wss")
# JetStream stream names: no whitespace, '.', '*', '>', path separators (nats-server's rule).
_STREAM_NAME = re.compile(r"^[^\s.*>/\\]+$")
# A subject prefix: dot-separated tokens without wildcards or whitespace.
_PREFIX = re.compile(r"^[^\s.*>]+(\.[^\s.*>]+)*$")


@dataclass(frozen=True)
class NatsConfig:
    servers: tuple[str, ...]
    stream: str
    subject_prefix: str

    def subject(self, app_label: str, model_name: str) -> str:
        """The subject of one model's events: ``grpcbus.catalog.Book``."""
        return f"{self.subject_prefix}.{app_label}.{model_name}"

    @property
    def subjects(self) -> str:
        """Every subject of the stream: ``grpcbus.>``."""
        return f"{self.subject_prefix}.>"


class BackendError(ValueError):
    """``WATCH_BACKEND`` is not a backend this version knows."""


def parse(value: Any) -> NatsConfig | None:
    """The NATS configuration `value` asks for; None for the database. BackendError if bad."""
    if value is None or value == DATABASE:
        return None
    if isinstance(value, str):
        value = {"url": value}
    elif isinstance(value, (list, tuple)):
        value = {"url": list(value)}
    if not isinstance(value, dict):
        raise BackendError(
            f'expected "database", a nats:// URL or a dict with "url", got '
            f"{type(value).__name__} {value!r}"
        )
    unknown = sorted(set(value) - {"url", "stream", "subject_prefix"})
    if unknown:
        raise BackendError(
            f"has unknown keys {unknown}: the keys are url, stream and subject_prefix"
        )
    urls = value.get("url")
    urls = [urls] if isinstance(urls, str) else urls
    if not urls or not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise BackendError('needs "url": a nats:// URL or a list of them')
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in SCHEMES or not parts.hostname:
            raise BackendError(
                f"url {url!r} is not a NATS server URL: expected nats://host:port "
                f"(or {', '.join(s + '://' for s in SCHEMES[1:])})"
            )
    stream = value.get("stream", DEFAULT_STREAM)
    if not isinstance(stream, str) or not _STREAM_NAME.match(stream):
        raise BackendError(
            f"stream {stream!r} is not a JetStream stream name (no spaces, '.', '*', '>', '/')"
        )
    prefix = value.get("subject_prefix", DEFAULT_PREFIX)
    if not isinstance(prefix, str) or not _PREFIX.match(prefix):
        raise BackendError(
            f"subject_prefix {prefix!r} is not a subject prefix (dot-separated tokens, no "
            "spaces or wildcards)"
        )
    return NatsConfig(tuple(urls), stream, prefix)


def nats_config() -> NatsConfig | None:
    """The configured NATS backend, or None (the database; also when the setting is invalid:
    ``manage.py check`` reports it, E037)."""
    try:
        return parse(bus_settings.WATCH_BACKEND)
    except BackendError:
        return None


def problem(value: Any) -> str | None:
    """Why `value` is not a valid ``WATCH_BACKEND``, or None."""
    try:
        config = parse(value)
    except BackendError as exc:
        return str(exc)
    if config is not None:
        try:
            import nats  # noqa: F401
        except ImportError:
            return (
                "asks for NATS JetStream, but nats-py is not installed: "
                "pip install 'django-grpc-bus[nats]'"
            )
    return None
