"""Render the serializers, services and handler modules from their Django templates."""

from __future__ import annotations

import ast
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from django.template import Context, Engine, TemplateDoesNotExist, TemplateSyntaxError

from django_grpc_bus.conf import bus_settings
from django_grpc_bus.scaffold.plan import SERIALIZERS, SERVICES, AppScaffold, HandlerTarget
from django_grpc_bus.scaffold.report import ScaffoldError
from django_grpc_bus.scaffold.source_format import register_line

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates" / "django_grpc_bus"
SERVICE_TEMPLATES_DIR = TEMPLATES_DIR / "services"
HANDLER_TEMPLATES_DIR = TEMPLATES_DIR / "handlers"
TEMPLATE_SUFFIX = "-tpl"
HANDLERS = "handlers.py"


def template_folder(setting: str, template_name: str, default: Path) -> Path:
    """The folder of MESSAGE_BUS[setting] when it has `template_name`, else the package's."""
    folder = getattr(bus_settings, setting)
    if folder is not None and (folder / template_name).is_file():
        return folder
    return default


def render(setting: str, template_name: str, default: Path, context: dict[str, Any]) -> str:
    """Render a template to Python source; a template that renders invalid Python is refused."""
    folder = template_folder(setting, template_name, default)
    # A private engine: the project's TEMPLATES setting (loaders, autoescape) must not matter.
    engine = Engine(dirs=[str(folder)], autoescape=False)
    where = folder / template_name
    try:
        text: str = engine.get_template(template_name).render(Context(context, autoescape=False))
    except (TemplateSyntaxError, TemplateDoesNotExist) as exc:
        raise ScaffoldError(f"Template {where} cannot be rendered: {exc}") from exc
    text = text.lstrip("\n").rstrip() + "\n"
    try:
        ast.parse(text)
    except SyntaxError as exc:
        raise ScaffoldError(
            f"Template {where} renders invalid Python (line {exc.lineno}: {exc.msg})."
        ) from exc
    return text


def render_app(app: AppScaffold) -> dict[str, str]:
    """The text of the app's ``serializers.py`` and ``services.py``."""
    context = app.context()
    return {
        filename: render(
            "SERVICE_TEMPLATE", filename + TEMPLATE_SUFFIX, SERVICE_TEMPLATES_DIR, context
        )
        for filename in (SERIALIZERS, SERVICES)
    }


def render_handler(target: HandlerTarget, services: Sequence[str]) -> str:
    context = {
        "handler_name": target.name,
        "services": services,
        "registrations": [register_line(target.name, path) for path in services],
    }
    return render("HANDLER_TEMPLATE", HANDLERS + TEMPLATE_SUFFIX, HANDLER_TEMPLATES_DIR, context)
