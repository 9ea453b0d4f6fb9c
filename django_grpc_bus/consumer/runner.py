"""What ``manage.py runconsumers`` runs: each subscription in a thread of its own.

Threads, not asyncio: a handler is ordinary Django code (the ORM, ``transaction.atomic``), and
each thread has its own database connection, so one subscription's slow handler never holds up
another's events. Per event, in one transaction on the subscription's database: lock its
``SubscriptionCursor`` row, skip an event whose id is the one handled last (delivered again),
call the handler, store the event's cursor. A handler that raises rolls back (its writes and
the cursor), is logged at ERROR with its traceback, and is given the same event again after a
backoff (``HANDLER_RETRY``) until it succeeds or the consumer stops: events are handled in order
and none is skipped. While a snapshot is being given (``snapshot=True`` and no cursor yet) no
cursor is stored until its SNAPSHOT_COMPLETE, so a consumer stopped mid-snapshot gets the whole
snapshot again. ``stop()`` (SIGTERM, SIGINT) lets the current event finish and commit, then ends.
A Watch that fails with a status that may pass (RESOURCE_EXHAUSTED, INTERNAL, UNAVAILABLE...) is
logged at WARNING and called again from the stored cursor after a backoff (``WATCH_RECONNECT``);
one that will not pass by itself (:data:`FAIL_FAST`) ends ``runconsumers`` with a sentence.
A BOOKMARK (the producer's position when the watch starts, and while it idles) is stored as
the cursor, so a consumer restarted before its first event resumes from where it started.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import grpc
from django.db import DatabaseError, connections, router, transaction
from django.utils import timezone

from django_grpc_bus.client.exceptions import (
    CallError,
    ServletUnavailable,
    UnknownMethod,
    UnknownService,
    UnknownServlet,
)
from django_grpc_bus.client.registry import registry
from django_grpc_bus.client.servlet import WatchMethod
from django_grpc_bus.client.watch import SNAPSHOT_COMPLETE, Reconnect, Watch
from django_grpc_bus.consumer import Subscription

logger = logging.getLogger("django_grpc_bus.consumer")

# How soon a failed handler is given its event again: 0.5 s, doubling to 30 s, with jitter.
HANDLER_RETRY = Reconnect(initial=0.5, maximum=30.0)

# Statuses a Watch call ends with that calling again cannot fix: the subscription (or the
# producer's setup) is wrong, so runconsumers stops and says so. Any other status
# (RESOURCE_EXHAUSTED, ABORTED, INTERNAL, DEADLINE_EXCEEDED, UNKNOWN, UNAVAILABLE...) may pass:
# the runner calls again, from its stored cursor, after a backoff.
FAIL_FAST = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
    }
)


class SubscriptionError(Exception):
    """A subscription that cannot run; the message names it and what to do."""


class Stopped(Exception):
    """The consumer was stopped while a handler waited to be retried."""


def watch_method(subscription: Subscription) -> WatchMethod:
    """The servlet's Watch of the subscription's model; SubscriptionError when there is none.

    Fetches the servlet's catalog: ServletUnavailable when it cannot be reached.
    """
    where = f"Subscription {subscription.name!r}"
    try:
        servlet = registry.servlet(subscription.servlet)
    except UnknownServlet as exc:
        raise SubscriptionError(f"{where}: {exc}") from None
    try:
        service = servlet.service(subscription.model)
    except (UnknownService, AttributeError) as exc:
        raise SubscriptionError(
            f"{where}: servlet {subscription.servlet!r} has no model {subscription.model!r} ({exc})"
        ) from None
    try:
        method = service.method("Watch")
    except UnknownMethod:
        method = None
    if not isinstance(method, WatchMethod):
        raise SubscriptionError(
            f"{where}: {subscription.model} on servlet {subscription.servlet!r} has no Watch. "
            "The producer must set `watch: true` for the model in its service_meta.yaml and "
            "regenerate (manage.py generateproto, then generategrpc)."
        )
    return method


def _refuses_since(exc: CallError) -> bool:
    """The producer refused the request's `since` (not a cursor it reads)."""
    return exc.code() == grpc.StatusCode.INVALID_ARGUMENT and (
        any(field == "since" for field, _ in exc.violations)
        or (exc.details() or "").startswith("since")
    )


def cursor_model() -> Any:
    from django_grpc_bus.models import SubscriptionCursor

    return SubscriptionCursor


