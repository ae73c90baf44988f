"""--diagnostics through the runner (byzbn.runs.diagnostics_run): exact on constructed cases, and enabling
it changes no trained number."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from byzbn.aggregation import AggregationState, attack_then_aggregate, honest_aggregate
from byzbn.attacks import AttackContext, make_attack
from byzbn.cli.attack_eval import main
from byzbn.defenses import make_defense
from byzbn.runs.diagnostics_report import FIELDS, SUMMARY_COLUMNS, record_key, summary_fields

TINY = ["--clients", "4", "--byzantine", "1", "--steps", "4", "--eval-every", "2", "--batch-size", "4", "--quiet"]


def _run(tmp_path, name, dataset, *args) -> tuple[list[dict], dict]:
    out = tmp_path / name
    assert main(["--dataset", f"npz:{dataset}", *TINY, *args, "--out", str(out)]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return records, json.loads((out / "summary.json").read_text())


def _trained(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith("diag_")} for r in records]


def test_diagnostics_change_no_trained_number(tmp_path, tiny_npz):
    # A stateful and random rule in attack+defense: the references must not advance or draw from them.
    args = ["--schemes", "naive,fbn", "--attack", "sign-flip", "--target", "both", "--defense", "centered-clipping",
            "--pre", "bucketing", "--pre-param", "bucketing.s=2"]
    plain, plain_summary = _run(tmp_path, "plain", tiny_npz, *args)
    with_diag, diag_summary = _run(tmp_path, "diag", tiny_npz, *args, "--diagnostics")
    assert _trained(with_diag) == plain
    assert all(set(r) - set(p) == {record_key(n) for n in FIELDS} | {"diag_layers"} for r, p in zip(with_diag, plain))
    for scheme, runs in diag_summary.items():
        for scenario, entry in runs.items():
            assert set(entry) - set(plain_summary[scheme][scenario]) == set(SUMMARY_COLUMNS)
            drop = {"wall_s", *SUMMARY_COLUMNS}
            assert {k: v for k, v in entry.items() if k not in drop} == \
                   {k: v for k, v in plain_summary[scheme][scenario].items() if k != "wall_s"}
    # Under attack on both channels the Byzantine rows reach both aggregates; the honest-only shadow differs.
    attacked = [r for r in with_diag if r["scenario"] == "attack" and r["step"] > 0]
    assert attacked and all(r["diag_reach_stats"] > 0 and r["diag_reach_grads"] > 0 for r in attacked)
    assert any(r["diag_mismatch_mean"] != r["diag_honest_mismatch_mean"] for r in attacked)
    assert (tmp_path / "diag" / "diagnostics.png").stat().st_size > 0
    assert not (tmp_path / "plain" / "diagnostics.png").exists()


def test_without_attack_the_reach_is_zero_and_the_shadow_is_the_server(tmp_path, tiny_npz):
    records, _ = _run(tmp_path, "quiet", tiny_npz, "--schemes", "naive,fbn", "--attack", "none", "--diagnostics")
    later = [r for r in records if r["step"] > 0]
    assert later and all(r["diag_reach_stats"] == 0.0 and r["diag_reach_grads"] == 0.0 for r in later)
    assert all(r["diag_mismatch_mean"] == r["diag_honest_mismatch_mean"] and
               r["diag_mismatch_var"] == r["diag_honest_mismatch_var"] for r in records)
    first = records[0]
    assert first["step"] == 0 and first["diag_share"] is None and first["diag_reach_stats"] is None
    assert all(0.0 <= r["diag_share"] <= 1.0 for r in later)
    assert all(len(r["diag_layers"]["share"]) == len(r["diag_layers"]["mismatch_mean"]) > 0 for r in later)


def test_centralized_gradient_deviation_is_zero(tmp_path, tiny_npz):
    records, _ = _run(tmp_path, "central", tiny_npz, "--schemes", "centralized,naive", "--attack", "none",
                      "--diagnostics")
    central = [r for r in records if r["scheme"] == "centralized"]
    assert central and all(r["diag_grad_deviation"] == pytest.approx(0.0, abs=1e-6) for r in central)
    assert all(r["diag_grad_deviation"] > 1e-3 for r in records if r["scheme"] == "naive")


def test_clients_holding_identical_data_have_share_zero(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (8, 8)).astype(np.uint8)
    path = tmp_path / "one_image.npz"
    np.savez(path, x_train=np.repeat(image[None], 64, 0), y_train=np.arange(64) % 10,
             x_test=np.repeat(image[None], 20, 0), y_test=np.arange(20) % 10)
    records, _ = _run(tmp_path, "same", path, "--schemes", "naive,fbn", "--attack", "none", "--heterogeneity", "iid",
                      "--diagnostics")
    later = [r for r in records if r["step"] > 0]
    # The CNN's first two BN layers come before its first Dropout, whose masks differ between clients.
    assert later and all(r["diag_layers"]["share"][:2] == [0.0, 0.0] for r in later)
    assert all(r["diag_layers"]["share"][2] > 0.0 for r in later)


def test_fedavg_records_what_is_defined_and_no_gradient_deviation(tmp_path, tiny_npz):
    records, summary = _run(tmp_path, "fedavg", tiny_npz, "--schemes", "fbn", "--attack", "sign-flip", "--target",
                            "both", "--defense", "mean", "--pre", "none", "--algorithm", "fedavg", "--local-steps",
                            "2", "--diagnostics")
    later = [r for r in records if r["step"] > 0]
    assert later and all(r["diag_grad_deviation"] is None and r["diag_share"] is not None for r in later)
    assert all(r["diag_reach_grads"] > 0 for r in later if r["scenario"] == "attack")
    assert summary["fbn"]["attack"]["mean_diag_grad_deviation"] is None


def test_honest_aggregate_draws_what_the_server_draws_and_advances_nothing():
    torch.manual_seed(0)
    honest = torch.randn(6, 5)
    defense = make_defense("centered-clipping", 2, pre=("bucketing", {"s": 2}))   # stateful and random
    context = AttackContext(8, 2, defense=defense, generator=torch.Generator().manual_seed(1))
    state = AggregationState(previous=(torch.ones(5),))
    generator = torch.Generator().manual_seed(3)
    before = generator.get_state().clone()
    reference = honest_aggregate(honest, defense, state, generator, context)
    assert torch.equal(generator.get_state(), before) and state.previous[0].equal(torch.ones(5))
    quiet, _ = attack_then_aggregate(honest, None, defense, state, generator, context)
    assert torch.equal(reference, quiet)
    attacked, _ = attack_then_aggregate(honest, make_attack("sign-flip"), defense, state, generator, context)
    assert not torch.equal(attacked, reference)


def test_summary_fields_take_the_last_value_and_the_mean_of_those_present():
    records = [{record_key("share"): None}, {record_key("share"): 0.2}, {record_key("share"): 0.4}]
    fields = summary_fields(records)
    assert fields["final_diag_share"] == 0.4 and fields["mean_diag_share"] == pytest.approx(0.3)
    assert fields["final_diag_reach_grads"] is None and fields["mean_diag_reach_grads"] is None


def test_every_scheme_records_its_diagnostics(tmp_path, tiny_npz):
    records, _ = _run(tmp_path, "all", tiny_npz, "--schemes", "fixbn,fedtan,hbn,groupnorm", "--attack", "sign-flip",
                      "--target", "stats", "--defense", "mean", "--pre", "none", "--fixbn-freeze", "0.5",
                      "--diagnostics")
    by = {(r["scheme"], r["scenario"], r["step"]): r for r in records}
    # FedTAN's shadow follows the honest-only twins of its in-forward merges.
    quiet = by[("fedtan", "no-attack", 4)]
    assert quiet["diag_honest_mismatch_mean"] == quiet["diag_mismatch_mean"]
    attacked = by[("fedtan", "attack", 4)]
    assert attacked["diag_reach_stats"] > 0 and attacked["diag_honest_mismatch_mean"] != attacked["diag_mismatch_mean"]
    assert by[("hbn", "attack", 4)]["diag_reach_stats"] > 0
    # FixBN after T* = step 2 submits nothing: no reach, no recorded share, the shadow frozen with the server.
    assert by[("fixbn", "attack", 4)]["diag_reach_stats"] == 0.0 and by[("fixbn", "attack", 4)]["diag_share"] is None
    assert by[("fixbn", "attack", 2)]["diag_reach_stats"] > 0
    # GroupNorm has no BN layer: no statistics to compare; its normalization is the union's.
    gn = by[("groupnorm", "no-attack", 4)]
    assert gn["diag_mismatch_mean"] is None and gn["diag_share"] is None and gn["diag_grad_deviation"] == 0.0


def test_an_interrupted_run_resumes_to_the_same_diagnostics(tmp_path, tiny_npz, monkeypatch):
    from byzbn.fl.dsgd import Federation

    args = ["--schemes", "naive", "--attack", "sign-flip", "--defense", "mean", "--pre", "none", "--steps", "6",
            "--checkpoint-every", "3", "--diagnostics"]
    _run(tmp_path, "straight", tiny_npz, *args)
    step = Federation.step

    def interrupted(self, *a, **k):  # dies in the attack run right after its checkpoint at step 3
        if self.scenario.name == "attack" and self.step_count == 3:
            raise KeyboardInterrupt
        return step(self, *a, **k)

    monkeypatch.setattr(Federation, "step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, "killed", tiny_npz, *args)
    monkeypatch.setattr(Federation, "step", step)
    _run(tmp_path, "killed", tiny_npz, *args, "--resume")
    straight, killed = (tmp_path / d / "metrics.jsonl" for d in ("straight", "killed"))
    assert killed.read_bytes() == straight.read_bytes()
