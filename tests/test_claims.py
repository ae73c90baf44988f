"""python -m byzbn.claims: the seed papers' claims computed from a sweep's rows, never typed by hand.

The verdict rules (byzbn.grid.claims.*) are checked on rows built here, where the answer is known (three
seeds; yes / no / inconclusive from the paired differences' intervals); the docs block is regenerated from
a stored tiny sweep of the fixbn preset at three seeds (tests/data/claims_fixbn: its results.csv and
sweep.json as the sweep wrote them, its command in sweep.json) and compared with the block
`python -m byzbn.claims fixbn OUT --page PAGE` produced from them.
"""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from byzbn import claims
from byzbn.grid.claims import fedtan, fixbn, hbn, section_of, under_attack
from byzbn.grid.claims.common import seed_text
from byzbn.grid.claims.page import begin_marker, end_marker, write_block
from byzbn.grid.intervals import mean_interval

STORED = Path(__file__).resolve().parent / "data" / "claims_fixbn"


SEEDS = (0, 1, 2)
NOISE = {0: 0.0, 1: 0.02, 2: -0.01}  # shared by every cell of a seed: paired differences cancel it


def row(scheme, acc, seed=0, scenario="no-attack", **columns):
    base = {"scheme": scheme, "scenario": scenario, "seed": seed, "final_acc": acc, "best_acc": acc,
            "clients": 10, "byzantine": 0, "attack": "none", "target": "stats", "pre": "none", "defense": "mean",
            "heterogeneity": "iid", "comm_rounds": 10, "status": "ok"}
    return {**base, **columns}


def seeded(scheme, acc, jitter=(0.0, 0.0, 0.0), **columns):
    """One row per seed: acc + the seed's shared noise + this cell's own jitter per seed."""
    return [row(scheme, acc + NOISE[s] + j, seed=s, **columns) for s, j in zip(SEEDS, jitter)]


def fixbn_rows(bn_over_gn=0.05, extreme_e1_gn_gap=0.03, fix_gap=0.01, kept_gain=0.02, jitter=(0.0, 0.0, 0.0)):
    rows = []
    for het in ("iid", "extreme"):
        for e in ("1", "5"):
            for reset in ("false", "true"):
                momentum = 0.0 if reset == "false" else -kept_gain
                bn = 0.5 + momentum
                gn = bn + extreme_e1_gn_gap if (het, e) == ("extreme", "1") else bn - bn_over_gn
                common = dict(heterogeneity=het, local_steps=e, reset_client_momentum=reset)
                rows += (seeded("centralized", 0.5 + fix_gap, **common) + seeded("naive", bn, jitter, **common)
                         + seeded("groupnorm", gn, **common) + seeded("fixbn", 0.5 + momentum, jitter, **common))
    return rows


def test_the_fixbn_claims_follow_their_rules():
    claims_ = fixbn.section(fixbn_rows(), {}).claims
    assert [c.verdict for c in claims_] == ["yes", "yes", "yes"]
    assert "GN − BN at extreme, E = 1: +3.0 ± 0.0" in claims_[0].byzbn
    assert claims_[1].margin == "FixBN − centralized ≥ −2 points; most cells"
    # GN ahead everywhere, FixBN 5 points short of centralized, reset momentum better: wholly beyond the margins
    broken = fixbn.section(fixbn_rows(bn_over_gn=-0.01, fix_gap=0.05, kept_gain=-0.01), {}).claims
    assert [c.verdict for c in broken] == ["no", "no", "no"]


def test_a_difference_whose_interval_straddles_the_margin_is_inconclusive():
    # BN's and FixBN's own per-seed jitter (±4 points) makes every paired difference's interval wide
    noisy = fixbn.section(fixbn_rows(fix_gap=0.02, jitter=(0.04, -0.04, 0.0)), {}).claims
    assert [c.verdict for c in noisy] == ["inconclusive", "inconclusive", "yes"]  # kept and reset share the jitter
    assert "inconclusive in 4 of 4 cells" in noisy[1].byzbn


