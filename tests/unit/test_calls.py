"""The call wrapper (serving.calls, .requests, .traffic), in process with a fake grpc context.

Statuses through the error table, calls in flight counted on the route's own Traffic until grpc
has finished the RPC, UNAVAILABLE while draining, RESOURCE_EXHAUSTED at the limit, and the
database housekeeping a Django request gets, before and after.
"""

from __future__ import annotations

import logging
import threading
import time

import grpc
import pytest
from catalog.models import Author
from django.core.exceptions import ObjectDoesNotExist, PermissionDenied

from django_grpc_bus.errors import GrpcError
from django_grpc_bus.serving import calls
from django_grpc_bus.serving.calls import (
    Route,
    bidi_stream_behavior,
    client_stream_behavior,
    stream_behavior,
    unary_behavior,
    unimplemented_behavior,
)
from django_grpc_bus.serving.requests import Undecodable, incoming, lenient_parser
from django_grpc_bus.serving.traffic import Traffic

from .fakes import Aborted, FakeContext, OpenService

Code = grpc.StatusCode


class Echo(OpenService):
    """Unary ``lookup``; ``count`` streams; ``bulk`` takes a stream; ``fail`` raises."""

    raised: BaseException | None = None

    def lookup(self, request, context):
        return self.response_class(count=len(request.name))

    def count(self, request, context):
        for seen in range(1, 4):
            yield self.response_class(seen=seen)

    def bulk(self, requests, context):
        return self.response_class(count=sum(1 for _ in requests))

    def echo(self, requests, context):
        for seen, message in enumerate(requests, 1):
            yield self.response_class(name=message.name, seen=seen)

    def fail(self, request, context):
        raise type(self).raised


@pytest.fixture
def pb(book_actions_pb2):
    return book_actions_pb2


@pytest.fixture(autouse=True)
def housekeeping(monkeypatch):
    """What the calls did to the database: "reset" (the query log), "close" (stale connections).

    Recorded rather than done: these tests have no database.
    """
    events: list[str] = []
    monkeypatch.setattr(calls, "close_old_connections", lambda: events.append("close"))
    monkeypatch.setattr(calls, "reset_queries", lambda: events.append("reset"))
    return events


def route(action: str, response_class: type, traffic: Traffic | None = None, **extra) -> Route:
    return Route(
        service_class=extra.pop("service_class", Echo),
        action=action,
        method=f"/library.BookActions/{action}",
        response_class=response_class,
        atomic=extra.pop("atomic", False),
        traffic=traffic or Traffic(),
        **extra,
    )


def call(behavior, request, context: FakeContext | None = None):
    """Run `behavior` as grpc would; (result or None, context)."""
    context = context or FakeContext()
    try:
        return behavior(request, context), context
    except Aborted:
        return None, context


# -- statuses -------------------------------------------------------------------------------------


def test_unary_call_returns_the_action_result(pb):
    reply, context = call(unary_behavior(route("lookup", pb.Authors)), pb.AuthorName(name="abc"))

    assert reply == pb.Authors(count=3)
    assert context.status is None  # grpc sends OK


@pytest.mark.parametrize(
    ("raised", "code"),
    [
        (GrpcError(Code.FAILED_PRECONDITION, "not now"), Code.FAILED_PRECONDITION),
        (ObjectDoesNotExist("gone"), Code.NOT_FOUND),
        (PermissionDenied(), Code.PERMISSION_DENIED),
        (RuntimeError("secret detail"), Code.INTERNAL),
    ],
)
def test_exceptions_end_the_call_through_the_error_table(pb, raised, code):
    Echo.raised = raised

    reply, context = call(unary_behavior(route("fail", pb.Authors)), pb.AuthorName())

    assert reply is None
    assert context.status == code
    assert "secret detail" not in context.details  # tracebacks only with --dev