class SubscriptionRunner(threading.Thread):
    """Follows one subscription's Watch and hands each event to its function (module doc)."""

    def __init__(self, subscription: Subscription, reconnect: Reconnect) -> None:
        super().__init__(name=f"consumer {subscription.name}", daemon=True)
        self.subscription = subscription
        self.reconnect = reconnect
        self.database = subscription.database or router.db_for_write(cursor_model())
        self.stopping = threading.Event()
        self.watch: Watch | None = None
        self.busy = False  # in a handler (or waiting to retry one)
        self.last_activity = time.monotonic()
        self.handled = 0
        self.failure: BaseException | None = None

    def stop(self) -> None:
        """End after the current event (callable from any thread)."""
        self.stopping.set()
        watch = self.watch
        if watch is not None:
            watch.stop()

    def run(self) -> None:
        try:
            self.follow()
        except Stopped:
            pass
        except SubscriptionError as exc:  # run_consumers raises it: logged there, not twice
            self.failure = exc
        except Exception as exc:  # reported by run_consumers, which stops the others
            self.failure = exc
            logger.exception("Subscription %r failed", self.subscription.name)
        finally:
            connections.close_all()  # this thread's connections

    def follow(self) -> None:
        subscription = self.subscription
        failures = 0
        while not self.stopping.is_set():
            cursor = ""
            try:
                method = watch_method(subscription)
                cursor = self.stored_cursor()
                in_snapshot = subscription.snapshot and not cursor
                self.watch = watch = method(
                    subscription.first_request(cursor), reconnect=self.reconnect
                )
                watch.on_bookmark = self.store_bookmark
                if self.stopping.is_set():
                    watch.stop()
                try:
                    for event in watch:
                        failures = 0
                        if event.get("type") == SNAPSHOT_COMPLETE:
                            in_snapshot = False
                        self.handle(event, keep_cursor=not in_snapshot)
                        if self.stopping.is_set():
                            break
                finally:
                    watch.close()  # cancels the call
            except ServletUnavailable as exc:
                failures += 1
                delay = self.reconnect.delay(failures)
                logger.warning(
                    "Subscription %r: servlet %r unreachable (%s); trying again in %.1f s",
                    subscription.name,
                    subscription.servlet,
                    exc.details(),
                    delay,
                )
                self.stopping.wait(delay)
            except DatabaseError as exc:  # reading the cursor: the database may be back soon
                failures += 1
                delay = HANDLER_RETRY.delay(failures)
                logger.warning(
                    "Subscription %r: cannot read its cursor from database %r (%s); trying "
                    "again in %.1f s",
                    subscription.name,
                    self.database,
                    exc,
                    delay,
                )
                connections[self.database].close_if_unusable_or_obsolete()
                self.stopping.wait(delay)
            except CallError as exc:
                if exc.code() == grpc.StatusCode.OUT_OF_RANGE:
                    raise SubscriptionError(
                        f"Subscription {subscription.name!r}: its cursor {cursor!r} is past the "
                        f"producer's WATCH_RETENTION ({exc.details()}). Start it again with "
                        f"`manage.py runconsumers --reset {subscription.name}` (from a snapshot "
                        "when it subscribes with snapshot=True, else from now)."
                    ) from None
                if exc.code() not in FAIL_FAST:
                    failures += 1
                    delay = self.reconnect.delay(failures)
                    logger.warning(
                        "Subscription %r: %s failed with %s (%s); calling again in %.1f s from "
                        "its stored cursor",
                        subscription.name,
                        exc.method,
                        exc.code().name,
                        exc.details(),
                        delay,
                    )
                    self.stopping.wait(delay)
                    continue
                remedy = ""
                if cursor and _refuses_since(exc):
                    remedy = (
                        f" The stored cursor {cursor!r} is not one the producer reads (did its "
                        "WATCH_BACKEND change?): start the subscription again with "
                        f"`manage.py runconsumers --reset {subscription.name}` (from a snapshot "
                        "when it subscribes with snapshot=True, else from now)."
                    )
                raise SubscriptionError(
                    f"Subscription {subscription.name!r}: {exc.method} failed: "
                    f"{exc.code().name}: {exc.details()}{remedy}"
                ) from None

    def store_bookmark(self, cursor: str) -> None:
        """Keep a BOOKMARK's cursor (the watch gives none mid-snapshot); a failure is only
        logged: the next event or bookmark stores a later one."""
        try:
            connections[self.database].close_if_unusable_or_obsolete()
            rows = cursor_model().objects.using(self.database)
            rows.filter(name=self.subscription.name).update(cursor=cursor, updated=timezone.now())
        except DatabaseError as exc:
            logger.warning(
                "Subscription %r: cannot store the bookmark %r in database %r (%s)",
                self.subscription.name,
                cursor,
                self.database,
                exc,
            )

    def stored_cursor(self) -> str:
        row, _ = (
            cursor_model().objects.using(self.database).get_or_create(name=self.subscription.name)
        )
        return str(row.cursor)

    def handle(self, event: dict[str, Any], keep_cursor: bool) -> None:
        """Call the handler in one transaction with the cursor; again after a failure."""
        attempt = 0
        self.busy = True
        try:
            while True:
                try:
                    self.handle_once(event, keep_cursor)
                    self.handled += 1
                    return
                except Exception:
                    attempt += 1
                    delay = HANDLER_RETRY.delay(attempt)
                    logger.exception(
                        "Subscription %r: the handler failed on %s event %r (cursor %r, "
                        "attempt %d); rolled back, the cursor stays: the event is given again "
                        "in %.1f s",
                        self.subscription.name,
                        event.get("type"),
                        event.get("id"),
                        event.get("cursor"),
                        attempt,
                        delay,
                    )
                    connections[self.database].close_if_unusable_or_obsolete()
                    if self.stopping.wait(delay):
                        raise Stopped from None
        finally:
            self.busy = False
            self.last_activity = time.monotonic()

    def handle_once(self, event: dict[str, Any], keep_cursor: bool) -> None:
        connections[self.database].close_if_unusable_or_obsolete()
        event_id = str(event.get("id") or "")
        with transaction.atomic(using=self.database):
            row = (
                cursor_model()
                .objects.using(self.database)
                .select_for_update()
                .get(name=self.subscription.name)
            )
            if event_id and event_id == row.event_id:
                logger.info(
                    "Subscription %r: event %r was handled already; skipped",
                    self.subscription.name,
                    event_id,
                )
                return
            self.subscription.handler(event)
            if keep_cursor:
                row.cursor = event.get("cursor") or row.cursor
                row.event_id = event_id
                row.save(update_fields=["cursor", "event_id", "updated"])


