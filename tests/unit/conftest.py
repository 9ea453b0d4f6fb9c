"""Fixtures of the unit tests: the hand-written proto of tests/handwritten.py, compiled once."""

from __future__ import annotations

import importlib
import sys

import pytest
from handwritten import compile_proto


@pytest.fixture(scope="session")
def book_actions_pb2(tmp_path_factory):
    """``library.book_actions_pb2`` (service ``library.BookActions``: all four kinds of RPC)."""
    folder = compile_proto(tmp_path_factory.mktemp("handwritten_unit"))
    sys.path.insert(0, str(folder))
    try:
        yield importlib.import_module("library.book_actions_pb2")
    finally:
        sys.path.remove(str(folder))
