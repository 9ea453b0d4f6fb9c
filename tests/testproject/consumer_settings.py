"""A consumer project's settings: django_grpc_bus and one servlet; no DRF, no app of its own.

``tests/unit/test_layers.py`` imports the client under these, as a project that only calls other
services would.
"""

from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = "tests-only-not-secret"
USE_TZ = True
INSTALLED_APPS = ["django.contrib.contenttypes", "django_grpc_bus"]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
MESSAGE_BUS = {"SERVLETS": {"library": {"host": "127.0.0.1", "port": 50051}}}
