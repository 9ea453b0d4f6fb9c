from django.apps import AppConfig


class DjangoGrpcBusConfig(AppConfig):
    """Registers the MESSAGE_BUS system checks and the recording of watched models' changes."""

    name = "django_grpc_bus"
    verbose_name = "Django gRPC bus"

    def ready(self) -> None:
        from django_grpc_bus import checks  # noqa: F401  (registers the checks)
        from django_grpc_bus.watch.recording import connect_receivers

        connect_receivers()
