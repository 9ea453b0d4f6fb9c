"""Settings of the benchmark project: one app, one model, SQLite at ``$BENCH_DATABASE``.

Both servers (``rungrpcserver`` and the hand-written servicer) load these settings, so they
read the same database with the same connection options.
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
        # Persistent connections, as a production deployment configures them.
        "CONN_MAX_AGE": 60,
        "OPTIONS": {
            # Writers wait for each other instead of failing with "database is locked".
            "timeout": 30,
            "transaction_mode": "IMMEDIATE",
            # The database file is in WAL mode (set when it is built).
            "init_command": "PRAGMA synchronous=NORMAL",
        },
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