def test_a_claim_the_scale_cannot_test_says_so_with_the_rounds_it_had():
    record = {"fixed": {"steps": "12"}}  # E = 1: 12 rounds, E = 5: 2 rounds (< MIN_ROUNDS = 10)
    found = fixbn.section(fixbn_rows(), record).claims
    assert fixbn.MIN_ROUNDS == 10
    assert "E = 5: 2 rounds < 10: left out" in found[1].byzbn and found[1].verdict == "yes"
    found = fixbn.section(fixbn_rows(), {"fixed": {"steps": "8"}}).claims
    assert found[1].verdict == "not testable at this scale (E = 1: 8 rounds < 10; E = 5: 1 rounds < 10)"


def test_a_table_cell_shows_its_diverged_seeds_beside_the_mean_of_the_others():
    rows = seeded("naive", 0.5, heterogeneity="iid", local_steps="1", reset_client_momentum="false")
    rows[2] = dict(rows[2], status="diverged: non-finite loss at step 3", final_acc=0.0)
    assert seed_text(rows, scheme="naive") == "51.0 ± 12.7 (1/3 diverged)"  # 50 and 52: t(1) = 12.71


def test_fedtan_wins_on_non_iid_cells_and_its_rounds_are_counted():
    rows = []
    for het, gain in (("iid", -0.1), ("dirichlet:0.1", 0.02), ("extreme", 0.04)):
        common = dict(heterogeneity=het, local_steps="5", clients=5)
        rows += (seeded("centralized", 0.6, **common) + seeded("naive", 0.4, comm_rounds=20, **common)
                 + seeded("fbn", 0.45, comm_rounds=20, **common)
                 + seeded("fedtan", 0.4 + gain, comm_rounds=260, **common))
    found = fedtan.section(rows, {}).claims
    assert [c.verdict for c in found] == ["yes", "yes", "–"]  # iid (FedTAN below) is not a non-IID cell
    assert "13×" in found[1].byzbn and "+2.0 ± 0.0, +4.0 ± 0.0" in found[0].byzbn


def test_hbn_helps_most_in_the_small_batch_heterogeneous_corner():
    def rows_with(corner_gain):
        rows = []
        for het in ("iid", "extreme"):
            for batch in ("4", "16"):
                gain = corner_gain if (het, batch) == ("extreme", "4") else 0.01
                common = dict(heterogeneity=het, batch_size=batch)
                rows += (seeded("naive", 0.4, **common) + seeded("hbn", 0.4 + gain, **common)
                         + seeded("fbn", 0.42, **common) + seeded("groupnorm", 0.3, **common))
        return rows

    assert [c.verdict for c in hbn.section(rows_with(0.05), {}).claims][:2] == ["yes", "yes"]
    assert [c.verdict for c in hbn.section(rows_with(-0.02), {}).claims][:2] == ["no", "no"]


def test_the_most_robust_pair_is_ranked_by_its_mean_worst_case_over_f():
    rows = seeded("centralized", 0.6, heterogeneity="gamma:0.0")
    accuracy = {("naive", "median", 2): 0.30, ("naive", "median", 4): 0.20,
                ("fbn", "median", 2): 0.45, ("fbn", "median", 4): 0.35,
                ("fbn", "trimmed-mean", 2): 0.44, ("fbn", "trimmed-mean", 4): 0.38}
    for (scheme, defense, f), acc in accuracy.items():
        for attack, target, drop in (("alie", "stats", 0.0), ("bn-adaptive", "both", 0.05)):
            rows += seeded(scheme, acc - drop + 0.05, scenario="attack+defense", byzantine=f, attack=attack,
                           target=target, pre="nnm", defense=defense, heterogeneity="gamma:0.0")
    ranked = under_attack.ranking(under_attack.worst_cases(rows), "gamma:0.0")
    assert [(s, d) for _, _, s, d in ranked] == [("fbn", "nnm∘trimmed-mean"), ("fbn", "nnm∘median"),
                                                  ("naive", "nnm∘median")]
    assert ranked[0][0] == pytest.approx(0.41 + 0.01 / 3) and ranked[0][1] == pytest.approx(0.38 + 0.01 / 3)
    text = under_attack.section(rows, {}).findings[0]
    assert "**fbn with nnm∘trimmed-mean**" in text and "gamma:0.0, attacks on either channel" in text
    assert "+1.0 ± 0.0 points above the next pair" in text
    assert "centralized without attack: 60.3 ± 3.8 %" in text


