import sys
from typing import Any

from django.core.management.base import CommandParser

from django_grpc_bus.management.bus_command import BusCommand
from django_grpc_bus.meta import load_selection
from django_grpc_bus.protogen.files import apply_plan, plan_protos


class Command(BusCommand):
    help = "Write one .proto file per model selected by service_meta.yaml under PRODUCER_ROOT."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--check",
            action="store_true",
            help="write nothing; exit with status 1 and print a diff when files would change",
        )

    def run(self, *args: Any, check: bool, **options: Any) -> None:
        plan = plan_protos(load_selection())
        for note in plan.notes:
            self.stderr.write(note)
        if check:
            for change in plan.changes:
                self.stdout.write(change.diff(), ending="")
            if plan.changes:
                self.stderr.write(
                    f"{len(plan.changes)} .proto file(s) under {plan.root} are out of date; "
                    "run `manage.py generateproto`."
                )
                sys.exit(1)
            self.stdout.write(f"{len(plan.files)} .proto file(s) are up to date.")
            return
        apply_plan(plan)
        for change in plan.changes:
            self.stdout.write(f"  {change.verb} {change.relpath}")
        unchanged = len(plan.files) - sum(1 for c in plan.changes if c.new is not None)
        self.stdout.write(
            self.style.SUCCESS(
                f"{len(plan.changes)} file(s) written or removed, {unchanged} unchanged, "
                f"under {plan.root}."
            )
        )
