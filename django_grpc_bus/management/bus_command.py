"""What every django-grpc-bus command shares: config checks first, library errors as sentences."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser

from django_grpc_bus.checks import CONFIG_TAG
from django_grpc_bus.protogen.protoc import ProtocError


class BusCommand(BaseCommand):
    """Runs the MESSAGE_BUS configuration checks (not the handler import) before `run`.

    Generation commands must work before handlers.py exists, so the ROOT_HANDLERS_HOOK check,
    which imports it, is left to `manage.py check` and `rungrpcserver`.

    The library raises its own exceptions; those that are the user's to fix (`user_errors`)
    become a ``CommandError`` with the same text here, in one place for every command, so the
    user reads a sentence, never a traceback.
    """

    requires_system_checks: list[str] = []
    # False for commands that must work while the configuration is incomplete, or check later.
    runs_config_checks = True
    # Help of the --skip-checks option; None for a command that has no checks to skip.
    skip_checks_help: str | None = "Skip the MESSAGE_BUS system checks."
    # A command adds the errors of the library it calls (ServerError, ClientError, ...).
    user_errors: tuple[type[Exception], ...] = (ImproperlyConfigured, ProtocError)

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> CommandParser:
        # Django adds --skip-checks only to commands that require checks; ours run a subset.
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        if self.skip_checks_help is not None:
            parser.add_argument("--skip-checks", action="store_true", help=self.skip_checks_help)
        return parser

    def handle(self, *args: Any, **options: Any) -> Any:
        if self.runs_config_checks and not options.get("skip_checks"):
            self.check(tags=[CONFIG_TAG])
        try:
            return self.run(*args, **options)
        except self.user_errors as exc:
            raise CommandError(str(exc)) from exc

    def run(self, *args: Any, **options: Any) -> Any:
        raise NotImplementedError
