import sys
from typing import Any

from django.core.management.base import CommandParser

from django_grpc_bus.management.bus_command import BusCommand
from django_grpc_bus.scaffold import OnExisting, Report, ScaffoldError, generate_services

ANSWERS = {
    "": OnExisting.SKIP,
    "s": OnExisting.SKIP,
    "skip": OnExisting.SKIP,
    "o": OnExisting.OVERWRITE,
    "overwrite": OnExisting.OVERWRITE,
    "a": OnExisting.APPEND,
    "append": OnExisting.APPEND,
}
ACTIONS = ("created", "overwritten", "appended", "unchanged", "skipped")


class Command(BusCommand):
    help = (
        "Write serializers.py and services.py into each selected app (or the comma-separated "
        "APPS) and, with --handler, register their services in the ROOT_HANDLERS_HOOK module. "
        "Existing files are skipped unless --force or --edit says otherwise."
    )
    user_errors = (*BusCommand.user_errors, ScaffoldError)

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("apps", nargs="?", default="", help="comma-separated app labels")
        parser.add_argument(
            "-hd",
            "--handler",
            action="store_true",
            help="also create the handlers module of ROOT_HANDLERS_HOOK (default handlers.py) "
            "or append the registrations it lacks",
        )
        existing = parser.add_mutually_exclusive_group()
        existing.add_argument(
            "--force", action="store_true", help="overwrite existing serializers.py/services.py"
        )
        existing.add_argument(
            "--edit",
            action="store_true",
            help="append to existing files only the classes (and imports) they lack",
        )
        parser.add_argument(
            "--noinput",
            "--no-input",
            action="store_false",
            dest="interactive",
            help="never prompt: existing files are skipped unless --force or --edit is given",
        )

    def run(
        self,
        *args: Any,
        apps: str,
        handler: bool,
        force: bool,
        edit: bool,
        interactive: bool,
        **options: Any,
    ) -> None:
        labels = [label.strip() for label in apps.split(",") if label.strip()]
        report = generate_services(
            labels,
            handler=handler,
            on_existing=self.on_existing(force, edit, interactive),
            ask=self.ask,
        )
        self.print_report(report)

    def on_existing(self, force: bool, edit: bool, interactive: bool) -> OnExisting:
        if force:
            return OnExisting.OVERWRITE
        if edit:
            return OnExisting.APPEND
        if interactive and sys.stdin is not None and sys.stdin.isatty():
            return OnExisting.ASK
        return OnExisting.SKIP

    def ask(self, relpath: str) -> OnExisting:
        while True:
            try:
                answer = input(f"{relpath} exists. [s]kip, [o]verwrite, [a]ppend missing? [s] ")
            except EOFError:
                return OnExisting.SKIP
            choice = ANSWERS.get(answer.strip().lower())
            if choice is not None:
                return choice
            self.stderr.write("Please answer s, o or a.")

    def print_report(self, report: Report) -> None:
        for outcome in report.outcomes:
            detail = f" ({outcome.detail})" if outcome.detail else ""
            line = f"  {outcome.action:<11} {outcome.relpath}{detail}"
            self.stdout.write(self.style.WARNING(line) if outcome.action == "skipped" else line)
        for warning in report.warnings:
            self.stderr.write(self.style.WARNING(warning))
        counts = report.counts()
        summary = ", ".join(f"{counts[action]} {action}" for action in ACTIONS if counts[action])
        if summary:
            self.stdout.write(self.style.SUCCESS(f"{len(report.outcomes)} file(s): {summary}."))
        for hint in report.hints:
            self.stdout.write(self.style.NOTICE(hint))
