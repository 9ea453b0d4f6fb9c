"""``@grpc_action``: a service method that is an RPC of its model's proto service (SPEC §9).

The decorator records what the RPC takes and returns (:class:`ActionSpec`, read by
``generateproto`` to write the RPC and its messages), and lets the method return a dict as
well as a message: the dict is turned into the RPC's response message. Everything else about
the call (authentication and permissions, the error table, the database hygiene, deadlines, the
asyncio server) is what every RPC of a service gets, because an action is served like the CRUD
methods: by its name, ``Publish`` -> ``publish``.

``request``/``response`` is one of:

- a DRF serializer class: its message is generated from its fields (``<Model><Rpc>Request`` /
  ``<Model><Rpc>Response``); :func:`validate_request` validates a request against it;
- a list of ``(name, proto type)`` pairs (``[("title", "string"), ("tags", "repeated string")]``);
- the name of an existing message: one of the model's own (``"BookData"``), another selected
  model's (``"catalog.AuthorData"``) or a well-known type (``"google.protobuf.Empty"``).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from google.protobuf import message as _message
from rest_framework import serializers

from django_grpc_bus.conversion import messages

ACTION_ATTRIBUTE = "grpc_action"

F = TypeVar("F", bound=Callable[..., Any])

# A message given as a serializer class, (name, type) pairs, or an existing message's name.
MessageSpec = type[serializers.BaseSerializer] | tuple[tuple[str, str], ...] | str


# DRF fields whose values travel as proto strings but are never "" (serializers.NOT_BLANK_TEXT;
# repeated here so that generation, which reads the actions, never imports the serializers).
NOT_BLANK_TEXT = (
    serializers.DecimalField,
    serializers.DateField,
    serializers.TimeField,
    serializers.DateTimeField,
    serializers.UUIDField,
    serializers.IPAddressField,
)


class ActionResultError(TypeError):
    """An action returned something that is not its response message (a server bug: INTERNAL)."""


@dataclass(frozen=True)
class ActionSpec:
    """What one ``@grpc_action`` declares: the RPC's messages, kind and options."""

    method: str  # the service method's name, "bulk_create"
    request: MessageSpec
    response: MessageSpec
    request_stream: bool = False
    response_stream: bool = False
    idempotent: bool = False
    atomic: bool = False
    doc: str = ""  # the first paragraph of the method's docstring: the RPC's comment

    @property
    def kind(self) -> str:
        return {
            (False, False): "unary",
            (False, True): "server-streaming",
            (True, False): "client-streaming",
            (True, True): "bidi-streaming",
        }[(self.request_stream, self.response_stream)]


def grpc_action(
    request: Any = "google.protobuf.Empty",
    response: Any = "google.protobuf.Empty",
    request_stream: bool = False,
    response_stream: bool = False,
    idempotent: bool = False,
    atomic: bool = False,
) -> Callable[[F], F]:
    """Make a service method an RPC of its model's service (written by ``generateproto``).

    `request_stream`/`response_stream` choose among the four kinds of RPC; `idempotent` marks
    the RPC ``idempotency_level = IDEMPOTENT`` (clients may retry it); `atomic` runs the whole
    call, a client stream included, in one database transaction, as create and update run
    (the same as listing the method in the service's ``atomic_actions``).
    """
    for flag, value in (
        ("request_stream", request_stream),
        ("response_stream", response_stream),
        ("idempotent", idempotent),
        ("atomic", atomic),
    ):
        if not isinstance(value, bool):
            raise TypeError(f"grpc_action({flag}=...) takes True or False, not {value!r}.")

    if atomic and response_stream:
        raise TypeError(
            "grpc_action(atomic=True) applies to unary and client-streaming actions: a "
            "transaction cannot stay open while responses are streamed."
        )

    def decorate(method: F) -> F:
        name = getattr(method, "__name__", repr(method))
        spec = ActionSpec(
            method=name,
            request=_message_spec(request, name, "request"),
            response=_message_spec(response, name, "response"),
            request_stream=request_stream,
            response_stream=response_stream,
            idempotent=idempotent,
            atomic=atomic,
            doc=" ".join((inspect.getdoc(method) or "").split("\n\n")[0].split()),
        )
        _check_shape(method, spec)
        wrapped = _returning_messages(method, spec)
        setattr(wrapped, ACTION_ATTRIBUTE, spec)
        return cast(F, wrapped)

    return decorate


def action_spec(method: Any) -> ActionSpec | None:
    """The :class:`ActionSpec` of a service method; None when it is not a ``@grpc_action``."""
    spec = getattr(method, ACTION_ATTRIBUTE, None)
    return spec if isinstance(spec, ActionSpec) else None


def service_actions(service_class: type) -> list[ActionSpec]:
    """The actions `service_class` declares (its own and inherited), in declaration order."""
    found: dict[str, ActionSpec] = {}
    for klass in reversed(service_class.__mro__):
        for name, value in vars(klass).items():
            spec = action_spec(value)
            if spec is not None:
                found[name] = spec
            elif name in found:
                del found[name]  # overridden without the decorator: no longer an action
    return list(found.values())


