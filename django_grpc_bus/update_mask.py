"""PartialUpdate's ``update_mask``: the fields to change, checked, and the data DRF validates."""

from __future__ import annotations

from typing import Any

import grpc

from django_grpc_bus.errors import GrpcError

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def masked_data(serializer_class: Any, request: Any) -> dict[str, Any]:
    """The data of ``request.data`` that ``request.update_mask`` names, for a partial save.

    A masked nullable field left unset is null; a masked field that is neither set nor
    nullable, like an empty mask or a path that is not a writable field, is INVALID_ARGUMENT.
    """
    plan = serializer_class.plan()
    paths = mask_paths(request, plan)
    nulls = [path for path in paths if path in plan.nullable]
    data = serializer_class.data_from_message(request.data, only=paths, nulls=nulls)
    unset = [path for path in paths if path not in data]
    if unset:
        raise GrpcError(
            INVALID,
            f"update_mask names {', '.join(unset)}, but data does not set them and they "
            "cannot be null.",
            [(f"data.{path}", "Set a value or leave it out of update_mask.") for path in unset],
        )
    return data


def mask_paths(request: Any, plan: Any) -> list[str]:
    """The FieldMask's paths, each a writable field; anything else is INVALID_ARGUMENT."""
    paths = list(dict.fromkeys(request.update_mask.paths))
    if not paths:
        raise GrpcError(
            INVALID,
            "update_mask is empty: name the fields to change.",
            [("update_mask", "Name at least one field.")],
        )
    problems = [
        ("update_mask", f"{path}: " + ("read-only" if path in plan.fields else "no such field"))
        for path in paths
        if path not in plan.writable
    ]
    if problems:
        raise GrpcError(
            INVALID,
            "update_mask names fields that cannot be changed ("
            + ", ".join(text for _field, text in problems)
            + f"); writable fields: {', '.join(sorted(plan.writable))}.",
            problems,
        )
    return paths
