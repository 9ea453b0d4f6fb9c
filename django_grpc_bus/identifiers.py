"""Names as Python writes them: RPC names in snake_case, and names usable in Python code.

No Django or DRF here: the generator, the serving side and the client all use these.
"""

from __future__ import annotations

import keyword
import re


def snake_case(name: str) -> str:
    """``PartialUpdate`` -> ``partial_update``: the method a service implements for an RPC."""
    return re.sub(r"(?<=[a-z0-9])([A-Z])|(?<=[A-Z])([A-Z])(?=[a-z])", r"_\1\2", name).lower()


def is_python_name(name: object) -> bool:
    """Whether `name` can be written in Python code: an identifier that is not a keyword."""
    return isinstance(name, str) and name.isidentifier() and not keyword.iskeyword(name)


def proto_filter_name(filter_name: str) -> str:
    """django-filter's name of a filter as a proto field name: ``price__lt`` -> ``price_lt``
    (buf lint forbids double underscores). The generator names ``<Model>Filter`` fields by it,
    the server reads them back by it."""
    return re.sub(r"_{2,}", "_", filter_name)
