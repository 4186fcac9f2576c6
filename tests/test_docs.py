"""The documentation keeps one copy of each fact: measured figures live in docs/benchmarks.md only."""

from __future__ import annotations

import re
from pathlib import Path

from benchmarks.__main__ import TABLE_END, TABLE_START, write_docs

ROOT = Path(__file__).resolve().parents[1]


def _figures(doc: str) -> list[str]:
    table = doc[doc.index(TABLE_START):doc.index(TABLE_END)]
    return [row.split("|")[1].strip() for row in table.splitlines()
            if row.startswith("|") and not row.startswith(("| figure", "|---"))]


def test_measured_figures_are_kept_in_docs_benchmarks_only():
    readme, docs = (ROOT / "README.md").read_text(), (ROOT / "docs" / "benchmarks.md").read_text()
    figures = _figures(docs)
    assert len(figures) >= 10 and docs.count(TABLE_START) == 1
    assert TABLE_START not in readme and TABLE_END not in readme
    quoted = [name for name in figures if name in readme]
    assert quoted == [], f"the README repeats measured figures (they belong in docs/benchmarks.md): {quoted}"
    assert "docs/benchmarks.md" in readme


def test_refreshing_the_table_writes_docs_benchmarks_alone(tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"# Benchmarks\n\n{TABLE_START}\nold\n{TABLE_END}\n\nafter\n")
    assert write_docs("| figure | measured |\n|---|---|\n| x | 1 ms |", doc)
    assert re.search(r"start -->\n\| figure .*\| x \| 1 ms \|\n<!-- bench-table:end -->\n\nafter", doc.read_text(),
                     re.S)
    assert not write_docs("table", tmp_path / "missing.md")
