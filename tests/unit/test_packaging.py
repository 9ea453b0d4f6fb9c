"""The distributions as a user gets them: sdist and wheel built, the wheel installed and used.

`python -m build` makes the sdist from this checkout and the wheel from that sdist (so a file the
sdist leaves out is missing from the wheel too), as `make dist` does; `twine check` reads both.
The wheel then goes into a new virtualenv with its dependencies from the package index, and a
fresh `django-admin startproject` with one app and one model runs the tutorial's generation
commands from it.

Choices, measured on the 2-core CI machine (whole module 23 s idle, 38 s beside other jobs):
- The virtualenv is clean: `python -m venv --without-pip`, no `--system-site-packages`, which
  would hide a dependency missing from the wheel's metadata. This environment's pip installs
  into it (`pip --python`): the same resolver, and ensurepip's 7 s saved.
- Dependencies come from the index through pip's ordinary cache (about 8 s when warm); no
  wheelhouse to keep in step with pyproject.toml.
- A wheel install runs no build backend, so setuptools' `license` deprecation warning could
  only appear in the build's output, which is what `pip install /path/to/checkout` runs too;
  both outputs are checked.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from pathlib import Path

import pytest

import django_grpc_bus

REPO = Path(__file__).resolve().parents[2]
TEMPLATES = sorted(
    path.relative_to(REPO).as_posix()
    for path in (REPO / "django_grpc_bus/templates").rglob("*")
    if path.is_file() and "__pycache__" not in path.parts
)
# Nothing of this run may leak into the new project: settings, database, import path, venv.
LEAKS = ("DJANGO_SETTINGS_MODULE", "DATABASE_URL", "PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")

MODELS = """
from django.db import models


class Book(models.Model):
    title = models.CharField(max_length=200)
    published = models.DateField(null=True)
"""

SETTINGS_TAIL = """
INSTALLED_APPS += ["rest_framework", "django_grpc_bus", "library"]
MESSAGE_BUS = {
    "ROOT_HANDLERS_HOOK": "handlers.handler",
    "SERVICE_META": BASE_DIR / "service_meta.yaml",
}
"""


def run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [str(arg) for arg in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(map(str, args))}:\n{output}"
    return output


def license_deprecations(output: str) -> list[str]:
    return [line for line in output.splitlines() if re.search(r"licen[cs]e.*deprecat", line, re.I)]


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> tuple[Path, Path, str]:
    """The sdist, the wheel, and the build's output."""
    out = tmp_path_factory.mktemp("dist")
    log = run(sys.executable, "-m", "build", "--outdir", out, REPO, cwd=out)
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    return sdist, wheel, log


def test_build_is_versioned_licensed_and_complete(dist):
    sdist, wheel, log = dist
    version = django_grpc_bus.__version__
    assert re.fullmatch(r"2\.0\.0\.dev\d+", version), version
    assert sdist.name == f"django_grpc_bus-{version}.tar.gz"
    assert wheel.name == f"django_grpc_bus-{version}-py3-none-any.whl"
    assert license_deprecations(log) == []

    with tarfile.open(sdist) as archive:
        in_sdist = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert {"README.md", "LICENSE", "pyproject.toml", *TEMPLATES} <= in_sdist
    assert "django_grpc_bus/py.typed" in in_sdist

    with zipfile.ZipFile(wheel) as archive:
        in_wheel = set(archive.namelist())
        metadata = archive.read(f"django_grpc_bus-{version}.dist-info/METADATA").decode()
    assert set(TEMPLATES) <= in_wheel
    assert "django_grpc_bus/py.typed" in in_wheel  # PEP 561: the package is typed
    assert f"django_grpc_bus-{version}.dist-info/licenses/LICENSE" in in_wheel
    headers = metadata.split("\n\n", 1)[0].splitlines()
    assert f"Version: {version}" in headers
    assert "License-Expression: MIT" in headers
    assert not [line for line in headers if line.startswith("Classifier: License ::")]

    checked = run(
        sys.executable, "-m", "twine", "check", "--strict", sdist, wheel, cwd=sdist.parent
    )
    assert checked.count("PASSED") == 2, checked


def test_wheel_in_a_clean_virtualenv_runs_the_generation_commands(dist, tmp_path):
    _, wheel, _ = dist
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    python = venv / "bin/python"
    installed = run(sys.executable, "-m", "pip", "--python", python, "install", wheel, cwd=tmp_path)
    assert license_deprecations(installed) == []

    env = {k: v for k, v in os.environ.items() if k not in LEAKS}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    where = run(
        python,
        "-c",
        "import importlib.metadata, django_grpc_bus as p;"
        "print(p.__file__, p.__version__, importlib.metadata.version('django-grpc-bus'))",
        cwd=tmp_path,
        env=env,
    ).split()
    site_packages = Path(where[0]).parent.parent
    assert site_packages.is_relative_to(venv), where
    assert where[1:] == [django_grpc_bus.__version__] * 2
    for template in TEMPLATES:
        assert (site_packages / template).is_file(), template

    project = tmp_path / "mysite"
    project.mkdir()
    run(venv / "bin/django-admin", "startproject", "mysite", project, cwd=tmp_path, env=env)

    def manage(*args: str) -> str:
        return run(python, "manage.py", *args, cwd=project, env=env)

    manage("startapp", "library")
    (project / "library/models.py").write_text(textwrap.dedent(MODELS))
    settings = project / "mysite/settings.py"
    settings.write_text(settings.read_text() + SETTINGS_TAIL)

    assert "Wrote service_meta.yaml" in manage("generatemetayaml", "--file", "service_meta.yaml")
    manage("generateproto")
    manage("generategrpc")
    manage("generateservices", "-hd")
    for written in (
        "service_meta.yaml",
        "generated_grpc/library/Book.proto",
        "generated_grpc/grpc/Book_pb2.py",
        "generated_grpc/grpc/Book_pb2_grpc.py",
        "library/serializers.py",
        "library/services.py",
        "handlers.py",
    ):
        assert (project / written).is_file(), written
    assert "no issues" in manage("check")
