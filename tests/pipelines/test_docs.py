"""The documentation stays true: option tables match the commands, links resolve, the README stays short."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipelines import _docs

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_options_page_is_rendered_from_the_commands():
    assert _docs.OPTIONS_MD.read_text(encoding="utf-8") == _docs.render_options(), \
        "docs/options.md is stale: run `python -m pipelines._docs`"


def test_every_train_option_is_documented():
    from pipelines import train

    page = _docs.OPTIONS_MD.read_text(encoding="utf-8")
    for param in train.cli.params:
        if param.name != "help":
            assert f"`{[o for o in param.opts if '_' not in o][0]}`" in page, param.name


def test_readme_is_at_most_200_lines():
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 200


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
        if "://" in target or target.startswith("../shared/"):  # the web, and the workspace beside the repo
            continue
        assert (page.parent / target).exists(), f"{page.name}: broken link {target}"
