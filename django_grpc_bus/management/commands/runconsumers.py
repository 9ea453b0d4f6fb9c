from typing import Any

from django.core.management.base import CommandError, CommandParser
from django.db import DatabaseError, router

from django_grpc_bus.client.exceptions import ClientError
from django_grpc_bus.consumer import autodiscover, subscriptions
from django_grpc_bus.consumer.runner import (
    SubscriptionError,
    SubscriptionRunner,
    check_subscriptions,
    cursor_model,
    reset,
    run_consumers,
)
from django_grpc_bus.management.bus_command import BusCommand


class Command(BusCommand):
    help = (
        "Run the durable consumers: every @subscribe function of the installed apps' consumers "
        "modules (or those named), each called once per event of its Watch, its cursor kept "
        "in this project's database in the handler's transaction. SIGTERM or Ctrl-C: the "
        "current events finish, then the command exits."
    )
    user_errors = (*BusCommand.user_errors, ClientError, SubscriptionError)

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "subscriptions",
            nargs="*",
            metavar="NAME",
            help="only these subscriptions (default: all); names as --list shows them",
        )
        parser.add_argument(
            "--list",
            action="store_true",
            dest="show",
            help="list the subscriptions and their cursors, then exit",
        )
        parser.add_argument(
            "--reset",
            action="store_true",
            dest="forget",
            help="forget the named subscriptions' cursors (they start again: from a snapshot "
            "when they ask for one, else from now), then exit",
        )
        parser.add_argument(
            "--until-idle",
            type=float,
            metavar="SECONDS",
            help="exit once no subscription has had an event for SECONDS (tests, batch runs)",
        )

    def run(
        self,
        *args: Any,
        subscriptions: list[str],
        show: bool,
        forget: bool,
        until_idle: float | None,
        **options: Any,
    ) -> None:
        autodiscover()
        chosen = self.choose(subscriptions)
        if forget and not subscriptions:
            raise CommandError("--reset needs the names of the subscriptions to reset.")
        if show or forget:
            try:
                if show:
                    self.show(chosen)
                else:
                    self.forget(chosen)
            except DatabaseError as exc:
                raise CommandError(
                    f"The subscriptions' cursors cannot be read ({exc}). Run `manage.py "
                    "migrate` (django_grpc_bus's SubscriptionCursor table)."
                ) from None
            return
        if until_idle is not None and until_idle <= 0:
            raise CommandError("--until-idle must be a number of seconds above 0.")
        for name in check_subscriptions(chosen):
            self.stderr.write(
                f"Subscription {name!r}: its servlet cannot be reached yet; it keeps trying."
            )
        run_consumers(chosen, until_idle=until_idle, started=self.started)
        self.stdout.write("Consumers stopped.")

    def choose(self, names: list[str]) -> list[Any]:
        known = subscriptions()
        if not known:
            raise CommandError(
                "No subscriptions: decorate functions with "
                "@subscribe('<servlet>', '<app>.<Model>') in a consumers.py module of an "
                "installed app."
            )
        unknown = [name for name in names if name not in known]
        if unknown:
            raise CommandError(
                f"No subscription {unknown[0]!r}. Subscriptions: {', '.join(sorted(known))}."
            )
        return [known[name] for name in (names or sorted(known))]

    def started(self, runners: list[SubscriptionRunner]) -> None:
        for runner in runners:
            subscription = runner.subscription
            self.stdout.write(
                f"Consuming {subscription.name}: {subscription.model} on servlet "
                f"{subscription.servlet!r} (database {runner.database!r})"
            )
        self.stdout.flush()

    def show(self, chosen: list[Any]) -> None:
        model = cursor_model()
        for subscription in chosen:
            using = subscription.database or router.db_for_read(model)
            row = model.objects.using(using).filter(name=subscription.name).first()
            where = f"cursor {row.cursor!r}" if row and row.cursor else "no cursor yet"
            self.stdout.write(
                f"{subscription.name}: {subscription.model} on servlet "
                f"{subscription.servlet!r}, {where}"
            )

    def forget(self, chosen: list[Any]) -> None:
        for subscription in chosen:
            count = reset([subscription.name], subscription.database)
            state = "forgotten" if count else "had none"
            self.stdout.write(f"{subscription.name}: cursor {state}.")