def validate_request(service: Any, request: Any, **kwargs: Any) -> serializers.BaseSerializer:
    """The action's request serializer over `request`, validated as DRF validates ``data``.

    ``serializer = validate_request(self, request)`` in an action whose ``request`` is a
    serializer class; a failure raises DRF's ``ValidationError`` (INVALID_ARGUMENT with a field
    violation per error). Unset ``optional`` fields are "not given" (so ``required`` and
    ``default`` apply), as in Create. `kwargs` go to the serializer (``instance=``,
    ``partial=True``, ``context=``); the context defaults to the service's, when it has one.
    """
    action = getattr(service, "action", None)
    spec = action_spec(getattr(type(service), str(action), None))
    if spec is None or not isinstance(spec.request, type):
        raise TypeError(
            f"validate_request() needs an action declared with a serializer as request; "
            f"{type(service).__qualname__}.{action} is not one."
        )
    serializer_class = spec.request
    if "context" not in kwargs and hasattr(service, "get_serializer_context"):
        kwargs["context"] = service.get_serializer_context()
    serializer = serializer_class(data=request_data(serializer_class, request), **kwargs)
    serializer.is_valid(raise_exception=True)
    return serializer


def validate_stream(service: Any, requests: Iterable[Any], **kwargs: Any) -> Iterator[Any]:
    """:func:`validate_request` for each message of a client stream, as they arrive.

    A message that fails raises DRF's ``ValidationError`` with its index in every field path
    (``[3].title``). In an ``atomic=True`` action nothing the earlier messages wrote stays.
    """
    for index, request in enumerate(requests):
        try:
            yield validate_request(service, request, **kwargs)
        except serializers.ValidationError as exc:
            raise serializers.ValidationError({f"[{index}]": exc.detail}) from None


def request_data(serializer_class: type[serializers.BaseSerializer], message: Any) -> dict:
    """The ``data`` a request message gives a serializer: its present fields, with the empty
    strings of fields that cannot be blank (dates, decimals, UUIDs) left out as "not given"."""
    data = messages.present_fields(message)
    fields = getattr(serializer_class(), "fields", {})
    for name, field in fields.items():
        not_blank = isinstance(field, NOT_BLANK_TEXT) and not getattr(field, "allow_blank", False)
        if not_blank and data.get(name) == "":
            del data[name]
    return data


# -- declaration checks --------------------------------------------------------------------------


def _message_spec(value: Any, method: str, role: str) -> MessageSpec:
    if isinstance(value, type) and issubclass(value, serializers.BaseSerializer):
        return value
    if isinstance(value, str) and value.strip():
        return value.strip().lstrip(".")
    if isinstance(value, Sequence) and not isinstance(value, str):
        pairs = []
        for item in value:
            if not (
                isinstance(item, Sequence)
                and not isinstance(item, str)
                and len(item) == 2
                and all(isinstance(part, str) for part in item)
            ):
                raise TypeError(
                    f"grpc_action on {method}: each item of {role}= is a (name, proto type) "
                    f"pair of strings, such as ('title', 'string'); got {item!r}."
                )
            pairs.append((item[0], item[1]))
        return tuple(pairs)
    raise TypeError(
        f"grpc_action on {method}: {role}= takes a serializer class, a list of (name, proto "
        f"type) pairs, or a message name such as 'BookData' or 'google.protobuf.Empty'; got "
        f"{value!r}."
    )


def _check_shape(method: Any, spec: ActionSpec) -> None:
    """A streaming response is a generator; a single one is not (async or not)."""
    generator = inspect.isgeneratorfunction(method) or inspect.isasyncgenfunction(method)
    if spec.response_stream and not generator:
        raise TypeError(
            f"grpc_action on {spec.method}: response_stream=True, so the method yields its "
            "responses (write it as a generator, `yield`)."
        )
    if not spec.response_stream and generator:
        raise TypeError(
            f"grpc_action on {spec.method}: the method yields, but response_stream is False; "
            "set response_stream=True or return one response."
        )


# -- results as messages -------------------------------------------------------------------------


def as_response(service: Any, result: Any) -> Any:
    """`result` (a message, a mapping or None) as the call's response message."""
    response_class = service.response_class
    if response_class is None:  # called outside a server (a unit test): leave it as it is
        return result
    if isinstance(result, response_class):
        return result
    where = f"{type(service).__qualname__}.{service.action}"
    full_name = response_class.DESCRIPTOR.full_name
    if result is None:
        return response_class()
    if isinstance(result, _message.Message):
        raise ActionResultError(
            f"{where} returned a {result.DESCRIPTOR.full_name}; its response is {full_name}."
        )
    if not isinstance(result, Mapping):
        raise ActionResultError(
            f"{where} returned {type(result).__name__}; return a {full_name} or a dict."
        )
    try:
        return messages.build_message(response_class, result)
    except messages.ConversionError as exc:
        raise ActionResultError(
            f"{where} returned a dict that is not a {full_name}: {exc}"
        ) from None


def _returning_messages(method: Any, spec: ActionSpec) -> Any:
    """`method`, its results (or each result it yields) turned into response messages."""
    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def async_stream(self: Any, request: Any, context: Any) -> Any:
            async with contextlib.aclosing(method(self, request, context)) as items:
                async for item in items:
                    yield as_response(self, item)

        return async_stream
    if inspect.iscoroutinefunction(method):

        @functools.wraps(method)
        async def async_unary(self: Any, request: Any, context: Any) -> Any:
            return as_response(self, await method(self, request, context))

        return async_unary
    if inspect.isgeneratorfunction(method):

        @functools.wraps(method)
        def stream(self: Any, request: Any, context: Any) -> Any:
            # Closed with this generator (the client went away): the action's own `finally`.
            with contextlib.closing(method(self, request, context)) as items:
                for item in items:
                    yield as_response(self, item)

        return stream

    @functools.wraps(method)
    def unary(self: Any, request: Any, context: Any) -> Any:
        return as_response(self, method(self, request, context))

    return unary
