import json

from django.core.management.base import CommandError

from django_grpc_bus.client.exceptions import CallError, ClientError
from django_grpc_bus.client.jsonvalues import dumps
from django_grpc_bus.client.registry import registry
from django_grpc_bus.management.base import BusCommand
from django_grpc_bus.management.servlets import servlet_for


class Command(BusCommand):
    help = (
        "Call SERVICE.METHOD on a servlet with a JSON request and print the response as JSON "
        "(a stream: one JSON document per line). Exits 1 with the status on error."
    )
    runs_config_checks = False
    skip_checks_help = None
    user_errors = (*BusCommand.user_errors, ClientError)

    def add_arguments(self, parser):
        parser.add_argument("servlet", help="servlet name or host:port")
        parser.add_argument(
            "method", help="Service.method, e.g. Book.retrieve or library.Book.Retrieve"
        )
        parser.add_argument("request", nargs="?", default="{}", help="the request as JSON")
        parser.add_argument(
            "--metadata", action="append", default=[], metavar="KEY=VALUE", help="call metadata"
        )
        parser.add_argument("--timeout", type=float, help="deadline in seconds")
        parser.add_argument("--indent", type=int, help="pretty-print with this indent")

    def run(self, *args, servlet, method, request, metadata, timeout, indent, **options):
        service_name, dot, method_name = method.rpartition(".")
        if not dot or not service_name:
            raise CommandError(f"{method!r}: write Service.method, e.g. Book.retrieve.")
        try:
            payload = json.loads(request)
        except json.JSONDecodeError as exc:
            raise CommandError(f"The request is not JSON: {exc}") from None
        pairs = []
        for item in metadata:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise CommandError(f"--metadata {item!r}: write KEY=VALUE.")
            pairs.append((key.lower(), value))
        target = servlet_for(registry, servlet)
        call_options = {"metadata": pairs or None}
        if timeout is not None:
            call_options["timeout"] = timeout
        try:
            rpc = target.service(service_name).method(method_name)
            result = rpc(payload, **call_options)
            if rpc.server_streaming:
                for row in result:
                    self.stdout.write(dumps(row, indent))
            else:
                self.stdout.write(dumps(result, indent))
        except CallError as exc:
            self.stderr.write(f"{exc.code().name}: {exc.details()}")
            for field, description in exc.violations:
                self.stderr.write(f"  {field}: {description}")
            raise SystemExit(1) from None
