"""``consumer.subscribe``: what it registers, and the mistakes it names when a module imports."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured

from django_grpc_bus.consumer import subscribe, subscriptions, unsubscribe


@pytest.fixture
def forget():
    names: list[str] = []
    yield names
    for name in names:
        unsubscribe(name)


def test_registers_under_the_functions_dotted_path(forget):
    @subscribe("inventory", "catalog.Book", filter={"price__lt": 10}, snapshot=True)
    def changed(event):
        return event

    name = f"{__name__}.test_registers_under_the_functions_dotted_path.<locals>.changed"
    forget.append(name)
    found = subscriptions()[name]
    assert (found.servlet, found.model, found.handler, found.snapshot) == (
        "inventory",
        "catalog.Book",
        changed,
        True,
    )
    assert found.first_request("") == {
        "since": "",
        "snapshot": True,
        "filter": {"price__lt": 10},
    }
    # With a stored cursor: resume from it, no snapshot.
    assert found.first_request("42")["since"] == "42"
    assert found.first_request("42")["snapshot"] is False


def test_a_name_keeps_the_cursor_through_a_rename(forget):
    forget.append("books")
    subscribe("inventory", "catalog.Book", name="books")(lambda event: None)
    assert subscriptions()["books"].name == "books"


def test_two_functions_with_one_name_are_refused(forget):
    forget.append("books")
    subscribe("inventory", "catalog.Book", name="books")(print)
    with pytest.raises(ImproperlyConfigured, match="Two subscriptions are named 'books'"):
        subscribe("inventory", "catalog.Author", name="books")(len)


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (("inventory", "Book"), {}, "the model must be '<app>.<Model>'"),
        (("inventory", "catalog.Book name"), {}, "the model must be '<app>.<Model>'"),
        (("", "catalog.Book"), {}, "the servlet must be a name"),
        (("inventory", "catalog.Book"), {"filter": "title=x"}, "filter must be a dict"),
    ],
)
def test_mistakes_are_named_at_import(args, kwargs, message):
    with pytest.raises(ImproperlyConfigured, match=message):
        subscribe(*args, **kwargs)


def test_a_non_function_is_refused():
    with pytest.raises(ImproperlyConfigured, match="needs a function"):
        subscribe("inventory", "catalog.Book")("not callable")


# -- runconsumers: which Watch statuses it rides out ---------------------------------------------


class FakeWatch:
    """What a WatchMethod returns: iterates `outcome` (events, or an error to raise)."""

    def __init__(self, outcome):
        self.outcome = outcome
        self.on_bookmark = None

    def __iter__(self):
        if isinstance(self.outcome, Exception):
            raise self.outcome
        for event in self.outcome:
            if event.get("type") == "BOOKMARK":  # as the client: not yielded, given to the hook
                self.on_bookmark(event["cursor"])
            else:
                yield event

    def stop(self):
        pass

    def close(self):
        pass


def runner_of(monkeypatch, outcomes, handled):
    from django_grpc_bus.client.watch import Reconnect
    from django_grpc_bus.consumer import Subscription
    from django_grpc_bus.consumer import runner as runner_module

    calls = []

    def method(request, reconnect):
        calls.append(request)
        outcome = outcomes.pop(0)
        if not outcomes:
            runner.stopping.set()  # the last call: end after it
        return FakeWatch(outcome)

    monkeypatch.setattr(runner_module, "watch_method", lambda subscription: method)
    subscription = Subscription("library", "catalog.Book", handled.append, name="rides-out")
    runner = runner_module.SubscriptionRunner(subscription, Reconnect(initial=0.01, maximum=0.01))
    return runner, calls


def call_error(code):
    from django_grpc_bus.client.exceptions import CallError

    return CallError(None, "library", "catalog.BookService/Watch", code=code, details="why")


@pytest.mark.django_db(transaction=True)  # the runner closes stale connections
@pytest.mark.parametrize(
    "code",
    ["RESOURCE_EXHAUSTED", "ABORTED", "INTERNAL", "DEADLINE_EXCEEDED", "UNKNOWN", "UNAVAILABLE"],
)
def test_a_transient_watch_status_is_retried_and_logged(monkeypatch, caplog, code):
    import grpc

    handled = []
    event = {"type": "CREATED", "id": "e1", "cursor": "7", "data": {"id": 1}}
    runner, calls = runner_of(monkeypatch, [call_error(grpc.StatusCode[code]), [event]], handled)
    with caplog.at_level("WARNING", logger="django_grpc_bus.consumer"):
        runner.follow()
    assert handled == [event] and len(calls) == 2
    assert f"failed with {code} (why); calling again in" in caplog.text
    assert "rides-out" in caplog.text
    assert runner.stored_cursor() == "7"


@pytest.mark.django_db(transaction=True)  # the runner closes stale connections
@pytest.mark.parametrize(
    "code",
    [
        "INVALID_ARGUMENT",
        "NOT_FOUND",
        "PERMISSION_DENIED",
        "UNAUTHENTICATED",
        "UNIMPLEMENTED",
        "FAILED_PRECONDITION",
        "OUT_OF_RANGE",
    ],
)
def test_a_watch_status_that_cannot_pass_stops_the_subscription_with_its_name(monkeypatch, code):
    import grpc

    from django_grpc_bus.consumer.runner import SubscriptionError

    handled = []
    runner, calls = runner_of(monkeypatch, [call_error(grpc.StatusCode[code]), []], handled)
    with pytest.raises(SubscriptionError, match="Subscription 'rides-out'") as failed:
        runner.follow()
    assert len(calls) == 1 and handled == []
    assert code in str(failed.value) or "WATCH_RETENTION" in str(failed.value)


@pytest.mark.django_db(transaction=True)  # the runner closes stale connections
def test_a_bookmark_is_stored_as_the_cursor(monkeypatch):
    """A consumer started from now that is stopped before its first event resumes from the
    producer's start position, not from "now" again (events in between would be lost)."""
    handled = []
    bookmark = {"type": "BOOKMARK", "cursor": "12"}
    runner, calls = runner_of(monkeypatch, [[bookmark]], handled)
    runner.follow()
    assert handled == [] and calls == [{"since": "", "snapshot": False}]
    assert runner.stored_cursor() == "12"
