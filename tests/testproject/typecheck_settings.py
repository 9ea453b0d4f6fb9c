"""Settings for mypy's Django plugin (``[tool.mypy]`` in pyproject.toml): the package's app and
the Django and DRF apps it uses, nothing else.

No test app and no generated code: mypy runs before the test session generates
``tests/generated_grpc``, and checks only ``django_grpc_bus``.
"""

SECRET_KEY = "typecheck-only-not-secret"
USE_TZ = True
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "rest_framework",
    "django_grpc_bus",
]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
