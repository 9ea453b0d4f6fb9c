import json
from typing import Any

from django.core.management.base import CommandError, CommandParser

from django_grpc_bus.client.exceptions import CallError, ClientError
from django_grpc_bus.client.jsonvalues import dumps
from django_grpc_bus.client.registry import registry
from django_grpc_bus.client.servlet import Method
from django_grpc_bus.management.bus_command import BusCommand
from django_grpc_bus.management.servlets import servlet_for


class Command(BusCommand):
    help = (
        "Call SERVICE.METHOD on a servlet with a JSON request and print the response as JSON "
        "(a stream: one JSON document per line). A List with --page-size or --page-token prints "
        "one page, then its next_page_token to stderr as JSON. Exits 1 with the status on error."
    )
    runs_config_checks = False
    skip_checks_help = None
    user_errors = (*BusCommand.user_errors, ClientError)

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("servlet", help="servlet name or host:port")
        parser.add_argument(
            "method", help="Service.method, e.g. Book.retrieve or library.Book.Retrieve"
        )
        parser.add_argument(
            "request",
            nargs="?",
            default="{}",
            help="the request as JSON (a JSON array of them for a client or bidi stream); filter "
            'names in either spelling ("price__lt" or "price_lt")',
        )
        parser.add_argument(
            "--metadata", action="append", default=[], metavar="KEY=VALUE", help="call metadata"
        )
        parser.add_argument("--timeout", type=float, help="deadline in seconds")
        parser.add_argument("--indent", type=int, help="pretty-print with this indent")
        parser.add_argument(
            "--page-size",
            type=int,
            metavar="N",
            help="a List: N rows, then the next_page_token on stderr (sets page_size)",
        )
        parser.add_argument(
            "--max",
            type=int,
            metavar="N",
            dest="max_messages",
            help="a stream: stop after N messages (a Watch streams until stopped)",
        )
        parser.add_argument(
            "--page-token",
            metavar="TOKEN",
            help="a List: the page after the one that gave TOKEN (sets page_token)",
        )

    def run(
        self,
        *args: Any,
        servlet: str,
        method: str,
        request: str,
        metadata: list[str],
        timeout: float | None,
        indent: int | None,
        **options: Any,
    ) -> None:
        service_name, dot, method_name = method.rpartition(".")
        if not dot or not service_name:
            raise CommandError(f"{method!r}: write Service.method, e.g. Book.retrieve.")
        try:
            payload = json.loads(request)
        except json.JSONDecodeError as exc:
            raise CommandError(f"The request is not JSON: {exc}") from None
        payload = with_page(payload, options["page_size"], options["page_token"])
        max_messages = options["max_messages"]
        if max_messages is not None and max_messages < 1:
            raise CommandError("--max must be at least 1.")
        pairs = []
        for item in metadata:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise CommandError(f"--metadata {item!r}: write KEY=VALUE.")
            pairs.append((key.lower(), value))
        target = servlet_for(registry, servlet)
        call_options: dict[str, Any] = {"metadata": pairs or None}
        if timeout is not None:
            call_options["timeout"] = timeout
        try:
            rpc = target.service(service_name).method(method_name)
            if is_paged(rpc, payload):
                token = ""
                for batch in rpc.batches(payload, **call_options):
                    for row in batch["results"]:
                        self.stdout.write(dumps(row, indent))
                    token = batch["next_page_token"] or token
                # Not in the error style: it is the page's result, for the next call.
                self.stderr.write(dumps({"next_page_token": token}), style_func=str)
            elif rpc.server_streaming:
                rows = rpc(payload, **call_options)
                try:
                    for count, row in enumerate(rows, 1):
                        self.stdout.write(dumps(row, indent))
                        self.stdout.flush()  # a Watch's events as they come
                        if count == max_messages:
                            break
                finally:
                    rows.close()  # cancels the call
            else:
                result = rpc(payload, **call_options)
                if rpc.unwraps:  # the registry gives a Count's number; print the message
                    result = {rpc.unwraps: result}
                self.stdout.write(dumps(result, indent))
        except CallError as exc:
            self.stderr.write(f"{exc.code().name}: {exc.details()}")
            for field, description in exc.violations:
                self.stderr.write(f"  {field}: {description}")
            raise SystemExit(1) from None


def with_page(payload: Any, page_size: int | None, page_token: str | None) -> Any:
    """The request with --page-size and --page-token set into it."""
    if page_size is None and page_token is None:
        return payload
    if not isinstance(payload, dict):
        raise CommandError("--page-size and --page-token need the request to be a JSON object.")
    if page_size is not None:
        if page_size < 1:
            raise CommandError("--page-size must be at least 1.")
        payload = {**payload, "page_size": page_size}
    if page_token is not None:
        payload = {**payload, "page_token": page_token}
    return payload


def is_paged(rpc: Method, payload: Any) -> bool:
    """Whether the call is a List asked for one page (so a next_page_token is printed)."""
    return bool(
        rpc.flattens
        and "next_page_token" in rpc.response_class.DESCRIPTOR.fields_by_name
        and isinstance(payload, dict)
        and (payload.get("page_size") or payload.get("page_token"))
    )
