from django.core.management.base import BaseCommand, CommandError

from django_grpc_bus.client.describe import describe_service
from django_grpc_bus.client.exceptions import ClientError
from django_grpc_bus.client.registry import registry
from django_grpc_bus.management.servlets import servlet_for


class Command(BaseCommand):
    help = (
        "List a servlet's services, methods and request fields, through server reflection. "
        "SERVLET is a name from MESSAGE_BUS['SERVLETS'] or a host:port."
    )
    requires_system_checks: list[str] = []

    def add_arguments(self, parser):
        parser.add_argument("servlet", help="servlet name or host:port")
        parser.add_argument("service", nargs="?", help="only this service (short or full name)")
        parser.add_argument("--brief", action="store_true", help="methods only, no fields")

    def handle(self, *args, servlet, service, brief, **options):
        target = servlet_for(registry, servlet)
        try:
            names = [target.resolve(service)] if service else target.services
            for name in names:
                lines = describe_service(target.catalog.services[name], fields=not brief)
                self.stdout.write("\n".join(lines))
        except ClientError as exc:
            raise CommandError(str(exc)) from None
