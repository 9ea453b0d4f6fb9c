"""The Watch settings, read from ``MESSAGE_BUS`` (defaults in :mod:`django_grpc_bus.conf`)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django_grpc_bus.conf import bus_settings


def retention_problem(value: Any) -> str | None:
    """Why `value` is not a valid ``WATCH_RETENTION``, or None."""
    if isinstance(value, bool) or not isinstance(value, (dt.timedelta, int, float)):
        return (
            f"expected a datetime.timedelta or a number of seconds, got {type(value).__name__} "
            f"{value!r}"
        )
    seconds = value.total_seconds() if isinstance(value, dt.timedelta) else value
    if not seconds > 0:
        return f"must be a positive duration, got {value!r}"
    return None


def retention() -> dt.timedelta:
    """How long events are kept: ``WATCH_RETENTION`` as a timedelta."""
    value = bus_settings.WATCH_RETENTION
    if retention_problem(value) is not None:
        return dt.timedelta(days=7)  # the checks report the setting (E030)
    return value if isinstance(value, dt.timedelta) else dt.timedelta(seconds=value)