def check_subscriptions(subscriptions: Iterable[Subscription]) -> list[str]:
    """Read each subscription's cursor table and resolve its Watch now: SubscriptionError for
    a mistake; the names of those whose servlet cannot be reached yet (their runners keep
    trying)."""
    unreachable = []
    model = cursor_model()
    for subscription in subscriptions:
        database = subscription.database or router.db_for_write(model)
        try:
            model.objects.using(database).filter(name=subscription.name).exists()
        except DatabaseError as exc:
            raise SubscriptionError(
                f"Subscription {subscription.name!r}: its cursor cannot be read from database "
                f"{database!r} ({exc}). Run `manage.py migrate` (django_grpc_bus's "
                "SubscriptionCursor table)."
            ) from None
        try:
            watch_method(subscription)
        except ServletUnavailable:
            unreachable.append(subscription.name)
    return unreachable


def run_consumers(
    subscriptions: list[Subscription],
    *,
    until_idle: float | None = None,
    started: Callable[[list[SubscriptionRunner]], None] | None = None,
) -> list[SubscriptionRunner]:
    """Run `subscriptions` until SIGTERM or SIGINT (or `until_idle` seconds with no event).

    Raises SubscriptionError when a subscription cannot run (after stopping the others).
    """
    reconnect = Reconnect.from_settings()
    runners = [SubscriptionRunner(subscription, reconnect) for subscription in subscriptions]

    def stop_all(*args: Any) -> None:
        for runner in runners:
            runner.stop()

    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = {}
    if in_main_thread:
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, stop_all)
    try:
        for runner in runners:
            runner.start()
        if started is not None:
            started(runners)
        while any(runner.is_alive() for runner in runners):
            time.sleep(0.05)
            if any(runner.failure for runner in runners):
                stop_all()
            now = time.monotonic()
            if until_idle is not None and all(
                not runner.busy and now - runner.last_activity >= until_idle for runner in runners
            ):
                stop_all()
    finally:
        stop_all()
        for runner in runners:
            runner.join()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    failures = [str(runner.failure) for runner in runners if runner.failure is not None]
    if failures:
        raise SubscriptionError(" ".join(failures))
    return runners


def reset(names: Iterable[str], database: str | None = None) -> int:
    """Forget the stored cursors of the subscriptions `names`; how many there were."""
    model = cursor_model()
    deleted = 0
    for name in names:
        using = database or router.db_for_write(model)
        deleted += model.objects.using(using).filter(name=name).delete()[0]
    return deleted
