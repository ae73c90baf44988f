"""The peers' attacks: MinMax / MinSum (NDSS 2021) and Fang et al.'s fang-trimmed / fang-krum (USENIX Sec. 2020).

Each constraint is checked on the returned rows directly (distances recomputed from scratch), γ and λ
are recovered from the rows, and the search's boundary is checked from the other side: 1.05·γ breaks
the constraint, a λ slightly above the returned one is not selected.
"""
from __future__ import annotations

import json
import math

import pytest
import torch

from byzbn.attack_eval import main
from byzbn.attacks import ATTACKS, AttackContext, attack_stats, make_attack
from byzbn.attacks.boundary_search import largest_satisfying
from byzbn.attacks.fang import FangKrum, FangTrimmed, change_direction, is_selected, krum_lambda_bound
from byzbn.attacks.minmax import MinMax, MinSum, perturbation
from byzbn.defenses import functional, make_defense
from byzbn.stats import ClientStats

PEERS = ["minmax", "minsum", "fang-trimmed", "fang-krum"]
KINDS = ["unit", "std", "sign"]


def honest_rows(h=7, d=12, seed=0, shift=0.3, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(h, d, generator=gen, dtype=torch.float64) + shift).to(dtype)


def minmax_lhs_rhs(honest, row):
    """(max_i ‖m − h_i‖, max_{i,j} ‖h_i − h_j‖) in float64, by brute force."""
    x, m = honest.double(), row.double()
    lhs = max(float(torch.linalg.vector_norm(m - hi)) for hi in x)
    rhs = max(float(torch.linalg.vector_norm(hi - hj)) for hi in x for hj in x)
    return lhs, rhs


def minsum_lhs_rhs(honest, row):
    """(Σ_i ‖m − h_i‖², max_i Σ_j ‖h_i − h_j‖²) in float64, by brute force."""
    x, m = honest.double(), row.double()
    lhs = sum(float(torch.linalg.vector_norm(m - hi)) ** 2 for hi in x)
    rhs = max(sum(float(torch.linalg.vector_norm(hi - hj)) ** 2 for hj in x) for hi in x)
    return lhs, rhs


CONSTRAINTS = {"minmax": minmax_lhs_rhs, "minsum": minsum_lhs_rhs}


def recovered_gamma(honest, row, kind):
    """γ with row = mean(H) + γ·p, recovered by projecting row − mean(H) on p."""
    x = honest.double()
    p = perturbation(x, kind)
    return float((row.double() - x.mean(dim=0)) @ p / (p @ p))


# ---------------------------------------------------------------- MinMax / MinSum