def test_a_status_the_service_set_itself_is_kept(pb):
    class Refusing(OpenService):
        def lookup(self, request, context):
            context.abort(Code.OUT_OF_RANGE, "mine")

    _reply, context = call(
        unary_behavior(route("lookup", pb.Authors, service_class=Refusing)), pb.AuthorName()
    )

    assert (context.status, context.details) == (Code.OUT_OF_RANGE, "mine")


def test_an_undecodable_request_is_invalid_argument_and_never_counted(pb):
    traffic = Traffic()
    request = lenient_parser(pb.AuthorName)(b"\xff\xff\xff")

    _reply, context = call(unary_behavior(route("lookup", pb.Authors, traffic)), request)

    assert isinstance(request, Undecodable)
    assert context.status == Code.INVALID_ARGUMENT
    assert "library.AuthorName" in context.details
    assert traffic.active == 0 and not context.callbacks


def test_an_rpc_the_class_lacks_is_unimplemented(pb):
    _reply, context = call(unimplemented_behavior(route("forget", pb.Authors)), pb.AuthorName())

    assert context.status == Code.UNIMPLEMENTED
    assert "/library.BookActions/forget" in context.details and "Echo" in context.details


def test_streams_of_every_kind(pb):
    replies, _ = call(stream_behavior(route("count", pb.Resolved)), pb.Countdown(start=3))
    assert [reply.seen for reply in replies] == [1, 2, 3]

    names = [pb.AuthorName(name=name) for name in "abc"]
    reply, _ = call(client_stream_behavior(route("bulk", pb.Authors)), iter(names))
    assert reply.count == 3

    replies, _ = call(bidi_stream_behavior(route("echo", pb.Resolved)), iter(names))
    assert [(r.name, r.seen) for r in replies] == [("a", 1), ("b", 2), ("c", 3)]


def test_a_client_stream_cut_off_by_the_client_is_cancelled(pb):
    class Gone(grpc.RpcError):
        pass

    def requests():
        yield pb.AuthorName(name="a")
        raise Gone()

    context = FakeContext()
    received = []
    with pytest.raises(Aborted):
        received.extend(incoming(requests(), context))

    assert len(received) == 1
    assert context.status == Code.CANCELLED


# -- calls in flight: per server, draining, the limit ----------------------------------------------


def test_a_call_counts_in_flight_until_grpc_has_finished_it(pb):
    traffic = Traffic()
    seen_inside = []

    class Watching(OpenService):
        def lookup(self, request, context):
            seen_inside.append(traffic.active)
            return self.response_class()

    _reply, context = call(
        unary_behavior(route("lookup", pb.Authors, traffic, service_class=Watching)),
        pb.AuthorName(),
    )

    assert seen_inside == [1]
    assert traffic.active == 1  # the reply is not sent yet
    context.finish()
    assert traffic.active == 0


def test_two_servers_never_share_counts_or_draining(pb):
    first, second = Traffic(), Traffic()
    call(unary_behavior(route("lookup", pb.Authors, first)), pb.AuthorName())  # still in flight

    assert (first.active, second.active) == (1, 0)
    assert first.drain(timeout=0) is False  # one call still in flight there

    _reply, refused = call(unary_behavior(route("lookup", pb.Authors, first)), pb.AuthorName())
    reply, served = call(unary_behavior(route("lookup", pb.Authors, second)), pb.AuthorName())

    assert refused.status == Code.UNAVAILABLE
    assert reply is not None and served.status is None
    assert not second.draining


def test_draining_refuses_new_calls_with_unavailable(pb):
    traffic = Traffic()
    traffic.drain(timeout=0)
    ran = []

    class Recording(OpenService):
        def lookup(self, request, context):
            ran.append(True)

    _reply, context = call(
        unary_behavior(route("lookup", pb.Authors, traffic, service_class=Recording)),
        pb.AuthorName(),
    )

    assert context.status == Code.UNAVAILABLE
    assert "shutting down" in context.details
    assert not ran and traffic.active == 0


