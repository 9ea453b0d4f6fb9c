import argparse
import logging
import sys
import threading
import traceback
from typing import Any

from django.core.management.base import CommandError, CommandParser, SystemCheckError
from django.utils import autoreload
from django.utils.module_loading import import_string

from django_grpc_bus import transport
from django_grpc_bus.checks import unapplied_migrations
from django_grpc_bus.conf import bus_settings
from django_grpc_bus.handler_hook import load_handler_hook
from django_grpc_bus.management.bus_command import BusCommand
from django_grpc_bus.observability.access_log import install_default_handler
from django_grpc_bus.serving.aio_server import serve_aio
from django_grpc_bus.serving.reloader import RELOAD_GRACE, serve_with_reloader
from django_grpc_bus.serving.server import ServerConfig, ServerError, parse_address, serve
from django_grpc_bus.serving.workers import ensure_port_free, serve_workers


def prints_info(logger: logging.Logger) -> bool:
    """Whether an INFO record of `logger` reaches a handler that lets it through."""
    if not logger.isEnabledFor(logging.INFO):
        return False
    probe = logger.makeRecord(logger.name, logging.INFO, __file__, 0, "", (), None)
    current: logging.Logger | None = logger
    while current is not None:
        if any(logging.INFO >= h.level and h.filter(probe) for h in current.handlers):
            return True
        current = current.parent if current.propagate else None
    return False


