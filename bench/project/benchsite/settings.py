"""Settings of the benchmark project: one app, one model, SQLite at ``$BENCH_DATABASE``.

Both servers (``rungrpcserver`` and the hand-written servicer) load these settings, so they
read the same database with the same connection options.

The database entry is the one ``django-admin startproject`` writes for SQLite (ENGINE and
NAME, no OPTIONS: Django's deferred transactions, Python's 5 s busy timeout, the default
rollback-journal mode) plus ``CONN_MAX_AGE``, which Django's deployment checklist documents
for production. bench/README.md says which settings are a new project's and which are not.
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = "bench-only-not-a-secret"
DEBUG = False
ALLOWED_HOSTS: list[str] = []

INSTALLED_APPS = ["rest_framework", "django_grpc_bus", "shop"]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("BENCH_DATABASE", BASE_DIR / "books.sqlite3"),
        # Not a new project's (its default is 0): persistent connections, as Django's
        # deployment checklist advises for production. With 0, django-grpc-bus would open a
        # connection per call and the hand-written servicer (no request signals) would not.
        "CONN_MAX_AGE": 60,
    }
}

TIME_ZONE = "UTC"
USE_TZ = True
USE_I18N = False
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

MESSAGE_BUS = {
    "ROOT_HANDLERS_HOOK": "handlers.handler",
    "SERVICE_META": BASE_DIR / "service_meta.yaml",
}

if os.environ.get("BENCH_TRACING"):
    # The observability rows (bench/README.md): each sampled call's span built, batched and
    # handed to an exporter that drops it, so the cost measured is the package's and the SDK's,
    # not an exporter's encoding and network. BENCH_TRACING is the share of traces sampled
    # (1: every call, the SDK's default sampler; 0.1: ParentBased(TraceIdRatioBased(0.1))).
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    class DroppingExporter(SpanExporter):
        def export(self, spans):
            return SpanExportResult.SUCCESS

    _ratio = float(os.environ["BENCH_TRACING"])
    _provider = TracerProvider(
        **({} if _ratio >= 1 else {"sampler": ParentBased(TraceIdRatioBased(_ratio))})
    )
    _provider.add_span_processor(BatchSpanProcessor(DroppingExporter()))
    trace.set_tracer_provider(_provider)
