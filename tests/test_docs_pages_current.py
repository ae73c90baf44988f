"""The docs pages are what their committed sweeps give: every generated block and report regenerates byte
for byte from the results.csv and sweep.json committed beside it (no page is stale)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from byzbn.cli import sweep
from byzbn.grid.claims import SECTIONS, section_of
from byzbn.grid.claims.page import begin_marker, end_marker, render
from byzbn.grid.table import read_results

ROOT = Path(__file__).resolve().parents[1]
RESULTS_PAGE = ROOT / "docs" / "RESULTS.md"
CLAIM_SWEEPS = sorted(p for p in SECTIONS if (ROOT / "docs" / "results" / p / "results.csv").is_file())
REPORTS = sorted(p.parent for p in (ROOT / "docs").glob("**/report.md") if (p.parent / "sweep.json").is_file())


@pytest.mark.skipif(not CLAIM_SWEEPS, reason="no claim sweep is committed under docs/results")
@pytest.mark.parametrize("preset", CLAIM_SWEEPS)
def test_each_claim_block_of_the_results_page_is_what_its_sweep_gives(preset):
    out = ROOT / "docs" / "results" / preset
    record = json.loads((out / "sweep.json").read_text(encoding="utf-8"))
    block = render(section_of(preset, read_results(out / "results.csv"), record), record, image_dir="results/")
    page = RESULTS_PAGE.read_text(encoding="utf-8")
    start, end = page.index(begin_marker(preset)), page.index(end_marker(preset))
    assert page[start + len(begin_marker(preset)):end].strip() == block.strip()


@pytest.mark.skipif(not REPORTS, reason="no sweep report is committed under docs")
@pytest.mark.parametrize("out", REPORTS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_each_committed_sweep_report_redraws_byte_for_byte(out, tmp_path, capsys):
    copy = tmp_path / "sweep"
    copy.mkdir()
    for name in ("results.csv", "sweep.json"):
        shutil.copyfile(out / name, copy / name)
    assert sweep.main(["--redraw", "--out", str(copy)]) == 0
    capsys.readouterr()
    for name in ("report.md", "table.md"):
        assert (copy / name).read_text(encoding="utf-8") == (out / name).read_text(encoding="utf-8"), name