class Command(BusCommand):
    help = (
        "Serve the services registered on MESSAGE_BUS['ROOT_HANDLERS_HOOK'], with health "
        "checking and server reflection, on [::]:50051 or ADDRPORT."
    )
    # Every check (not only MESSAGE_BUS's) runs in run(), after the handler import has had a
    # chance to fail clearly.
    runs_config_checks = False
    skip_checks_help = "do not run the system checks first"
    user_errors = (*BusCommand.user_errors, ServerError)

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "addrport", nargs="?", default="[::]:50051", help="host:port or port (0: any free)"
        )
        parser.add_argument(
            "--dev",
            action="store_true",
            help="development: reload on code changes, run system checks, show tracebacks to "
            "clients",
        )
        parser.add_argument(
            "--max-workers", type=int, help="threads per process (default MESSAGE_BUS MAX_WORKERS)"
        )
        parser.add_argument(
            "--asyncio",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="serve on grpc.aio: sync service code in the --max-workers threads, async def "
            "actions on the event loop (default MESSAGE_BUS ASYNCIO)",
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
            "--metrics-port",
            metavar="[HOST:]PORT",
            help="serve Prometheus metrics on http://HOST:PORT/metrics (HOST: the server's; "
            "needs the otel extra); worker i of --workers on PORT+i",
        )
        parser.add_argument(
            "--no-access-log",
            dest="access_log",
            action="store_false",
            default=None,
            help="do not print a line per call to stderr (MESSAGE_BUS ACCESS_LOG); LOGGING may "
            "still route the django_grpc_bus.access logger",
        )

    def run(
        self,
        *args: Any,
        addrport: str,
        dev: bool,
        max_workers: int | None,
        workers: int,
        noreload: bool,
        skip_checks: bool,
        metrics_port: str | None = None,
        access_log: bool | None = None,
        asyncio: bool | None = None,
        **options: Any,
    ) -> None:
        if workers < 1 or (max_workers is not None and max_workers < 1):
            raise CommandError("--workers and --max-workers must be at least 1.")
        host, port = parse_address(addrport)
        if workers > 1 and port == 0:
            raise CommandError("--workers needs a fixed port: workers share it.")
        if workers > 1 and dev:
            raise CommandError("--dev runs one process; leave out --workers.")
        metrics_address = self.metrics_address(metrics_port, host, workers)
        reloading = dev and not noreload
        # Under the autoreloader the handler is imported, and the checks run, in the reloader's
        # child (serve_once below): a mistake there waits for the fix, as runserver does.
        handler = None if reloading else load_handler_hook(required=True)
        if bus_settings.ACCESS_LOG if access_log is None else access_log:
            # As runserver logs each request; unless LOGGING already decides about the logger.
            # First, so that --dev's handler below does not change the line's format.
            install_default_handler()  # stderr
        if dev:
            package_logger = logging.getLogger("django_grpc_bus")
            package_logger.setLevel(logging.INFO)
            if not package_logger.hasHandlers():
                # The package's own messages only: a root handler would print Django's
                # autoreloader lines a second time.
                dev_handler = logging.StreamHandler()
                dev_handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
                package_logger.addHandler(dev_handler)
            reloader_logger = logging.getLogger("django.utils.autoreload")
            if not prints_info(reloader_logger):
                # Django's own console handler prints "... changed, reloading." only with DEBUG.
                reloader_handler = logging.StreamHandler()
                reloader_handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
                reloader_logger.addHandler(reloader_handler)
        if not skip_checks and not reloading:
            # As runserver does: a serializer that would drop fields (E016) must not serve.
            self.check(display_num_errors=dev)
            self.warn_unapplied_migrations()
        config = ServerConfig(
            address=addrport,
            max_workers=max_workers,
            dev=dev,
            reuse_port=workers > 1,
            metrics_address=metrics_address,
        )

        reported: tuple[type[Exception], ...] = (SystemCheckError, *self.user_errors)
        run = serve_aio if (bus_settings.ASYNCIO if asyncio is None else asyncio) else serve

        def serve_worker(index: int) -> int:
            if metrics_address is not None and metrics_address[1]:
                config.metrics_address = (metrics_address[0], metrics_address[1] + index)
            return serve_once()

        def serve_once(stop_event: threading.Event | None = None) -> int:
            if not reloading:
                return run(handler, config, announce=self.announce, exit_when_cut_short=True)
            try:  # stopped by serve_with_reloader, which also ends the process
                return run(
                    self.load_in_reloader(skip_checks),
                    config,
                    announce=self.announce,
                    stop_event=stop_event,
                    grace=RELOAD_GRACE,
                )
            except reported as exc:
                self.stderr.write(f"Error: {exc}")
            except Exception:  # the project's code may raise anything while it is imported
                self.stderr.write(traceback.format_exc())
            # As runserver does: the reloader goes on watching, the files imported so far and
            # the one the error came from, and starts a new process once one changes.
            self.stderr.write("Waiting for a file to change to start again (--dev).")
            return 1

        if workers > 1:
            ensure_port_free(addrport)
            code = serve_workers(workers, serve_worker, announce=self.announce)
        elif reloading:
            serve_with_reloader(serve_once)
            code = 0
        else:
            code = serve_once()
        if code:
            sys.exit(code)

    def load_in_reloader(self, skip_checks: bool) -> Any:
        """The handler, imported in the reloader's child, then the system checks."""
        hook = bus_settings.raw("ROOT_HANDLERS_HOOK")
        if isinstance(hook, str):
            try:  # first as is, so that the reloader also watches the file an error came from
                autoreload.check_errors(import_string)(hook)
            except Exception:  # load_handler_hook says why, in a sentence
                pass
        handler = load_handler_hook(required=True)
        if not skip_checks:
            self.check(display_num_errors=True)
            self.warn_unapplied_migrations()
        return handler

    def warn_unapplied_migrations(self) -> None:
        """As runserver's note on unapplied migrations, for the outbox a watch writes to."""
        for warning in unapplied_migrations():
            self.stderr.write(f"WARNING: ({warning.id}) {warning.msg}\n\tHINT: {warning.hint}")

    @staticmethod
    def metrics_address(value: str | None, host: str, workers: int) -> tuple[str, int] | None:
        """``--metrics-port``'s (host, port): ``9100`` on the server's host, or ``HOST:9100``."""
        if value is None:
            return None
        try:
            metrics_host, port = transport.parse_address(value.strip(), default_host=host)
        except transport.AddressError:
            raise CommandError(
                f"--metrics-port {value!r} is not a port or host:port, e.g. 9100."
            ) from None
        if port and port + workers - 1 > 65535:
            raise CommandError(f"--metrics-port {port} leaves no port for each of the workers.")
        return metrics_host, port

    def announce(self, text: str) -> None:
        self.stdout.write(text)
        self.stdout.flush()
