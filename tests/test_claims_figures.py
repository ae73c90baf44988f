"""The FBN paper's Figures 3 and 4 as claim sections (byzbn.grid.claims.fig3 / fig4).

Each rule is checked on results rows built here with three seeds, where the verdict is known: yes, no and
inconclusive cells, equivalence claims ("≈": the interval inside or wholly outside ±3 points) included;
then the CLI regenerates the fig3 block of a page from the stored sweep in docs/results/fig3.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from byzbn.cli import claims as claims_cli
from byzbn.grid.claims import SECTIONS, section_of
from byzbn.grid.claims.common import at_most, within
from byzbn.grid.claims.fig3 import gamma_of, most_homogeneous
from byzbn.grid.claims.page import begin_marker, end_marker
from byzbn.grid.intervals import Interval

FIG3_SWEEP = Path(__file__).resolve().parent.parent / "docs" / "results" / "fig3"
SEEDS = (0, 1, 2)
NOISE = {0: 0.0, 1: 0.02, 2: -0.01}  # shared by every cell of a seed: paired differences cancel it
WIDE = (0.04, -0.04, 0.0)  # a cell's own per-seed jitter: its paired differences get a ±9.9-point interval


def row(scheme, acc, seed, scenario="no-attack", **columns):
    base = {"scheme": scheme, "scenario": scenario, "seed": seed, "final_acc": acc, "best_acc": acc,
            "clients": 10, "byzantine": 0, "attack": "none", "target": "stats", "pre": "none", "defense": "mean",
            "heterogeneity": "iid", "comm_rounds": 200, "status": "ok"}
    return {**base, **columns}


def seeded(scheme, acc, jitter=(0.0, 0.0, 0.0), **columns):
    return [row(scheme, acc + NOISE[s] + j, s, **columns) for s, j in zip(SEEDS, jitter)]


def verdicts(preset, rows):
    return [c.verdict for c in section_of(preset, rows, {}).claims]


# --- the verdict helpers ------------------------------------------------------------------------------

def test_equivalence_and_at_most_verdicts_read_the_whole_interval():
    assert within(Interval(0.01, 0.01, 3, 0.01), 0.03) == "yes"  # [0, 2] inside [−3, 3]
    assert within(Interval(-0.05, 0.01, 3, 0.01), 0.03) == "no"  # [−6, −4] wholly below −3
    assert within(Interval(0.05, 0.01, 3, 0.01), 0.03) == "no"  # [4, 6] wholly above +3
    assert within(Interval(0.02, 0.02, 3, 0.01), 0.03) == "inconclusive"  # [0, 4] straddles +3
    assert within(Interval(0.0, None, 1, None), 0.03) == "inconclusive"  # one seed: no interval
    assert within(None, 0.03) == "no data"
    assert at_most(Interval(-0.2, 0.05, 3, 0.01), -0.1) == "yes"  # [−25, −15] ≤ −10
    assert at_most(Interval(-0.02, 0.05, 3, 0.01), -0.1) == "no"  # [−7, 3] above −10
    assert at_most(Interval(-0.1, 0.05, 3, 0.01), -0.1) == "inconclusive"
    assert at_most(None, -0.1) == "no data"


def test_the_levels_are_read_as_gamma_similarity():
    assert [gamma_of(h) for h in ("iid", "extreme", "gamma:0.5", "dirichlet:0.1")] == [1.0, 0.0, 0.5, None]
    assert most_homogeneous(["gamma:0.5", "gamma:1.0", "gamma:0.0"]) == "gamma:1.0"
    assert {"fig3", "fig4"} <= set(SECTIONS)
    preset = next(a for a in claims_cli.build_parser()._actions if a.dest == "preset")
    assert {"fig3", "fig4"} <= set(preset.choices)


# --- Figure 3 -----------------------------------------------------------------------------------------

def fig3_rows(at_one=0.5, naive_half=0.35, naive_zero=0.2, fixbn_zero=0.45, fbn_zero=0.5, jitter=(0.0, 0.0, 0.0),
              levels=("gamma:1.0", "gamma:0.5", "gamma:0.2", "gamma:0.0")):
    """Centralized at 50 % everywhere; naive BN and FBN carry `jitter`, FixBN and centralized do not."""
    rows = []
    for h in levels:
        naive = {"gamma:1.0": at_one, "gamma:0.5": naive_half, "gamma:0.0": naive_zero}.get(h, 0.45)
        fixbn = {"gamma:1.0": at_one, "gamma:0.0": fixbn_zero}.get(h, 0.48)
        fbn = {"gamma:1.0": at_one, "gamma:0.0": fbn_zero}.get(h, 0.5)
        rows += (seeded("centralized", 0.5, heterogeneity=h) + seeded("naive", naive, jitter, heterogeneity=h)
                 + seeded("fixbn", fixbn, heterogeneity=h) + seeded("fbn", fbn, jitter, heterogeneity=h))
    return rows


def test_fig3_the_papers_picture_says_yes_to_every_claim():
    section = section_of("fig3", fig3_rows(), {})
    assert [c.verdict for c in section.claims] == ["yes"] * 5
    assert "yes in 3 of 3 cells at gamma:1.0" in section.claims[0].byzbn
    assert "naive BN − centralized -15.0 ± 0.0 points at gamma:0.5" == section.claims[1].byzbn
    assert section.claims[4].margin == "−3 ≤ FBN − centralized ≤ +3 points at gamma:0.0"
    assert "| FBN | +0.0 ± 0.0 | +0.0 ± 0.0 | +0.0 ± 0.0 | +0.0 ± 0.0 |" in section.tables[1]
    assert "| centralized | 50.3 ± 3.8 |" in section.tables[0]
    assert list(section.figures) == ["fig3.png"]


def test_fig3_a_picture_wholly_beyond_the_margins_says_no():
    # at gamma:1.0 every scheme 10 points down (wholly outside ±3), naive BN barely loses at 0.5 and 0,
    # FixBN below naive BN at 0, FBN 8 points below centralized at 0
    rows = fig3_rows(at_one=0.4, naive_half=0.5, naive_zero=0.45, fixbn_zero=0.4, fbn_zero=0.42)
    assert verdicts("fig3", rows) == ["no"] * 5


def test_fig3_wide_intervals_are_inconclusive():
    # naive BN and FBN jitter ±4 points per seed: every difference involving them spans ±9.9 points
    rows = fig3_rows(naive_half=0.4, jitter=WIDE)
    found = section_of("fig3", rows, {}).claims
    assert [c.verdict for c in found] == ["inconclusive", "inconclusive", "yes", "inconclusive", "inconclusive"]
    assert "yes in 1, inconclusive in 2 of 3 cells" in found[0].byzbn  # FixBN − centralized is exactly 0


def test_fig3_a_level_missing_from_the_grid_is_no_data():
    found = section_of("fig3", fig3_rows(levels=("gamma:1.0", "gamma:0.0")), {}).claims
    assert found[1].verdict == "no data" and found[1].byzbn == "no gamma:0.5 cell in the grid"
    assert [c.verdict for c in found[2:]] == ["yes", "yes", "yes"]


def test_fig3_a_diverged_run_is_left_out_not_averaged_as_zero():
    rows = fig3_rows()
    for r in rows:
        if (r["scheme"], r["heterogeneity"], r["seed"]) == ("fbn", "gamma:0.0", 2):
            r.update(final_acc=0.0, status="diverged: non-finite loss at step 7")
    section = section_of("fig3", rows, {})
    assert section.claims[4].verdict == "yes" and "+0.0 ± 0.0" in section.claims[4].byzbn
    assert "(1/3 diverged)" in section.tables[0]


# --- Figure 4 -----------------------------------------------------------------------------------------

def fig4_rows(values, jitter=None, defenses=("median", "trimmed-mean"), levels=("gamma:0.5", "gamma:0.0")):
    """values[scheme][server] -> accuracy at every level; rows as the sweep writes them: the no-attack and
    undefended runs repeated under each defense."""
    jitter = jitter or {}
    rows = []
    for h in levels:
        for defense in defenses:
            for scheme, accuracy in values.items():
                for server, scenario in (("no attack", "no-attack"), ("no defense", "attack"),
                                         (defense, "attack+defense")):
                    rows += seeded(scheme, accuracy[server], jitter.get((scheme, server), (0.0, 0.0, 0.0)),
                                   scenario=scenario, heterogeneity=h, defense=defense, pre="nnm", byzantine=2,
                                   attack="sign-flip", target="stats")
    return rows


PAPER = {"naive": {"no attack": 0.45, "no defense": 0.12, "median": 0.45, "trimmed-mean": 0.46},
         "fbn": {"no attack": 0.55, "no defense": 0.30, "median": 0.55, "trimmed-mean": 0.54}}


def test_fig4_the_papers_picture_says_yes_to_every_claim():
    section = section_of("fig4", fig4_rows(PAPER), {})
    assert [c.verdict for c in section.claims] == ["yes"] * 5 + ["–"]
    assert section.claims[0].byzbn == "yes in 2 of 2 cells; gamma:0.5: -33.0 ± 0.0; gamma:0.0: -33.0 ± 0.0 points"
    assert "gamma:0.5: +10.0 ± 0.0; gamma:0.0: +10.0 ± 0.0" in section.claims[5].byzbn
    assert "yes in 4 of 4 cells" in section.claims[4].byzbn
    assert "| naive BN | 45.3 ± 3.8 | 12.3 ± 3.8 | 45.3 ± 3.8 | 46.3 ± 3.8 |" in section.tables[0]
    assert "| FBN − naive BN, both nnm∘median | +10.0 ± 0.0 | +10.0 ± 0.0 |" in section.tables[-1]
    assert "worst case" not in section.statistics  # no worst case over attacks in this section
    assert list(section.figures) == ["fig4.png"]


def test_fig4_no_and_inconclusive_cells():
    values = {"naive": {"no attack": 0.45, "no defense": 0.40, "median": 0.40, "trimmed-mean": 0.40},
              "fbn": {"no attack": 0.50, "no defense": 0.50, "median": 0.50, "trimmed-mean": 0.50}}
    # FBN's median runs jitter ±4 points per seed: its paired differences span ±9.9 points
    found = section_of("fig4", fig4_rows(values, jitter={("fbn", "median"): WIDE}), {}).claims
    # naive BN: −5 (not ≤ −10: no); FBN: 0 (no); naive BN median 5 below no attack (wholly outside ±3: no);
    # FBN median ±9.9 (inconclusive); trimmed − median: naive 0 (yes), FBN ±9.9 (inconclusive)
    assert [c.verdict for c in found] == ["no", "no", "no", "inconclusive", "inconclusive", "–"]
    assert "yes in 2, inconclusive in 2 of 4 cells" in found[4].byzbn


def test_fig4_an_attack_straddling_the_drop_margin_is_inconclusive():
    values = {s: dict(PAPER[s], **{"no defense": PAPER[s]["no attack"] - 0.10}) for s in PAPER}
    found = section_of("fig4", fig4_rows(values, jitter={("naive", "no defense"): WIDE,
                                                         ("fbn", "no defense"): WIDE}), {}).claims
    assert [c.verdict for c in found[:2]] == ["inconclusive", "inconclusive"]


def test_fig4_a_grid_without_the_trimmed_mean_says_no_data_for_it():
    section = section_of("fig4", fig4_rows(PAPER, defenses=("median",)), {})
    assert [c.verdict for c in section.claims] == ["yes"] * 4 + ["no data", "–"]
    assert "| FBN | 55.3 ± 3.8 | 30.3 ± 3.8 | 55.3 ± 3.8 | – |" in section.tables[0]


# --- the CLI on the stored fig3 sweep -----------------------------------------------------------------

@pytest.mark.skipif(not (FIG3_SWEEP / "results.csv").is_file() or not (FIG3_SWEEP / "sweep.json").is_file(),
                    reason="docs/results/fig3 holds no finished fig3 sweep (results.csv and sweep.json)")
def test_the_fig3_block_is_written_between_its_markers(tmp_path):
    out = tmp_path / "fig3"
    out.mkdir()
    for name in ("results.csv", "sweep.json"):
        shutil.copy(FIG3_SWEEP / name, out / name)
    page = tmp_path / "docs" / "RESULTS.md"
    page.parent.mkdir()
    page.write_text(f"# Results\n\nBy hand.\n\n{begin_marker('fig3')}\n\nold\n\n{end_marker('fig3')}\n\nAfter.\n")
    assert claims_cli.main(["fig3", str(out), "--page", str(page)]) == 0
    text = page.read_text()
    assert text.startswith("# Results\n\nBy hand.\n\n") and text.endswith(f"{end_marker('fig3')}\n\nAfter.\n")
    block = text[text.index(begin_marker("fig3")):text.index(end_marker("fig3"))]
    assert "old" not in block and text.count(begin_marker("fig3")) == 1
    assert "| Naive BN collapses at γ = 0 | best ≈ 17 % |" in block
    assert "| scheme − centralized | gamma:1.0 | gamma:0.5 | gamma:0.2 | gamma:0.0 |" in block
    assert "![fig3.png](results/fig3.png)" in block
    assert (page.parent / "results" / "fig3.png").read_bytes().startswith(b"\x89PNG")
