"""Run grpc_tools' bundled protoc in-process and capture what it prints."""

from __future__ import annotations

import os
import sys
import tempfile
import threading
from functools import lru_cache
from importlib import resources

from grpc_tools import protoc

_lock = threading.Lock()


class ProtocError(Exception):
    """protoc rejected its input; the message is protoc's own output."""


@lru_cache(maxsize=1)
def well_known_include() -> str:
    """grpc_tools' copy of google/protobuf/*.proto, so imports of well-known types resolve."""
    return str(resources.files("grpc_tools") / "_proto")


def run_protoc(args: list[str]) -> str:
    """Run protoc with `args`; return its warnings, or raise ProtocError with its errors.

    protoc writes to file descriptor 2 from C++, out of reach of ``sys.stderr``, so the
    descriptor is pointed at a temporary file for the duration of the call.
    """
    with _lock, tempfile.TemporaryFile() as captured:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            code = protoc.main(["grpc_tools.protoc", f"-I{well_known_include()}", *args])
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        output = captured.read().decode("utf-8", errors="replace").strip()
    if code != 0:
        raise ProtocError(output or f"protoc exited with status {code} and printed nothing")
    return output
