"""A consumer project with an app of its own: consumer_settings plus the storefront app.

Its database is ``DATABASE_URL`` (a SQLite file or PostgreSQL, for processes the tests start);
its one servlet, ``library``, is at ``127.0.0.1:$STOREFRONT_SERVLET_PORT``.
"""

import json
import os

import dj_database_url

from testproject.consumer_settings import *  # noqa: F403

INSTALLED_APPS = [*INSTALLED_APPS, "storefront"]  # noqa: F405
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
DATABASES = {
    "default": dj_database_url.parse(
        os.environ["DATABASE_URL"],
        conn_max_age=int(os.environ.get("STOREFRONT_CONN_MAX_AGE", "0")),
    )
}
MESSAGE_BUS = {
    "SERVLETS": {
        "library": {
            "host": "127.0.0.1",
            "port": int(os.environ.get("STOREFRONT_SERVLET_PORT", "50051")),
            "timeout": 5,
        }
    },
    "WATCH_RECONNECT": {"initial": 0.05, "maximum": 0.5},
    **json.loads(os.environ.get("TEST_MESSAGE_BUS", "{}")),
}
LOGGING = {
    "version": 1,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"django_grpc_bus": {"handlers": ["console"], "level": "INFO"}},
}
