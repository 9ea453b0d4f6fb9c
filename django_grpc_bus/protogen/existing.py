"""Read the field numbers of ``.proto`` files already on disk, so regeneration keeps them."""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from pathlib import Path

from google.protobuf import descriptor_pb2

from django_grpc_bus.protogen.protoc import ProtocError, run_protoc
from django_grpc_bus.protogen.schema import Numbering, wire_type

FieldProto = descriptor_pb2.FieldDescriptorProto


def read_numbering(root: Path, relpaths: Iterable[str]) -> dict[str, dict[str, Numbering]]:
    """``{relpath: {message name: Numbering}}`` for each of `relpaths` that exists under `root`.

    The files are parsed by protoc itself, so whatever protoc accepts is read correctly.
    """
    present = [path for path in relpaths if (root / path).is_file()]
    if not present:
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "existing.pb"
        try:
            run_protoc([f"-I{root}", f"--descriptor_set_out={out}", *present])
        except ProtocError as exc:
            raise ProtocError(
                f"Cannot read the existing .proto files under {root} to keep their field "
                f"numbers; fix or delete the file protoc names:\n{exc}"
            ) from None
        file_set = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    return {proto.name: _numbering(proto) for proto in file_set.file}


def _numbering(proto: descriptor_pb2.FileDescriptorProto) -> dict[str, Numbering]:
    """Each message's numbering by name; a nested message's under its dotted name
    (``BookData.AuthorDetail``), as the messages generated for nested serializers are."""
    result: dict[str, Numbering] = {}
    pending = [(message, message.name) for message in proto.message_type]
    while pending:
        message, name = pending.pop()
        reserved: set[int] = set()
        for span in message.reserved_range:  # `end` is exclusive in descriptors
            reserved.update(range(span.start, span.end))
        result[name] = Numbering(
            numbers={field.name: field.number for field in message.field},
            reserved_numbers=frozenset(reserved),
            reserved_names=frozenset(message.reserved_name),
            types={
                field.name: wire_type(
                    field.type_name or FieldProto.Type.Name(field.type).lower()[5:],
                    field.label == FieldProto.LABEL_REPEATED,
                )
                for field in message.field
            },
        )
        pending += [(nested, f"{name}.{nested.name}") for nested in message.nested_type]
    return result
