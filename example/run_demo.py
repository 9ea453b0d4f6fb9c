"""`make demo`: prepare both producers, serve them, run the storefront consumer, stop everything.

Each producer gets a fresh SQLite database with seed data and its generated gRPC code; both are
served by `manage.py rungrpcserver` on free loopback ports; the storefront's demo command calls
them through the registry. The servers are stopped by PID when the demo ends, fails, or is
interrupted with Ctrl-C.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from django_grpc_bus.testing import ServerProcess

HERE = Path(__file__).resolve().parent
PRODUCERS = {"inventory": "catalog", "accounts": "customers"}
ENV = {"DJANGO_SETTINGS_MODULE": None, "DATABASE_URL": None}


def manage(project: str, *args: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ENV}
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=HERE / project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode:
        sys.exit(f"{project}: manage.py {' '.join(args)} failed:\n{result.stdout}{result.stderr}")


def prepare(project: str) -> None:
    # Code first: every later command imports the handlers, which import the generated modules.
    manage(project, "generateproto", "-v0")
    manage(project, "generategrpc", "-v0")
    database = HERE / project / "db.sqlite3"
    database.unlink(missing_ok=True)
    manage(project, "migrate", "-v0")
    manage(project, "loaddata", "seed", "-v0")
    print(f"  {project}: database seeded, gRPC code generated")


def main() -> int:
    started = time.monotonic()
    print("Preparing the producers")
    for project in PRODUCERS:
        prepare(project)
    servers: dict[str, ServerProcess] = {}
    try:
        for project in PRODUCERS:
            servers[project] = ServerProcess(
                [sys.executable, "manage.py"], cwd=HERE / project, env=ENV
            ).start()
            server = servers[project]
            print(f"  {project}: serving on {server.target} (pid {server.process.pid})")
        env = {k: v for k, v in os.environ.items() if k not in ENV}
        env |= {
            "INVENTORY_PORT": str(servers["inventory"].port),
            "ACCOUNTS_PORT": str(servers["accounts"].port),
        }
        print("Running the storefront consumer\n")
        result = subprocess.run(
            [sys.executable, "manage.py", "storefront_demo"],
            cwd=HERE / "storefront",
            env=env,
            timeout=120,
        )
        return result.returncode
    finally:
        for project, server in servers.items():
            code = server.stop(timeout=15)
            print(f"  {project}: stopped (exit {code})")
        print(f"Demo took {time.monotonic() - started:.1f}s")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
