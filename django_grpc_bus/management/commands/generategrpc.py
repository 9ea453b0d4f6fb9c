from dataclasses import replace
from typing import Any

from django_grpc_bus.conf import bus_settings
from django_grpc_bus.management.bus_command import BusCommand
from django_grpc_bus.meta import load_selection
from django_grpc_bus.protogen.compiler import compile_package
from django_grpc_bus.protogen.files import apply_plan, plan_protos
from django_grpc_bus.protogen.naming import GRPC_PACKAGE, producer_package


class Command(BusCommand):
    help = (
        "Compile the .proto files under PRODUCER_ROOT into the importable package "
        "<PRODUCER_ROOT>/grpc (running generateproto first when files are missing)."
    )

    def run(self, *args: Any, **options: Any) -> None:
        selection = load_selection()
        if not len(selection):
            self.stdout.write("No models are selected; nothing to compile.")
            return
        plan = plan_protos(selection)
        for note in plan.notes:
            self.stderr.write(note)
        missing = [c for c in plan.changes if c.old is None]
        if missing:
            self.stdout.write(f"{len(missing)} .proto file(s) missing; generating them first.")
            apply_plan(replace(plan, changes=tuple(missing)))  # only those: others stay as they are
        elif plan.changes:
            self.stderr.write(
                self.style.WARNING(
                    f"{len(plan.changes)} .proto file(s) differ from the models; compiling the "
                    "files on disk. Run `manage.py generateproto` to update them."
                )
            )
        written, warnings = compile_package(selection)
        if warnings:
            self.stderr.write(warnings)
        for path in written:
            self.stdout.write(f"  {path}")
        package = f"{producer_package()}.{GRPC_PACKAGE}"
        self.stdout.write(
            self.style.SUCCESS(
                f"Compiled {len(selection)} model(s) into {bus_settings.PRODUCER_ROOT / 'grpc'} "
                f"(import it as {package})."
            )
        )