def test_a_tie_at_chance_is_never_ranked_first():
    rows = []
    for scheme in ("naive", "fbn"):
        rows += seeded(scheme, 0.1, scenario="attack+defense", byzantine=2, attack="alie", pre="nnm",
                       defense="median", heterogeneity="gamma:0.0")
    for r in rows:
        r.update(final_acc=0.0, status="diverged: non-finite loss at step 2")
    worst = under_attack.worst_cases(rows)
    value = worst[("fbn", "nnm∘median", "gamma:0.0", 2)][0]
    assert value.mean == pytest.approx(0.1) and value.diverged == 3 and "(3/3 diverged)" in value.text()
    text = under_attack.section(rows, {}).findings[0]
    assert "no pair keeps its worst case above chance (10 %)" in text and "**" not in text


def test_the_docs_block_is_regenerated_from_the_stored_sweep(tmp_path):
    out = tmp_path / "sweep"
    shutil.copytree(STORED, out)
    page = tmp_path / "docs" / "RESULTS.md"
    page.parent.mkdir()
    page.write_text("# Results\n\nWritten by hand.\n")
    assert claims.main(["fixbn", str(out), "--page", str(page)]) == 0
    text = page.read_text()
    assert text.startswith("# Results\n\nWritten by hand.\n")
    block = text[text.index(begin_marker("fixbn")):text.index(end_marker("fixbn")) + len(end_marker("fixbn"))]
    assert block + "\n" == (STORED / "expected.md").read_text()
    assert (page.parent / "results" / "fixbn.png").read_bytes().startswith(b"\x89PNG")
    # a second regeneration replaces the block, it does not add one
    assert claims.main(["fixbn", str(out), "--page", str(page)]) == 0
    assert page.read_text() == text


def test_a_table_cell_is_the_seed_mean_of_its_results_csv_rows_with_its_interval():
    with open(STORED / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    gn = [float(r["final_acc"]) for r in rows if r["scheme"] == "groupnorm" and r["heterogeneity"] == "extreme"
          and r["local_steps"] == "4" and r["reset_client_momentum"] == "true"]
    assert len(gn) == 3  # three seeds
    expected = (STORED / "expected.md").read_text()
    line = next(l for l in expected.splitlines() if l.startswith("| extreme | 4 |"))
    assert line.split(" | ")[6] == mean_interval(gn).text()


def test_a_wrong_sweep_or_preset_exits_2(tmp_path, capsys):
    assert claims.main(["fixbn", str(tmp_path)]) == 2
    assert "holds no finished sweep" in capsys.readouterr().err
    shutil.copytree(STORED, tmp_path / "s")
    assert claims.main(["hbn", str(tmp_path / "s")]) == 2
    assert "not of preset 'hbn'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no claim section"):
        section_of("no-such-preset", [], {})


def test_write_block_appends_once_then_replaces(tmp_path):
    page = tmp_path / "page.md"
    write_block(page, "hbn", "first")
    write_block(page, "hbn", "second")
    assert page.read_text().count(begin_marker("hbn")) == 1 and "second" in page.read_text()


def test_a_pair_attacked_by_fewer_attacks_is_shown_but_not_ranked():
    rows = []
    for scheme, attacks in (("fbn", ("alie", "bn-adaptive")), ("fedtan", ("alie",))):
        for attack in attacks:
            acc = 0.5 if scheme == "fedtan" else (0.3 if attack == "alie" else 0.2)
            rows.append(row(scheme, acc, scenario="attack+defense", byzantine=2, attack=attack, pre="nnm",
                            defense="median", heterogeneity="gamma:0.0"))
    worst = under_attack.worst_cases(rows)
    assert [s for _, _, s, _ in under_attack.ranking(worst, "gamma:0.0")] == ["fbn"]
    assert [s for _, _, s, _ in under_attack.ranking(worst, "gamma:0.0", full_only=False)] == ["fedtan", "fbn"]
    section = under_attack.section(rows, {})
    assert "**fbn with nnm∘median**" in section.findings[0]
    assert "Not ranked" in section.findings[0] and "fedtan with nnm∘median (50.0 %)" in section.findings[0]
    assert "| fedtan (1 of 2 attacks) |" in section.tables[0]
