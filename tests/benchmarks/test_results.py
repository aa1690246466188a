"""A benchmark's section lands in RESULTS.md and in every quote of it, in the README or a page of docs/."""

from __future__ import annotations

import pytest

from benchmarks import _results

QUOTE = "<!-- quote:speed -->\n{}\n<!-- /quote:speed -->\n"


@pytest.mark.parametrize("page", ["README.md", "docs/benchmarks.md"])
def test_write_section_rewrites_the_quote_where_it_is(tmp_path, monkeypatch, page):
    monkeypatch.setattr(_results, "ROOT", tmp_path)
    monkeypatch.setattr(_results, "RESULTS_MD", tmp_path / "RESULTS.md")
    (tmp_path / "docs").mkdir()
    pages = {"README.md": "# intro\n", "docs/benchmarks.md": "# benchmarks\n", "docs/other.md": "no quote\n"}
    pages[page] += "before\n" + QUOTE.format("old figures") + "after\n"
    for name, text in pages.items():
        (tmp_path / name).write_text(text, encoding="utf-8")

    _results.write_section("speed", "| figure | 2.0 |")

    assert "## speed\n\n| figure | 2.0 |" in (tmp_path / "RESULTS.md").read_text()
    for name, text in pages.items():
        expected = text.replace("old figures", "| figure | 2.0 |")
        assert (tmp_path / name).read_text(encoding="utf-8") == expected, name
    assert "old figures" not in (tmp_path / page).read_text()
