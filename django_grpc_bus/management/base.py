"""What every django-grpc-bus command shares: config checks first, library errors as sentences."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError

from django_grpc_bus.checks import CONFIG_TAG
from django_grpc_bus.protogen.protoc import ProtocError


class BusCommand(BaseCommand):
    """Runs the MESSAGE_BUS configuration checks (not the handler import) before `run`.

    Generation commands must work before handlers.py exists, so the ROOT_HANDLERS_HOOK check,
    which imports it, is left to `manage.py check` and `rungrpcserver`.
    """

    requires_system_checks: list[str] = []
    # False for commands that must work while the configuration is incomplete.
    runs_config_checks = True

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any):
        # Django adds --skip-checks only to commands that require checks; ours run a subset.
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        parser.add_argument(
            "--skip-checks", action="store_true", help="Skip the MESSAGE_BUS system checks."
        )
        return parser

    def handle(self, *args: Any, **options: Any) -> Any:
        if self.runs_config_checks and not options.get("skip_checks"):
            self.check(tags=[CONFIG_TAG])
        try:
            return self.run(*args, **options)
        except (ImproperlyConfigured, ProtocError) as exc:
            raise CommandError(str(exc)) from exc

    def run(self, *args: Any, **options: Any) -> Any:
        raise NotImplementedError
