"""A durable consumer in a project made by ``django-admin startproject``, with its settings.

The consumer's settings are a new project's (SQLite as startproject writes it, no LOGGING, no
WATCH_RECONNECT) plus django_grpc_bus, an app with a consumers.py and one servlet: the test
project's rungrpcserver (catalog.Book watched). Its migrations need nothing of the user
(``makemigrations --check``), and ``runconsumers`` handles the producer's events.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap

import pytest
from support import add_servlets, bus_env, running_server, servlet_entry
from tutorial_project import CLEAN_ENV, manage

from django_grpc_bus.client.registry import registry

CONSUMERS = """
from django_grpc_bus.consumer import subscribe

from shop.models import Seen


@subscribe("library", "catalog.Book", snapshot=True)
def book_changed(event):
    if event["type"] != "SNAPSHOT_COMPLETE":
        Seen.objects.create(book_id=event["data"]["id"], kind=event["type"])
"""

MODELS = """
from django.db import models


class Seen(models.Model):
    book_id = models.BigIntegerField()
    kind = models.CharField(max_length=20)
"""


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """startproject + startapp shop (a Seen model, a consumers.py), migrated."""
    project = tmp_path_factory.mktemp("consumer") / "storefront"
    project.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV}
    subprocess.run(
        [sys.executable, "-m", "django", "startproject", "storefront", str(project)],
        check=True,
        env=env,
        timeout=60,
    )
    manage(project, "startapp", "shop")
    (project / "shop/models.py").write_text(textwrap.dedent(MODELS))
    (project / "shop/consumers.py").write_text(textwrap.dedent(CONSUMERS))
    return project


def configure(project, port: int) -> None:
    settings = project / "storefront/settings.py"
    text = settings.read_text().split("\n# -- consumer --\n")[0]
    settings.write_text(
        text
        + "\n# -- consumer --\n"
        + 'INSTALLED_APPS += ["django_grpc_bus", "shop"]\n'
        + f'MESSAGE_BUS = {{"SERVLETS": {{"library": {{"host": "127.0.0.1", "port": {port}}}}}}}\n'
    )


def test_a_new_projects_consumer_handles_the_producers_events(shop, fresh_database, settings):
    with running_server(fresh_database, "--no-access-log", env=bus_env(GRACE_PERIOD=1)) as server:
        configure(shop, server.port)
        manage(shop, "makemigrations", "shop")
        manage(shop, "migrate")
        # django_grpc_bus's own migrations are complete under a new project's settings.
        manage(shop, "makemigrations", "--check", "--dry-run")
        add_servlets(settings, producer=servlet_entry(server.port))
        try:
            author = registry.producer["catalog.Author"].create({"name": "Butler"})
            book = registry.producer["catalog.Book"].create(
                {"title": "Kindred", "author": author["id"], "isbn": "9780807083697"}
            )
            first = manage(shop, "runconsumers", "--until-idle", "2")
            registry.producer["catalog.Book"].partial_update(
                {"data": {"isbn": book["isbn"], "title": "Kindred (2nd)"}, "update_mask": ["title"]}
            )
            manage(shop, "runconsumers", "--until-idle", "2")
            listing = manage(shop, "runconsumers", "--list")
        finally:
            registry.reset()
    assert "Consuming shop.consumers.book_changed: catalog.Book on servlet 'library'" in (
        first.stdout
    )
    connection = sqlite3.connect(shop / "db.sqlite3")
    try:
        rows = connection.execute("SELECT book_id, kind FROM shop_seen ORDER BY id").fetchall()
    finally:
        connection.close()
    assert rows == [(book["id"], "CREATED"), (book["id"], "UPDATED")]
    assert "shop.consumers.book_changed: catalog.Book on servlet 'library', cursor" in (
        listing.stdout
    )


def test_a_new_project_without_subscriptions_is_told_where_to_write_them(shop):
    configure(shop, 50051)
    (shop / "shop/consumers.py").rename(shop / "shop/consumers_off.py")
    try:
        result = manage(shop, "runconsumers", check=False)
    finally:
        (shop / "shop/consumers_off.py").rename(shop / "shop/consumers.py")
    assert result.returncode == 1
    assert "No subscriptions: decorate functions with @subscribe(" in result.stderr
    assert "Traceback" not in result.stderr