@pytest.mark.parametrize("name", ["minmax", "minsum"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_constraint_holds_for_the_rows_and_fails_at_1_05_gamma(name, kind, seed):
    honest = honest_rows(seed=seed)
    context = AttackContext(10, 3)
    rows = make_attack(name, perturbation=kind)(honest, context)
    assert rows.shape == (3, 12) and rows.dtype == honest.dtype
    assert torch.equal(rows, rows[:1].expand(3, -1))  # all f rows equal m
    gamma = recovered_gamma(honest, rows[0], kind)
    mean, p = honest.mean(dim=0), perturbation(honest, kind)
    torch.testing.assert_close(rows[0], mean + gamma * p, rtol=0, atol=1e-12)  # the row lies on mean + γ·p
    assert gamma > 0
    lhs, rhs = CONSTRAINTS[name](honest, rows[0])
    assert lhs <= rhs * (1 + 1e-12)
    lhs, rhs = CONSTRAINTS[name](honest, mean + 1.05 * gamma * p)
    assert lhs > rhs


@pytest.mark.parametrize("name", ["minmax", "minsum"])
def test_the_tolerance_bounds_how_far_gamma_is_below_the_boundary(name):
    honest = honest_rows(seed=3)
    attack = make_attack(name, perturbation="std", tol=1e-6)
    gamma = recovered_gamma(honest, attack(honest, AttackContext(9, 2))[0], "std")
    p, mean = perturbation(honest, "std"), honest.mean(dim=0)
    assert CONSTRAINTS[name](honest, mean + (1 + 2e-6) * gamma * p)[0] > CONSTRAINTS[name](honest, mean)[1]


def test_minsum_matches_its_closed_form():
    # Σ_i ‖mean + γp − h_i‖² = Σ_i a_i + h·γ²‖p‖² and the bound is Σ_i a_i + h·max_i a_i: γ* = √(max_i a_i)/‖p‖.
    honest = honest_rows(seed=4)
    x = honest.double()
    p = perturbation(x, "unit")
    a = ((x - x.mean(dim=0)) ** 2).sum(dim=1)
    closed = math.sqrt(a.max() / (p @ p))
    gamma = recovered_gamma(honest, make_attack("minsum", tol=1e-9)(honest, AttackContext(8, 1))[0], "unit")
    assert gamma == pytest.approx(float(closed), rel=1e-8)


@pytest.mark.parametrize("kind", KINDS)
def test_the_perturbations_are_the_papers(kind):
    honest = honest_rows()
    mean = honest.mean(dim=0)
    want = {"unit": -mean / torch.linalg.vector_norm(mean), "std": -honest.std(dim=0), "sign": -torch.sign(mean)}
    torch.testing.assert_close(perturbation(honest, kind), want[kind])


@pytest.mark.parametrize("name", ["minmax", "minsum"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("honest", [
    torch.tensor([[1.0, -2.0, 3.0]] * 4, dtype=torch.float64),  # identical rows: no spread, γ = 0
    torch.tensor([[1.0, -2.0, 3.0]], dtype=torch.float64),  # one honest row
], ids=["identical", "one-row"])
def test_degenerate_honest_rows_give_the_mean(name, kind, honest):
    rows = make_attack(name, perturbation=kind)(honest, AttackContext(honest.shape[0] + 2, 2))
    assert torch.equal(rows, honest[:1].expand(2, -1))


@pytest.mark.parametrize("name", ["minmax", "minsum"])
@pytest.mark.parametrize("kind", ["unit", "sign"])
def test_a_zero_mean_gives_no_direction_and_the_mean(name, kind):
    honest = torch.tensor([[1.0, -2.0], [-1.0, 2.0]], dtype=torch.float64)
    rows = make_attack(name, perturbation=kind)(honest, AttackContext(3, 1))
    assert torch.equal(rows, torch.zeros(1, 2, dtype=torch.float64))


@pytest.mark.parametrize("name", ["minmax", "minsum"])
def test_non_finite_honest_rows_give_the_mean(name):
    honest = honest_rows(h=4, d=3)
    honest[1, 2] = math.nan
    rows = make_attack(name)(honest, AttackContext(5, 1))
    torch.testing.assert_close(rows[0], honest.mean(dim=0), equal_nan=True)


@pytest.mark.parametrize("name", ["minmax", "minsum"])
def test_float32_rows_keep_the_dtype_and_the_constraint(name):
    honest = honest_rows(dtype=torch.float32)
    rows = make_attack(name, perturbation="sign")(honest, AttackContext(10, 3))
    assert rows.dtype == torch.float32
    lhs, rhs = CONSTRAINTS[name](honest, rows[0])
    assert lhs <= rhs * (1 + 1e-6)


@pytest.mark.parametrize("gamma_init", [1e-6, 10.0, 1e6])
def test_the_result_does_not_depend_on_where_the_search_starts(gamma_init):
    honest = honest_rows(seed=6)
    context = AttackContext(10, 3)
    gammas = [recovered_gamma(honest, make_attack("minmax", gamma_init=g, tol=1e-6)(honest, context)[0], "unit")
              for g in (gamma_init, 10.0)]
    assert gammas[0] == pytest.approx(gammas[1], rel=3e-6)


# ---------------------------------------------------------------- the boundary search

def test_largest_satisfying_brackets_and_refines_a_threshold():
    for boundary in (1e-9, 0.37, 10.0, 12345.6):
        calls = []

        def below(t):
            calls.append(t)
            return t <= boundary

        t = largest_satisfying(below, 10.0, tol=1e-4, floor=1e-12)
        assert t <= boundary < t * (1 + 1e-4)
        assert len(calls) < 80
    assert largest_satisfying(lambda t: False, 1.0, tol=1e-3, floor=1e-3) is None
    assert largest_satisfying(lambda t: True, 1.0, tol=1e-3, floor=0.0, max_steps=3) == 8.0


# ---------------------------------------------------------------- fang-trimmed

@pytest.mark.parametrize("b", [2.0, 1.5, 4.0])
def test_fang_trimmed_values_lie_beyond_the_honest_extremes_within_the_b_range(b):
    gen = torch.Generator().manual_seed(1)
    honest = torch.randn(8, 40, generator=gen, dtype=torch.float64) + torch.linspace(-2, 2, 40, dtype=torch.float64)
    honest[:, 0] = torch.linspace(-3.0, -1.0, 8)  # negative mean, negative max: [max, max / b]
    honest[:, 1] = torch.linspace(1.0, 3.0, 8)  # positive mean, positive min: [min / b, min]
    honest[:, 2] = torch.linspace(-5.0, 1.0, 8)  # negative mean, positive max: [max, b·max]
    honest[:, 3] = torch.linspace(-1.0, 5.0, 8)  # positive mean, negative min: [b·min, min]
    rows = make_attack("fang-trimmed", b=b)(honest, AttackContext(11, 3, generator=torch.Generator().manual_seed(2)))
    assert rows.shape == (3, 40)
    top, bottom, mean = honest.max(dim=0).values, honest.min(dim=0).values, honest.mean(dim=0)
    for j in range(40):
        column = rows[:, j]
        if mean[j] < 0:  # the honest mean decreases: the Byzantine values sit above the honest maximum
            lo, hi = (top[j], b * top[j]) if top[j] > 0 else (top[j], top[j] / b)
        else:  # below the honest minimum
            lo, hi = (bottom[j] / b, bottom[j]) if bottom[j] > 0 else (b * bottom[j], bottom[j])
        assert bool(((column >= lo) & (column <= hi)).all()), (j, column, lo, hi)
    assert [bool(mean[j] < 0) for j in range(4)] == [True, False, True, False]
    # Draws differ between Byzantine rows and coordinates (not one repeated value).
    assert len(set(rows.flatten().tolist())) == rows.numel()


def test_fang_trimmed_drags_the_trimmed_mean_and_the_median_against_the_direction():
    honest = honest_rows(h=7, d=30, seed=8, shift=0.0)
    rows = make_attack("fang-trimmed")(honest, AttackContext(10, 3, generator=torch.Generator().manual_seed(0)))
    x = torch.cat([honest, rows])
    s = change_direction(honest)
    for rule in (functional.coordinate_median, lambda z: functional.trimmed_mean(z, 3)):
        moved = (rule(x) - rule(honest)) * s
        assert bool((moved <= 0).all()) and bool((moved < 0).any())


def test_fang_trimmed_draws_from_the_context_generator_or_a_seeded_one():
    honest = honest_rows()
    attack = make_attack("fang-trimmed")
    draw = [attack(honest, AttackContext(10, 3, generator=torch.Generator().manual_seed(s))) for s in (0, 0, 1)]
    assert torch.equal(draw[0], draw[1]) and not torch.equal(draw[0], draw[2])
    alone = [attack(honest, AttackContext(10, 3, step=t)) for t in (4, 4, 5)]
    assert torch.equal(alone[0], alone[1]) and not torch.equal(alone[0], alone[2])


def test_fang_trimmed_keeps_positive_variances_positive_on_the_statistics_channel():
    gen = torch.Generator().manual_seed(3)
    stats = ClientStats(mean=torch.randn(6, 5, generator=gen, dtype=torch.float64),
                        var=torch.rand(6, 5, generator=gen, dtype=torch.float64) + 0.1, count=torch.full((6,), 16))
    out = attack_stats(stats, make_attack("fang-trimmed"), AttackContext(8, 2, generator=gen), fields="both")
    byzantine = out.var[6:]
    assert bool((byzantine > 0).all()) and bool((byzantine <= stats.var.min(dim=0).values).all())


# ---------------------------------------------------------------- fang-krum

def krum_context(n, f, defense=None):
    return AttackContext(n, f, defense=make_defense("krum", f) if defense is None else defense)


def recovered_lambda(honest, row):
    x = honest.double()
    return float(((x.mean(dim=0) - row.double()) * change_direction(x)).mean())


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_fang_krum_row_is_selected_by_krum_and_a_slightly_larger_lambda_is_not(seed):
    honest = honest_rows(h=8, d=10, seed=seed)
    context = krum_context(11, 3)
    rows = make_attack("fang-krum")(honest, context)
    assert torch.equal(rows, rows[:1].expand(3, -1))
    lam = recovered_lambda(honest, rows[0])
    x = honest.double()
    torch.testing.assert_close(rows[0], x.mean(dim=0) - lam * change_direction(x), rtol=0, atol=1e-12)
    aggregate = context.defense(torch.cat([honest, rows]))
    assert torch.equal(aggregate, rows[0])  # Krum picks the Byzantine row
    bound = krum_lambda_bound(x, 11, 3)
    assert lam <= bound * (1 + 1e-12)  # the paper's bound holds for Krum (so the search only halved)
    if lam > FangKrum().threshold:
        attack = FangKrum()
        assert not is_selected(honest, attack.row_at(honest, lam * 1.01), context)


def test_fang_krum_against_multi_krum_and_nnm_krum_finds_a_selected_row():
    honest = honest_rows(h=8, d=10, seed=5)
    for defense in (make_defense("multi-krum", 3), make_defense("krum", 3, pre="nnm")):
        context = krum_context(11, 3, defense)
        rows = make_attack("fang-krum")(honest, context)
        assert recovered_lambda(honest, rows[0]) > FangKrum().threshold
        assert is_selected(honest, rows[0], context)


def test_fang_krum_falls_back_to_the_threshold_when_nothing_is_selected():
    honest = honest_rows(h=8, d=10, seed=1)
    context = AttackContext(11, 3, defense=lambda x: x[0].clone())  # always the first honest row
    attack = make_attack("fang-krum", threshold=1e-3)
    assert recovered_lambda(honest, attack(honest, context)[0]) == pytest.approx(1e-3, rel=1e-9)


def test_fang_krum_needs_a_defense_and_checks_its_output():
    honest = honest_rows()
    with pytest.raises(ValueError, match="needs defense"):
        make_attack("fang-krum")(honest, AttackContext(10, 3))
    with pytest.raises(ValueError, match="shape"):
        make_attack("fang-krum")(honest, AttackContext(10, 3, defense=lambda x: x))


# ---------------------------------------------------------------- every peer attack

def context_for(name, n=10, f=3):
    return AttackContext(n, f, defense=make_defense("krum", f) if name == "fang-krum" else None,
                         generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", PEERS)
def test_registered_inputs_unchanged_and_f_zero_gives_no_rows(name):
    assert ATTACKS[name] in (MinMax, MinSum, FangTrimmed, FangKrum) and ATTACKS[name].name == name
    honest = honest_rows()
    before = honest.clone()
    rows = make_attack(name)(honest, context_for(name))
    assert torch.equal(honest, before)
    assert rows.shape == (3, 12) and rows.dtype == honest.dtype and bool(torch.isfinite(rows).all())
    empty = make_attack(name)(honest, context_for(name, n=7, f=0))
    assert empty.shape == (0, 12) and empty.dtype == honest.dtype


@pytest.mark.parametrize("name", PEERS)
def test_repr_rebuilds_the_same_attack(name):
    attack = make_attack(name)
    rebuilt = eval(repr(attack), {"make_attack": make_attack})
    assert rebuilt.params() == attack.params()


BAD_PARAMETERS = [
    ("minmax", {"perturbation": "gauss"}, r"perturbation must be one of \['unit', 'std', 'sign'\]"),
    ("minsum", {"gamma_init": 0.0}, "gamma_init must be > 0"),
    ("minmax", {"gamma_init": math.inf}, "gamma_init must be a finite float"),
    ("minsum", {"tol": 1.0}, r"tol must be in \(0, 1\)"),
    ("minmax", {"tol": True}, "tol must be a finite float"),
    ("fang-trimmed", {"b": 1.0}, "b must be > 1"),
    ("fang-trimmed", {"seed": -1}, "seed"),
    ("fang-krum", {"threshold": 0.0}, "threshold must be > 0"),
    ("fang-krum", {"tol": 0.0}, r"tol must be in \(0, 1\)"),
    ("fang-krum", {"lam": 1.0}, r"unknown parameter"),
]


@pytest.mark.parametrize("name,params,message", BAD_PARAMETERS)
def test_bad_parameters_are_one_line_value_errors(name, params, message):
    with pytest.raises(ValueError, match=message):
        make_attack(name, **params)


@pytest.mark.parametrize("name", PEERS)
def test_statistics_channel_per_field(name):
    gen = torch.Generator().manual_seed(4)
    stats = ClientStats(mean=torch.randn(7, 6, generator=gen, dtype=torch.float64),
                        var=torch.rand(7, 6, generator=gen, dtype=torch.float64) + 0.1, count=torch.full((7,), 16))
    context = context_for(name)
    out = attack_stats(stats, make_attack(name), context, fields="both")
    assert out.mean.shape == (10, 6) and out.var.shape == (10, 6)
    assert torch.equal(out.mean[:7], stats.mean) and torch.equal(out.var[:7], stats.var)
    if name != "fang-trimmed":  # deterministic: each field's rows are the attack on that field alone
        torch.testing.assert_close(out.mean[7:], make_attack(name)(stats.mean, context))
        torch.testing.assert_close(out.var[7:], make_attack(name)(stats.var, context))


# ---------------------------------------------------------------- through the CLI, on each channel

def tiny_args(npz, out, *extra):
    return ["--dataset", f"npz:{npz}", "--out", str(out), "--clients", "7", "--byzantine", "2", "--width", "0.125",
            "--batch-size", "8", "--steps", "2", "--eval-every", "2", "--lr", "0.1", "--schemes", "naive,fbn",
            "--heterogeneity", "gamma:0.5", "--quiet", *extra]


@pytest.mark.parametrize("name,target,defense", [("minmax", "stats", "median"), ("minsum", "grads", "trimmed-mean"),
                                                 ("fang-trimmed", "both", "trimmed-mean"),
                                                 ("fang-krum", "both", "krum")])
def test_each_attack_runs_through_attack_eval(tiny_npz, tmp_path, capsys, name, target, defense):
    out = tmp_path / "out"
    code = main(tiny_args(tiny_npz, out, "--attack", name, "--target", target, "--defense", defense, "--pre", "none"))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads((out / "summary.json").read_text())
    for scheme, runs in summary.items():
        assert runs["attack+defense"]["status"] == "ok" and runs["attack+defense"]["steps_done"] == 2, (scheme, runs)
        assert runs["attack"]["steps_done"] >= 1
