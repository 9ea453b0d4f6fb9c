"""Settings of the test project: SQLite by default, PostgreSQL when DATABASE_URL says so."""

import json
import os
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = "tests-only-not-secret"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "rest_framework",
    "rest_framework.authtoken",
    "django_grpc_bus",
    "catalog",
    "shop",
    "faults",
]

DATABASES = {
    "default": dj_database_url.parse(os.environ["DATABASE_URL"])
    if os.environ.get("DATABASE_URL")
    else {"ENGINE": "django.db.backends.sqlite3", "NAME": BASE_DIR / "test.sqlite3"}
}

# One test database per test run, so that runs side by side (CI and a developer) never drop
# each other's database.
# SQLite keeps a new project's settings (no OPTIONS): the package's writes must be correct
# without any (django_grpc_bus.transactions).
if "sqlite" not in DATABASES["default"]["ENGINE"]:  # SQLite's test database is in memory
    DATABASES["default"]["TEST"] = {"NAME": f"test_grpcbus_{os.getpid()}"}

# Server-process tests vary these through the environment of the process they start.
DATABASES["default"]["CONN_MAX_AGE"] = int(os.environ.get("TEST_CONN_MAX_AGE", "0"))
DATABASES["default"]["CONN_HEALTH_CHECKS"] = os.environ.get("TEST_CONN_HEALTH_CHECKS") == "1"

MESSAGE_BUS = {
    "ROOT_HANDLERS_HOOK": "handlers.handler",
    # Every model of the test apps, as without the file, and catalog.Book watched.
    "SERVICE_META": "service_meta.yaml",
    **json.loads(os.environ.get("TEST_MESSAGE_BUS", "{}")),
}
# DJANGO_GRPC_BUS_TEST_ASYNCIO=1 runs the suite's servers (processes and in-process) on the
# asyncio server, unless a test's TEST_MESSAGE_BUS says otherwise.
if os.environ.get("DJANGO_GRPC_BUS_TEST_ASYNCIO") == "1":
    MESSAGE_BUS.setdefault("ASYNCIO", True)
