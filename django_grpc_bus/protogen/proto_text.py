"""Render ``.proto`` text from the package's Django template."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from django.template import Context, Engine

from django_grpc_bus.protogen.schema import ProtoFile, template_context

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"
PROTO_TEMPLATE = "django_grpc_bus/proto/model.proto"


@lru_cache(maxsize=1)
def _engine() -> Engine:
    # A private engine: the project's TEMPLATES setting (loaders, autoescape) must not matter.
    return Engine(dirs=[str(TEMPLATES_DIR)], autoescape=False)


def render_proto(proto: ProtoFile) -> str:
    context = Context(template_context(proto), autoescape=False)
    text = _engine().get_template(PROTO_TEMPLATE).render(context)
    return text.rstrip() + "\n"
