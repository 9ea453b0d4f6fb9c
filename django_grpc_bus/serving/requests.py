"""Request messages as a call receives them: parsed leniently, and a client stream's iterator.

Bytes that are not a valid message reach the call (as :class:`Undecodable`) and end it
INVALID_ARGUMENT, rather than failing inside grpc as INTERNAL.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message

from django_grpc_bus.errors import Failure, abort_with

# How long an atomic client stream's end waits for word that the client cancelled (seconds).
CANCEL_NOTICE = 0.05


class Undecodable:
    """A request whose bytes are not a valid message (kept so the call can say so)."""

    __slots__ = ("problem",)

    def __init__(self, problem: str) -> None:
        self.problem = problem


def lenient_parser(message_class: type[Message]) -> Callable[[bytes], Any]:
    """Parse request bytes; on failure return :class:`Undecodable` instead of raising."""
    parse = message_class.FromString
    name = message_class.DESCRIPTOR.full_name

    def parse_request(data: bytes) -> Any:
        try:
            return parse(data)
        except DecodeError as exc:
            return Undecodable(f"The request is not a valid {name} message: {exc}")

    return parse_request


def refuse_undecodable(request: Any, context: grpc.ServicerContext) -> None:
    """End the call INVALID_ARGUMENT when `request` did not decode."""
    if isinstance(request, Undecodable):
        abort_with(context, Failure(grpc.StatusCode.INVALID_ARGUMENT, request.problem))


def incoming(
    requests: Iterator[Any], context: grpc.ServicerContext, cancel_notice: float = 0.0
) -> Iterator[Any]:
    """A client stream's requests as they arrive, for the action to iterate.

    A message that does not decode ends the call INVALID_ARGUMENT, and a client that went
    away ends it CANCELLED: either way the action's loop raises (rolling its transaction
    back), and the call's status is the one set here. grpc may end a cancelled client's
    stream as if the client had finished, and report the cancellation a moment later from
    its own thread; with `cancel_notice`, the end waits up to that long for such a report.
    """
    ended = threading.Event()
    if cancel_notice and not context.add_callback(ended.set):
        ended.set()  # the call is over already
    while True:
        try:
            request = next(requests)
        except StopIteration:
            if cancel_notice and ended.wait(cancel_notice) and not context.is_active():
                break  # cancelled after all
            return
        except grpc.RpcError:  # grpc's request iterator: the client cancelled
            break
        refuse_undecodable(request, context)
        yield request
    context.abort(grpc.StatusCode.CANCELLED, "The client cancelled the call.")
