"""The tutorial's new project (docs/tutorial.md): its models, settings, consumer and manage.py.

Shared by the tests that build a project with `django-admin startproject` as a new user does.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# The new project must not see the test project's settings or database.
CLEAN_ENV = {"DJANGO_SETTINGS_MODULE": None, "DATABASE_URL": None, "PYTHONPATH": None}

# The tutorial's code, verbatim.
LIBRARY_MODELS = """
from django.db import models


class Author(models.Model):
    name = models.CharField(max_length=100)
    born = models.DateField(null=True, blank=True)


class Book(models.Model):
    title = models.CharField(max_length=200)
    author = models.ForeignKey(Author, on_delete=models.CASCADE)
    price = models.DecimalField(max_digits=8, decimal_places=2)
    published = models.DateTimeField(null=True)
"""

SHOP_MODELS = """
from django.db import models


class Customer(models.Model):
    email = models.EmailField(unique=True)
    vip = models.BooleanField(default=False)
"""

SETTINGS_TAIL = """
INSTALLED_APPS += ["rest_framework", "django_grpc_bus", "library", "shop"]
MESSAGE_BUS = {
    "ROOT_HANDLERS_HOOK": "handlers.handler",
    "SERVICE_META": BASE_DIR / "service_meta.yaml",
}
"""

# The tutorial's consumer snippet, run as is by tests/e2e/test_walkthrough.py.
CONSUMER_SNIPPET = """
from django_grpc_bus.client.registry import registry

author = registry.library.Author.create({"name": "Ursula K. Le Guin"})
book = registry.library.Book.create(
    {"title": "The Dispossessed", "author": author["id"], "price": "12.50"}
)
registry.library.Book.partial_update({"data": {"id": book["id"], "price": "9.99"},
                                      "update_mask": ["price"]})
for row in registry.library.Book.list():      # a generator of dicts
    print(row["title"], row["price"])
"""


def manage(
    project: Path, *args: str, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV}
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,  # subprocess.run kills its own child on expiry
    )
    if check:
        assert result.returncode == 0, (
            f"manage.py {' '.join(args)}:\n{result.stdout}{result.stderr}"
        )
    return result


def start_project(project: Path) -> Path:
    """``django-admin startproject mysite`` in `project`, the tutorial's two apps and their
    models, as a new user has them; the settings module's path, not yet changed."""
    import textwrap

    env = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV}
    subprocess.run(
        [sys.executable, "-m", "django", "startproject", "mysite", str(project)],
        check=True,
        env=env,
        timeout=60,
    )
    manage(project, "startapp", "library")
    manage(project, "startapp", "shop")
    (project / "library/models.py").write_text(textwrap.dedent(LIBRARY_MODELS))
    (project / "shop/models.py").write_text(textwrap.dedent(SHOP_MODELS))
    return project / "mysite/settings.py"
