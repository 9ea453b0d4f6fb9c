from pathlib import Path
from typing import Any

from django.core.management.base import CommandError, CommandParser

from django_grpc_bus.conf import base_dir
from django_grpc_bus.management.bus_command import BusCommand
from django_grpc_bus.meta import default_meta, dump_meta


class Command(BusCommand):
    help = (
        "Write a service_meta.yaml that exposes every model of the project's apps (or of the "
        "comma-separated APPS) to --file, or print it."
    )

    # It writes the file SERVICE_META names: a missing or broken one must not stop it.
    runs_config_checks = False

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("apps", nargs="?", default="", help="comma-separated app labels")
        parser.add_argument("--file", help="where to write the YAML (default: standard output)")
        parser.add_argument("--force", action="store_true", help="overwrite an existing --file")

    def run(self, *args: Any, apps: str, file: str | None, force: bool, **options: Any) -> None:
        labels = [label.strip() for label in apps.split(",") if label.strip()]
        text = dump_meta(default_meta(labels))
        if not file:
            self.stdout.write(text, ending="")
            return
        path = Path(file)
        if path.exists() and not force:
            raise CommandError(f"{path} already exists; pass --force to overwrite it.")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        absolute = path.resolve()
        setting = (
            f"BASE_DIR / '{absolute.relative_to(base_dir()).as_posix()}'"
            if absolute.is_relative_to(base_dir())
            else f"'{absolute}'"
        )
        self.stdout.write(self.style.SUCCESS(f"Wrote {path}"))
        self.stdout.write(f"Point MESSAGE_BUS['SERVICE_META'] at it: 'SERVICE_META': {setting}.")
