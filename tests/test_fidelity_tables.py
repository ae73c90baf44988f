"""docs/FIDELITY.md's tables are what docs/fidelity/tables.py computes from the committed ladder sweep."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LADDER = ROOT / "docs" / "fidelity" / "scale-ladder"


def _tables():
    spec = importlib.util.spec_from_file_location("fidelity_tables", ROOT / "docs" / "fidelity" / "tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not (LADDER / "results.csv").is_file(), reason="the ladder sweep's results.csv is not here")
def test_the_fidelity_page_holds_the_tables_its_results_give(tmp_path):
    tables = _tables()
    page = tmp_path / "FIDELITY.md"
    page.write_text(f"intro\n{tables.BEGIN}\nstale\n{tables.END}\noutro\n", encoding="utf-8")
    assert tables.main([str(LADDER), "--page", str(page)]) == 0
    text = page.read_text(encoding="utf-8")
    assert text.startswith("intro\n") and text.endswith("\noutro\n") and "stale" not in text
    for rung in ("| base |", "| width 0.5 |", "| steps 1000 |", "| batch_size 50 |", "| momentum 0.99 |"):
        assert rung in text
    block = text[text.index(tables.BEGIN):text.index(tables.END)]
    assert block in (ROOT / "docs" / "FIDELITY.md").read_text(encoding="utf-8")   # the page is not stale


def test_a_page_without_markers_is_refused(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("no markers\n", encoding="utf-8")
    assert _tables().main([str(LADDER), "--page", str(page)]) == 2
    assert page.read_text(encoding="utf-8") == "no markers\n"
