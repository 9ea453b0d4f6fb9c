from typing import Any

from django.core.management.base import CommandParser

from django_grpc_bus.client.describe import describe_service
from django_grpc_bus.client.exceptions import ClientError
from django_grpc_bus.client.registry import registry
from django_grpc_bus.client.targets import resolved_addresses
from django_grpc_bus.management.bus_command import BusCommand
from django_grpc_bus.management.servlets import servlet_for


class Command(BusCommand):
    help = (
        "List a servlet's services, methods and request fields, through server reflection. "
        "SERVLET is a name from MESSAGE_BUS['SERVLETS'], a host:port or a gRPC target URI; "
        "a target's addresses are shown first."
    )
    runs_config_checks = False
    skip_checks_help = None
    user_errors = (*BusCommand.user_errors, ClientError)

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("servlet", help="servlet name or host:port")
        parser.add_argument("service", nargs="?", help="only this service (short or full name)")
        parser.add_argument("--brief", action="store_true", help="methods only, no fields")

    def run(
        self, *args: Any, servlet: str, service: str | None, brief: bool, **options: Any
    ) -> None:
        target = servlet_for(registry, servlet)
        uri = target.config.target
        if uri is not None:
            # grpcio does not say which addresses its resolver found: resolved here alike.
            found = ", ".join(resolved_addresses(uri))
            self.stdout.write(f"# {uri} resolves to {found}")
        names = [target.resolve(service)] if service else target.services
        for name in names:
            lines = describe_service(target.catalog.services[name], fields=not brief)
            self.stdout.write("\n".join(lines))
