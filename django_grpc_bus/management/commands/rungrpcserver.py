import logging
import os
import sys
import threading

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError

from django_grpc_bus.handler_hook import HandlerHookError, load_handler_hook
from django_grpc_bus.serving.reloader import RELOAD_GRACE, serve_with_reloader
from django_grpc_bus.serving.server import ServerConfig, ServerError, parse_address, serve
from django_grpc_bus.serving.workers import ensure_port_free, serve_workers


class Command(BaseCommand):
    help = (
        "Serve the services registered on MESSAGE_BUS['ROOT_HANDLERS_HOOK'], with health "
        "checking and server reflection, on [::]:50051 or ADDRPORT."
    )
    # Checks run in handle(), after the handler import has had a chance to fail clearly.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser):
        parser.add_argument(
            "addrport", nargs="?", default="[::]:50051", help="host:port or port (0: any free)"
        )
        parser.add_argument(
            "--dev",
            action="store_true",
            help="development: reload on code changes, run system checks, log every call, "
            "show tracebacks to clients",
        )
        parser.add_argument(
            "--max-workers", type=int, help="threads per process (default MESSAGE_BUS MAX_WORKERS)"
        )
        parser.add_argument(
            "--workers",
            type=int,
            default=1,
            help="processes sharing the port with SO_REUSEPORT (default 1)",
        )
        parser.add_argument(
            "--noreload", action="store_true", help="with --dev, do not reload on code changes"
        )
        parser.add_argument(
            "--skip-checks", action="store_true", help="do not run the system checks first"
        )

    def handle(self, *args, addrport, dev, max_workers, workers, noreload, skip_checks, **options):
        if workers < 1 or (max_workers is not None and max_workers < 1):
            raise CommandError("--workers and --max-workers must be at least 1.")
        try:
            _host, port = parse_address(addrport)
        except ServerError as exc:
            raise CommandError(str(exc)) from None
        if workers > 1 and port == 0:
            raise CommandError("--workers needs a fixed port: workers share it.")
        if workers > 1 and dev:
            raise CommandError("--dev runs one process; leave out --workers.")
        try:
            handler = load_handler_hook(required=True)
        except HandlerHookError as exc:
            raise CommandError(str(exc)) from None
        if dev:
            logging.getLogger("django_grpc_bus").setLevel(logging.INFO)
            if not logging.getLogger().handlers:
                logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
        if not skip_checks:
            # As runserver does: a serializer that would drop fields (E016) must not serve.
            self.check(display_num_errors=dev)
        config = ServerConfig(
            address=addrport,
            max_workers=max_workers,
            dev=dev,
            log_calls=dev,
            reuse_port=workers > 1,
        )

        reloading = dev and not noreload

        def run(stop_event: threading.Event | None = None) -> int:
            try:
                if reloading:  # stopped by serve_with_reloader, which also ends the process
                    return serve(
                        handler,
                        config,
                        announce=self.announce,
                        stop_event=stop_event,
                        grace=RELOAD_GRACE,
                    )
                return serve(handler, config, announce=self.announce, exit_when_cut_short=True)
            except (ServerError, ImproperlyConfigured) as exc:
                if not reloading:
                    raise CommandError(str(exc)) from None
                # In the autoreloader's thread an exception would only print a traceback and
                # leave the process serving nothing: say why, and end, as runserver does.
                self.stderr.write(f"Error: {exc}")
                os._exit(1)

        if workers > 1:
            try:
                ensure_port_free(addrport)
            except ServerError as exc:
                raise CommandError(str(exc)) from None
            code = serve_workers(workers, run, announce=self.announce)
        elif reloading:
            serve_with_reloader(run)
            code = 0
        else:
            code = run()
        if code:
            sys.exit(code)

    def announce(self, text: str) -> None:
        self.stdout.write(text)
        self.stdout.flush()

    def execute(self, *args, **options):
        try:
            return super().execute(*args, **options)
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from None