def test_drain_waits_for_the_calls_in_flight(pb):
    traffic = Traffic()
    _reply, in_flight = call(unary_behavior(route("lookup", pb.Authors, traffic)), pb.AuthorName())
    results = []
    drainer = threading.Thread(target=lambda: results.append(traffic.drain(timeout=10)))
    drainer.start()
    time.sleep(0.05)

    assert drainer.is_alive()  # still waiting for the call
    in_flight.finish()
    drainer.join(timeout=5)
    assert results == [True]


def test_at_the_limit_calls_get_resource_exhausted(pb):
    traffic = Traffic(limit=1)
    behavior = unary_behavior(route("lookup", pb.Authors, traffic))
    _reply, first = call(behavior, pb.AuthorName())

    _reply, second = call(behavior, pb.AuthorName())
    assert second.status == Code.RESOURCE_EXHAUSTED
    assert "limit of 1" in second.details

    first.finish()
    reply, third = call(behavior, pb.AuthorName())
    assert reply is not None and third.status is None


# -- the database, as for a Django request ---------------------------------------------------------


@pytest.fixture
def debug(settings):
    settings.DEBUG = True  # the query log is reset only when DEBUG keeps one


def test_a_unary_call_closes_stale_connections_before_and_after(pb, housekeeping, debug):
    class Recording(OpenService):
        def lookup(self, request, context):
            housekeeping.append("action")
            return self.response_class()

    call(unary_behavior(route("lookup", pb.Authors, service_class=Recording)), pb.AuthorName())

    assert housekeeping == ["reset", "close", "action", "close"]


def test_a_failed_call_is_cleaned_up_too(pb, housekeeping, debug):
    Echo.raised = RuntimeError("boom")

    _reply, context = call(unary_behavior(route("fail", pb.Authors)), pb.AuthorName())

    assert context.status == Code.INTERNAL
    assert housekeeping == ["reset", "close", "close"]


def test_a_stream_is_cleaned_up_when_cancelled(pb, housekeeping, debug, caplog):
    behavior = stream_behavior(route("count", pb.Resolved))

    replies, _ = call(behavior, pb.Countdown())
    next(replies)
    assert housekeeping == ["reset", "close"]  # the stream is still open
    with caplog.at_level(logging.INFO, logger="django_grpc_bus.access"):
        replies.close()  # the client went away

    assert housekeeping == ["reset", "close", "close"]
    assert "/library.BookActions/count CANCELLED" in caplog.text


def test_a_stream_is_cleaned_up_after_its_last_message(pb, housekeeping):
    replies, _ = call(stream_behavior(route("count", pb.Resolved)), pb.Countdown())

    assert len(list(replies)) == 3
    assert housekeeping == ["close", "close"]  # no query log to reset without DEBUG


def test_the_access_log_has_one_line_per_call(pb, caplog):
    with caplog.at_level(logging.INFO, logger="django_grpc_bus.access"):
        call(unary_behavior(route("lookup", pb.Authors)), pb.AuthorName())

    (record,) = [r for r in caplog.records if r.name == "django_grpc_bus.access"]
    assert record.getMessage().startswith("/library.BookActions/lookup OK ")
    assert record.getMessage().endswith("ms ipv4:127.0.0.1:5000")
    assert (record.grpc_status, record.peer, record.trace_id) == ("OK", "ipv4:127.0.0.1:5000", None)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("still_active", [True, False])
def test_an_atomic_write_stays_only_if_the_client_is_still_there(pb, still_active):
    class Writing(OpenService):
        def lookup(self, request, context):
            Author.objects.create(name=request.name)
            context.active = still_active  # cancelled, past its deadline, or cut off
            return self.response_class(count=1)

    behavior = unary_behavior(route("lookup", pb.Authors, service_class=Writing, atomic=True))
    call(behavior, pb.AuthorName(name="atomic unit"))

    assert Author.objects.filter(name="atomic unit").exists() is still_active
