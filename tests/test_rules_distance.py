"""krum, multi-krum, monna and caf: float64 references written out here, exact selection on
integer data full of ties, ByzFL as an extra cross-check when installed, non-finite rows, purity,
permutation invariance, the CUDA (Triton) distance path under the interpreter, and runs through the runner."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from byzbn.defenses import CAF, MDA, SMEA, Krum, MoNNA, MultiKrum, make_defense
from byzbn.defenses import caf as caf_module
from byzbn.defenses import distance_rules
from byzbn.kernels import row_selection
from byzbn.kernels.pairwise_distances import pairwise_sq_distances
from byzfl_aggregators import load_byzfl_aggregators
from defense_runs import F_BYZ, parameter_count, run_attacked

NONFINITE = (float("nan"), float("inf"), float("-inf"))


# ------------------------------------------------------------------ float64 references, written plainly
def sq_distances_reference(x: torch.Tensor) -> list[list[float]]:
    xd = x.double()
    n = len(xd)
    ok = [bool(torch.isfinite(r).all()) for r in xd]
    return [[0.0 if i == j else float(((xd[i] - xd[j]) ** 2).sum()) if ok[i] and ok[j] else math.inf
             for j in range(n)] for i in range(n)]


def krum_ranking(x: torch.Tensor, f: int) -> list[int]:
    """Rows by (non-finite, sum of the n − f − 1 smallest distances to the other rows, index)."""
    d = sq_distances_reference(x)
    n = len(d)
    ok = [bool(torch.isfinite(r).all()) for r in x]
    score = [sum(sorted(d[i][j] for j in range(n) if j != i)[: n - f - 1]) for i in range(n)]
    return sorted(range(n), key=lambda i: (not ok[i], score[i], i))


def monna_rows(x: torch.Tensor, f: int, idx: int) -> list[int]:
    d = sq_distances_reference(x)[idx]
    return sorted(sorted(range(len(d)), key=lambda j: (d[j], j))[: len(d) - f])


def mean_rows(x: torch.Tensor, rows) -> torch.Tensor:
    return x.double()[list(rows)].mean(dim=0)


def caf_reference(x: torch.Tensor, f: int) -> torch.Tensor:
    """The filter on the d × d covariance; non-finite rows never enter (weight 0 from the start)."""
    n = x.shape[0]
    rows = torch.stack([r for r in x.double() if bool(torch.isfinite(r).all())])
    c = torch.ones(len(rows), dtype=torch.float64)
    if f == 0:
        return rows.mean(dim=0)
    best, best_mu = math.inf, None
    while float(c.sum()) > n - 2 * f:
        mu = (c[:, None] * rows).sum(dim=0) / c.sum()
        diffs = rows - mu
        cov = (diffs.T * c) @ diffs / c.sum()
        values, vectors = torch.linalg.eigh(cov)
        if float(values[-1]) < best:
            best, best_mu = float(values[-1]), mu
        tau = (diffs @ vectors[:, -1]) ** 2
        c = c * (1 - tau / tau.max())
    return best_mu


def data(n: int, d: int, dtype=torch.float32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (3.0 * torch.randn(n, d, generator=g, dtype=torch.float64) + 1.0).to(dtype)


def tolerance(x: torch.Tensor) -> float:
    finite = x[torch.isfinite(x)].abs()
    return (2e-5 if x.dtype == torch.float32 else 1e-10) * max(float(finite.max()) if finite.numel() else 1.0, 1.0)


def integer_rows(max_n: int = 9, max_d: int = 4):
    """(x float64 with small integer values — exact distances, many ties —, f with 2f < n)."""
    return st.integers(1, max_n).flatmap(lambda n: st.tuples(
        st.integers(1, max_d).flatmap(lambda d: st.lists(st.lists(st.integers(-2, 2), min_size=d, max_size=d),
                                                         min_size=n, max_size=n)),
        st.integers(0, (n - 1) // 2))).map(lambda t: (torch.tensor(t[0], dtype=torch.float64), t[1]))


@pytest.fixture(params=["chunks", "whole"])
def chunking(request, monkeypatch):
    """Both ways the one-row CPU distances stream x: many column chunks or one."""
    monkeypatch.setattr(row_selection, "CPU_CHUNK_ELEMENTS", 7 if request.param == "chunks" else 1 << 30)
    return request.param


# ------------------------------------------------------------------ exact selection
@settings(max_examples=150, deadline=None)
@given(integer_rows(), st.data())
def test_selection_is_exact_on_integer_data_full_of_ties(case, draw):
    x, f = case
    n = x.shape[0]
    ranking = krum_ranking(x, f)
    assert Krum(f).select(x) == ranking[0]
    assert torch.equal(Krum(f)(x), x[ranking[0]])
    m = draw.draw(st.integers(1, n - f))
    assert MultiKrum(f, m=m).select(x).tolist() == sorted(ranking[:m])
    idx = draw.draw(st.integers(0, n - 1))
    assert MoNNA(f, idx=idx).select(x).tolist() == monna_rows(x, f, idx)
    torch.testing.assert_close(MoNNA(f, idx=idx)(x), mean_rows(x, monna_rows(x, f, idx)), rtol=0, atol=1e-12)


def test_krum_picks_the_row_with_the_closest_neighbours_and_the_lower_index_on_ties():
    x = torch.tensor([[0.0], [1.0], [2.0], [3.0], [10.0]])
    # f = 1: scores over the 3 nearest others: 0 → 1+4+9 = 14, 1 → 1+1+4 = 6, 2 → 1+1+4 = 6, 3 → 1+4+9 = 14.
    assert Krum(1).select(x) == 1
    assert torch.equal(Krum(1)(x), torch.tensor([1.0]))
    torch.testing.assert_close(MultiKrum(1)(x), torch.tensor([1.5]))          # rows 0, 1, 2, 3
    torch.testing.assert_close(MultiKrum(1, m=2)(x), torch.tensor([1.5]))     # rows 1, 2
    torch.testing.assert_close(MoNNA(1, idx=4)(x), torch.tensor([4.0]))       # 10 itself, then 3, 2, 1
    torch.testing.assert_close(MoNNA(1, idx=2)(x), torch.tensor([1.5]))       # 2; 1 and 3 tie; 0 (and 4: farther)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n, f", [(1, 0), (6, 0), (7, 3), (8, 2), (9, 4)])
def test_rules_equal_their_float64_reference(chunking, dtype, n, f):
    x = data(n, 12, dtype)
    ranking = krum_ranking(x, f)
    assert torch.equal(Krum(f)(x), x[ranking[0]])
    torch.testing.assert_close(MultiKrum(f)(x).double(), mean_rows(x, ranking[: n - f]), rtol=0, atol=tolerance(x))
    for idx in {0, n - 1}:
        expected = mean_rows(x, monna_rows(x, f, idx))
        torch.testing.assert_close(MoNNA(f, idx=idx)(x).double(), expected, rtol=0, atol=tolerance(x))
    out = CAF(f)(x)
    assert out.dtype == dtype and out.shape == (12,)
    torch.testing.assert_close(out.double(), caf_reference(x, f), rtol=0, atol=tolerance(x))


def test_the_byzfl_rules_agree_when_byzfl_is_installed():
    """ByzFL's Krum, Multi-Krum and MoNNA are deterministic (its CAF and SMEA use one random power step)."""
    byzfl = load_byzfl_aggregators()
    if byzfl is None:
        pytest.skip("ByzFL is not installed")
    for seed, (n, f) in enumerate([(7, 3), (11, 2), (16, 5)]):
        x = data(n, 40, seed=seed)
        x[: f // 2 + 1] += 4.0                      # a few outlying rows to select against
        assert torch.equal(Krum(f)(x), byzfl.Krum(f)(x.clone()))
        torch.testing.assert_close(MultiKrum(f)(x), byzfl.MultiKrum(f)(x.clone()), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(MoNNA(f, idx=n - 1)(x), byzfl.MoNNA(f, idx=n - 1)(x.clone()), rtol=1e-5,
                                   atol=1e-5)


# ------------------------------------------------------------------ CAF's own cases
def test_caf_with_f0_is_the_mean_and_coinciding_rows_return_themselves():
    x = data(6, 5)
    torch.testing.assert_close(CAF(0)(x), x.mean(dim=0))
    same = torch.tensor([[1.0, 2.0]] * 5 + [[9.0, -9.0]])
    torch.testing.assert_close(CAF(2)(same), torch.tensor([1.0, 2.0]))


def test_caf_filters_a_far_row_out():
    x = data(9, 6, torch.float64)
    x[4] += 100.0
    weights = CAF(2).weights(x)
    assert weights[4] == 0.0 and (np.delete(weights, 4) > 0).all()


@settings(max_examples=60, deadline=None)
@given(integer_rows(9, 3), st.floats(-1, 1))
def test_caf_lies_in_the_bounding_box_of_the_finite_rows(case, jitter):
    x, f = case
    x = x + jitter * torch.arange(x.numel(), dtype=torch.float64).view_as(x) / x.numel()
    out = CAF(f)(x)
    assert bool((out >= x.min(dim=0).values - 1e-9).all()) and bool((out <= x.max(dim=0).values + 1e-9).all())


# ------------------------------------------------------------------ invariances, bounds, non-finite rows, purity
RULES = [("krum", {}), ("multi-krum", {}), ("multi-krum", {"m": 2}), ("monna", {"idx": 0}), ("caf", {})]


@pytest.mark.parametrize("name, params", RULES)
def test_rules_are_invariant_to_row_order(name, params):
    x = data(9, 7, torch.float64)
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(1))
    moved = dict(params)
    if name == "monna":
        moved["idx"] = int((perm == params["idx"]).nonzero())
    torch.testing.assert_close(make_defense(name, 3, **moved)(x[perm]), make_defense(name, 3, **params)(x),
                               rtol=0, atol=1e-10)


@pytest.mark.parametrize("name, params", RULES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_at_most_f_non_finite_rows_never_reach_the_output_and_inputs_stay_unchanged(chunking, name, params, dtype):
    f = 3
    x = data(10, 6, dtype)
    x[1, 2], x[4] = NONFINITE[0], NONFINITE[1]
    x[7, 0], x[7, 5] = NONFINITE[2], NONFINITE[1]
    before = x.clone()
    out = make_defense(name, f, **params)(x)
    assert torch.isfinite(out).all()
    assert torch.equal(x.nan_to_num(), before.nan_to_num()) and torch.equal(x.isnan(), before.isnan())
    finite = [i for i in range(10) if i not in (1, 4, 7)]
    if name == "krum":
        assert Krum(f).select(x) == krum_ranking(x, f)[0] and Krum(f).select(x) in finite


def test_monna_refuses_a_non_finite_pivot():
    x = data(7, 4)
    x[2, 1] = float("nan")
    with pytest.raises(ValueError, match="idx=2"):
        MoNNA(2, idx=2)(x)


def test_float32_rows_whose_squares_overflow_are_still_finite_rows():
    x = torch.tensor([[3e19, 0.0], [3e19, 1.0], [3.1e19, 0.0], [float("nan"), 0.0], [-3e19, 0.0]])
    assert Krum(1).select(x) in (0, 1, 2)
    assert torch.isfinite(MultiKrum(1)(x)).all() and torch.isfinite(CAF(1)(x)).all()


@settings(max_examples=100, deadline=None)
@given(integer_rows(), st.data())
def test_krum_returns_an_input_row_and_multi_krum_the_mean_of_some_rows(case, draw):
    x, f = case
    out = Krum(f)(x)
    assert any(torch.equal(out, row) for row in x)
    rows = MultiKrum(f)(x)
    lo, hi = x.min(dim=0).values, x.max(dim=0).values
    assert bool((rows >= lo - 1e-12).all()) and bool((rows <= hi + 1e-12).all())


@pytest.mark.parametrize("rule", [Krum, MultiKrum, MoNNA, CAF])
@pytest.mark.parametrize("n, f", [(4, 2), (1, 1), (6, 3)])
def test_rules_name_f_and_its_range_when_n_is_too_small(rule, n, f):
    with pytest.raises(ValueError, match=rf"f={f} is out of range .* valid 0 <= f <= {(n - 1) // 2} \(2f < n\)"):
        rule(f)(data(n, 3))


@pytest.mark.parametrize("name, params, match", [
    ("multi-krum", {"m": 0}, "m=0"), ("multi-krum", {"m": 6}, "m=6 is out of range"),
    ("monna", {"idx": 7}, "idx=7 is out of range"), ("monna", {"idx": -1}, "idx=-1"), ("krum", {"k": 1}, "unknown")])
def test_bad_parameters_raise_one_clear_error(name, params, match):
    with pytest.raises(ValueError, match=match):
        make_defense(name, 2, **params)(data(7, 3))


@pytest.mark.parametrize("name, params", RULES)
def test_the_differentiable_path_has_finite_gradients_for_the_finite_rows(name, params):
    x = data(8, 5, torch.float64)
    x[3] = float("nan")
    leaf = x.clone().requires_grad_(True)
    out = make_defense(name, 2, **params)(leaf)
    torch.testing.assert_close(out.detach(), make_defense(name, 2, **params)(x))
    out.sum().backward()
    assert torch.isfinite(leaf.grad[torch.arange(8) != 3]).all()


# ------------------------------------------------------------------ the CUDA path: Triton distances
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")   # Inf − Inf in the interpreter
def test_rules_select_the_same_rows_from_the_triton_distance_kernel(monkeypatch):
    """On CUDA the rules read the Triton kernel's distances; the interpreter runs that path here."""
    x = data(12, 300)
    x[2, 7] = float("inf")
    expected = [Krum(3).select(x), MultiKrum(3).select(x).tolist(), MoNNA(3, idx=5).select(x).tolist(),
                CAF(3).weights(x), MDA(3).select(x).tolist(), SMEA(3).select(x).tolist()]
    import byzbn.defenses.subset_rules as subset_rules
    for module in (distance_rules, caf_module, subset_rules):
        monkeypatch.setattr(module, "selection_distances",
                            lambda x: row_selection.selection_distances(x, backend="triton"))
    monkeypatch.setattr(distance_rules, "selection_distances_to_row",
                        lambda x, i: row_selection.selection_distances_to_row(x, i, backend="triton"))
    got = [Krum(3).select(x), MultiKrum(3).select(x).tolist(), MoNNA(3, idx=5).select(x).tolist(),
           CAF(3).weights(x), MDA(3).select(x).tolist(), SMEA(3).select(x).tolist()]
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, rtol=1e-4)


def test_row_helpers_match_their_definitions(chunking):
    x = data(9, 40)
    x[6, 3] = float("nan")
    dist = pairwise_sq_distances(x)
    assert row_selection.finite_rows_from_distances(x, dist).tolist() == [i != 6 for i in range(9)]
    for i in (0, 6):
        torch.testing.assert_close(row_selection.sq_distances_to_row(x, i), dist[i])
    w = torch.tensor([0.0, 2.0, 1.0, 0.0, 0.0, 1.0, 0.0, 3.0, 1.0], dtype=torch.float64)
    expected = (w[:, None] * x.double().nan_to_num()).sum(dim=0) / w.sum()
    torch.testing.assert_close(row_selection.weighted_row_mean(x, w).double(), expected, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="weights"):
        row_selection.weighted_row_mean(x, torch.zeros(9))


# ------------------------------------------------------------------ through the runner
@pytest.mark.parametrize("algorithm", ["dsgd", "fedavg"])
@pytest.mark.parametrize("name", ["krum", "multi-krum", "monna", "caf", "mda", "smea"])
def test_rules_aggregate_both_channels_in_dsgd_and_fedavg_runs(monkeypatch, name, algorithm):
    rule_class = {"krum": Krum, "multi-krum": MultiKrum, "monna": MoNNA, "caf": CAF, "mda": MDA, "smea": SMEA}[name]
    widths, fed = run_attacked(make_defense(name, F_BYZ), algorithm, monkeypatch, rule_class)
    assert parameter_count(fed) in widths       # the gradient (FedAvg: model update) channel ...
    assert len(widths) >= 2                     # ... and the statistics channel (per-layer channel counts)
    assert fed.non_finite() is None
