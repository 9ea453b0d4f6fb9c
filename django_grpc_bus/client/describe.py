"""Human-readable descriptions of a servlet's services, methods and message fields."""

from __future__ import annotations

from google.protobuf import descriptor

from django_grpc_bus.client import filters
from django_grpc_bus.conversion.messages import repeated
from django_grpc_bus.identifiers import snake_case

FD = descriptor.FieldDescriptor
SCALARS = {
    value: name.removeprefix("TYPE_").lower()
    for name, value in vars(FD).items()
    if name.startswith("TYPE_")
}


def field_type(field: FD) -> str:
    if field.message_type is not None:
        base = field.message_type.full_name
    elif field.enum_type is not None:
        base = field.enum_type.full_name
    else:
        base = SCALARS.get(field.type, "?")
    if repeated(field):
        return f"repeated {base}"
    return f"optional {base}" if field.has_presence and field.message_type is None else base


def describe_message(message: descriptor.Descriptor, indent: str = "      ") -> list[str]:
    return [f"{indent}{field.name}: {field_type(field)}" for field in message.fields]


def describe_request(
    service: descriptor.ServiceDescriptor, request: descriptor.Descriptor, indent: str = "      "
) -> list[str]:
    """A request's fields; a List or Count request's `filter` with its own fields, each with
    Django's spelling where it differs (``title_icontains: optional string (title__icontains)``).
    """
    lines = describe_message(request, indent)
    message = filters.filter_message(request)
    if message is None:
        return lines
    rows = filters.row_fields(service, request)
    at = next(i for i, field in enumerate(request.fields) if field.name == "filter") + 1
    nested = [
        f"{indent}  {field.name}: {field_type(field)}{filters.also_spelt(field.name, rows)}"
        for field in message.fields
    ]
    return lines[:at] + nested + lines[at:]


def describe_service(service: descriptor.ServiceDescriptor, fields: bool = True) -> list[str]:
    lines = [service.full_name]
    for method in service.methods:
        sent = "stream " if method.client_streaming else ""
        stream = "stream " if method.server_streaming else ""
        lines.append(
            f"  {snake_case(method.name)} ({method.name}): {sent}{method.input_type.full_name} "
            f"-> {stream}{method.output_type.full_name}"
        )
        if fields:
            lines.append("    request:")
            lines += describe_request(service, method.input_type) or ["      (no fields)"]
    return lines
