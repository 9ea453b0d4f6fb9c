"""What ``manage.py generateservices`` writes: serializers, services and the handler module.

Each selected app gets a serializer and a service per selected model, rendered from Django
templates: the package's own, or the files of the same name in ``MESSAGE_BUS['SERVICE_TEMPLATE']``
and ``MESSAGE_BUS['HANDLER_TEMPLATE']``. The handler module named by ``ROOT_HANDLERS_HOOK``
registers every service.

A user's file is never overwritten silently: an existing file is skipped, overwritten, or
completed with only the definitions and imports it lacks (found with :mod:`ast`, so code the
user wrote is kept as written); registrations are appended only when missing. Nothing is ever
written outside ``BASE_DIR``.

The generated code passes ``ruff check --select E,F,W,I`` and ``ruff format --check`` with ruff's
defaults run from BASE_DIR, where the apps and the generated package are first-party imports.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from django_grpc_bus.conf import bus_settings
from django_grpc_bus.meta import load_selection
from django_grpc_bus.scaffold.plan import DEFAULT_HOOK, SERVICES, handler_target, plan_apps
from django_grpc_bus.scaffold.render import render_app
from django_grpc_bus.scaffold.report import Outcome, Report, ScaffoldError
from django_grpc_bus.scaffold.source_format import from_import
from django_grpc_bus.scaffold.source_reading import registered_paths
from django_grpc_bus.scaffold.write import (
    OnExisting,
    defined_services,
    write_app_file,
    write_handler,
)

__all__ = [
    "OnExisting",
    "Outcome",
    "Report",
    "ScaffoldError",
    "from_import",
    "generate_services",
    "registered_paths",
]


def generate_services(
    labels: Sequence[str] = (),
    *,
    handler: bool = False,
    on_existing: OnExisting = OnExisting.SKIP,
    ask: Callable[[str], OnExisting] | None = None,
) -> Report:
    """Write each selected app's serializers.py and services.py, and with `handler` the handlers.

    Every app, path and template is checked before the first file is written.
    """
    report = Report()
    plans = plan_apps(load_selection(), labels)
    rendered = [(app, render_app(app)) for app in plans]
    hook = bus_settings.raw("ROOT_HANDLERS_HOOK")
    target = handler_target(hook) if handler else None
    if not plans:
        report.hints.append("No models are selected; nothing to generate.")
    for app, files in rendered:
        for filename, text in files.items():
            report.outcomes.append(write_app_file(app.folder / filename, text, on_existing, ask))
    if target is None:
        return report
    services = []
    for app in plans:
        present, missing = defined_services(app)
        services += present
        report.warnings += [
            f"Not registering {path}: {app.label}/{SERVICES} does not define "
            f"{path.rpartition('.')[2]} (--edit adds it)."
            for path in missing
        ]
    report.outcomes += write_handler(target, services)
    if hook is None:
        report.hints.append(
            f"Serve these services: set MESSAGE_BUS['ROOT_HANDLERS_HOOK'] = {DEFAULT_HOOK!r}."
        )
    return report
