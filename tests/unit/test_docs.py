"""The README and the documentation site stay true to what the tests and CI run.

The tutorial page holds the code tests/e2e/test_walkthrough.py runs; the README keeps the two
commands CI runs (`make test`) and links only to files that exist; mkdocs.yml's nav lists every
page (with --strict, `make docs` fails on a page left out, but only where the docs extra is
installed: this runs in every test pass).
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
import yaml
from tutorial_project import CONSUMER_SNIPPET, LIBRARY_MODELS, SETTINGS_TAIL, SHOP_MODELS

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
README = ROOT / "README.md"


def code_blocks(markdown: str) -> list[str]:
    return [block.strip() for block in re.findall(r"```[a-z]*\n(.*?)```", markdown, re.DOTALL)]


@pytest.mark.parametrize(
    "code",
    [LIBRARY_MODELS, SHOP_MODELS, SETTINGS_TAIL, CONSUMER_SNIPPET],
    ids=["library-models", "shop-models", "settings", "consumer"],
)
def test_the_tutorial_page_shows_the_code_the_walkthrough_runs(code):
    blocks = code_blocks((DOCS / "tutorial.md").read_text())
    assert textwrap.dedent(code).strip() in blocks


def test_the_readme_keeps_the_two_commands():
    blocks = "\n".join(code_blocks(README.read_text()))
    assert re.search(r"^make demo\b", blocks, re.MULTILINE)
    assert re.search(r"^make test\b", blocks, re.MULTILINE)  # .ci/run runs it


def test_the_readme_links_to_files_that_exist():
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README.read_text())
    assert targets
    missing = [t for t in targets if "://" not in t and not (ROOT / t).exists()]
    assert missing == []


def nav_pages(entries) -> set[str]:
    pages: set[str] = set()
    for entry in entries:
        if isinstance(entry, str):
            pages.add(entry)
        elif isinstance(entry, dict):
            for value in entry.values():
                pages |= nav_pages([value]) if isinstance(value, str) else nav_pages(value)
    return pages


def test_the_site_nav_lists_every_page():
    class Loader(yaml.SafeLoader):
        pass

    # mkdocs.yml's `!relative` tag (pymdownx.snippets' base_path) is MkDocs' own.
    Loader.add_constructor("!relative", lambda loader, node: None)
    config = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=Loader)
    pages = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    assert pages - nav_pages(config["nav"]) == set()
