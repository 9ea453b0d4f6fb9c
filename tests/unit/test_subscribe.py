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
