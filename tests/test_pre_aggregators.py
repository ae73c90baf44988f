"""bucketing, clipping and arc: float64 references written out here, ByzFL as an extra cross-check
when installed, the generator API, non-finite rows, purity, hypothesis bounds and runs through the runner."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from byzbn.defenses import (AdaptiveRobustClipping, Bucketing, Clipping, GeometricMedian, Meamed, make_defense)
from byzbn.defenses import chunked_rows
from byzbn.defenses.pre_aggregators import arc_clipped_count
from byzfl_aggregators import load_byzfl_aggregators
from defense_runs import F_BYZ, parameter_count, run_attacked

NONFINITE = (float("nan"), float("inf"), float("-inf"))


# ------------------------------------------------------------------ float64 references, written plainly
def bucketing_reference(x: torch.Tensor, s: int, perm: torch.Tensor) -> torch.Tensor:
    rows = x.double()[perm]
    return torch.stack([rows[b: b + s].mean(0) for b in range(0, x.shape[0], s)])


def clip_reference(x: torch.Tensor, c: float) -> torch.Tensor:
    out = []
    for r in x.double():
        norm = float(torch.linalg.vector_norm(r))
        out.append(r * (c / norm) if math.isfinite(norm) and norm > c else r)
    return torch.stack(out)


def arc_reference(x: torch.Tensor, f: int) -> torch.Tensor:
    n = x.shape[0]
    k = int(2 * f * (n - f) // n)
    if k == 0:
        return x.double()
    norms = sorted((math.inf if math.isnan(v) else v) for v in torch.linalg.vector_norm(x.double(), dim=1).tolist())
    return clip_reference(x, norms[n - k - 1])


def data(n: int, d: int, dtype=torch.float32, seed: int = 0, scale: float = 3.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(n, d, generator=g, dtype=torch.float64) + 1.0).to(dtype)


def tol(x: torch.Tensor) -> float:
    finite = x[torch.isfinite(x)].abs()
    return (2e-6 if x.dtype == torch.float32 else 1e-13) * max(1.0, float(finite.max()) if finite.numel() else 1.0)


def seeded_perm(n: int, seed: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(params=["chunks", "whole"])
def chunking(request, monkeypatch):
    monkeypatch.setattr(chunked_rows, "CPU_CHUNK_ELEMENTS", 21 if request.param == "chunks" else 1 << 30)


# ------------------------------------------------------------------ exact semantics
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n, s", [(7, 1), (7, 2), (7, 3), (8, 4), (5, 9)])
def test_bucketing_means_buckets_of_a_seeded_permutation(dtype, n, s):
    x = data(n, 6, dtype)
    pre = Bucketing(1, s=s, seed=4)
    out = pre(x)
    assert out.shape == (pre.output_rows(n), 6) == (math.ceil(n / s), 6) and out.dtype == dtype
    torch.testing.assert_close(out.double(), bucketing_reference(x, s, seeded_perm(n, 4)), rtol=0, atol=tol(x))
    torch.testing.assert_close(pre(x), out, rtol=0, atol=0)      # stand-alone: the same draw every call


def test_bucketing_draws_from_the_generator_it_is_given_without_changing_itself():
    x = data(9, 4)
    pre = Bucketing(1, s=2)
    gen = torch.Generator().manual_seed(11)
    drawn = pre.with_generator(gen)
    assert drawn is not pre and pre.generator is None and drawn.generator is gen
    first, second = drawn(x), drawn(x)                          # the run's generator advances
    expected_gen = torch.Generator().manual_seed(11)
    for out in (first, second):
        perm = torch.randperm(9, generator=expected_gen)
        torch.testing.assert_close(out.double(), bucketing_reference(x, 2, perm), rtol=0, atol=tol(x))
    assert not torch.equal(first, second)
    assert drawn.with_generator(None).generator is None
    with pytest.raises(ValueError, match="generator must be a torch.Generator or None, got int"):
        pre.with_generator(3)


def test_defense_with_generator_reaches_random_stages_only():
    gen = torch.Generator().manual_seed(2)
    defense = make_defense("geomed", 1, pre=["clipping", ("bucketing", {"s": 2})])
    drawn = defense.with_generator(gen)
    assert defense.randomized and drawn is not defense and drawn.pre_aggregators[1].generator is gen
    assert defense.pre_aggregators[1].generator is None and drawn.pre_aggregators[0] is defense.pre_aggregators[0]
    assert repr(drawn) == repr(defense) == "clipping(c=2.0)∘bucketing(s=2, seed=0)∘geomed(f=1, nu=0.1, T=100, tol=1e-06)"
    plain = make_defense("median", 1, pre="nnm")
    assert not plain.randomized and plain.with_generator(gen) is plain


@pytest.mark.parametrize("c", [0.0, 2.0, 6.0, 1e9])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_clipping_scales_rows_above_c_to_norm_c(chunking, c, dtype):
    x = data(7, 10, dtype)
    out = Clipping(2, c=c)(x)
    torch.testing.assert_close(out.double(), clip_reference(x, c), rtol=0, atol=tol(x))


@pytest.mark.parametrize("n, f", [(7, 0), (7, 1), (7, 3), (8, 2), (2, 1), (1, 0)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_arc_clips_the_k_largest_rows_to_the_next_norm(chunking, n, f, dtype):
    x = data(n, 10, dtype) * torch.arange(1, n + 1, dtype=dtype)[:, None]
    out = AdaptiveRobustClipping(f)(x)
    torch.testing.assert_close(out.double(), arc_reference(x, f), rtol=0, atol=tol(x))
    changed = (out != x).any(dim=1).sum()
    assert changed == arc_clipped_count(n, f) == 2 * f * (n - f) // n


def test_the_pre_aggregators_agree_with_byzfl_when_it_is_installed():
    byzfl = load_byzfl_aggregators()   # without ByzFL's package __init__ (tests/byzfl_aggregators.py)
    if byzfl is None:
        pytest.skip("ByzFL is not installed")
    x = data(11, 50)
    torch.testing.assert_close(Clipping(0)(x), byzfl.Clipping()(x.clone()))
    torch.testing.assert_close(Clipping(0, c=30.0)(x), byzfl.Clipping(30.0)(x.clone()))
    torch.testing.assert_close(AdaptiveRobustClipping(3)(x), byzfl.ARC(3)(x.clone()))
    torch.manual_seed(7)   # ByzFL permutes with torch's global generator
    theirs = byzfl.Bucketing(3)(x.clone())
    torch.testing.assert_close(Bucketing(3, s=3, seed=7)(x), theirs)


@pytest.mark.parametrize("name, params, match", [
    ("bucketing", {"s": 0}, r"s=0 is out of range: valid >= 1"),
    ("bucketing", {"seed": -1}, r"seed=-1 is out of range"),
    ("clipping", {"c": -1.0}, r"c=-1.0 is out of range: valid >= 0"),
    ("clipping", {"c": "big"}, r"c must be a finite number"),
    ("arc", {"c": 1.0}, r"unknown parameter\(s\) \['c'\] for pre-aggregator 'arc': valid parameters are \[\]"),
])
def test_bad_parameters_raise_one_clear_error(name, params, match):
    with pytest.raises(ValueError, match=match):
        make_defense("mean", 1, pre=[(name, params)])


# ------------------------------------------------------------------ a registered pre-aggregator changes the output
@pytest.mark.parametrize("pre", [("bucketing", {"s": 2}), ("clipping", {"c": 1.0}), ("arc", {})])
def test_each_pre_aggregator_changes_what_the_rule_sees(pre):
    x = data(9, 6) * torch.arange(1, 10, dtype=torch.float32)[:, None]
    plain, staged = make_defense("median", 2), make_defense("median", 2, pre=[pre])
    assert not torch.allclose(plain(x), staged(x))
    rows = make_defense("median", 2, pre=[pre]).pre_aggregators[0](x)
    torch.testing.assert_close(staged(x), make_defense("median", 2)(rows))


# ------------------------------------------------------------------ symmetry, purity, non-finite rows
def test_bucketing_with_a_fixed_generator_keeps_the_row_sum_whatever_the_row_order():
    x = data(8, 5, torch.float64)
    total = x.sum(0)
    for seed in range(3):
        perm = seeded_perm(8, seed + 10)
        out = Bucketing(1, s=3).with_generator(torch.Generator().manual_seed(5))(x[perm])
        sizes = torch.tensor([3.0, 3.0, 2.0], dtype=torch.float64)
        torch.testing.assert_close((out * sizes[:, None]).sum(0), total)
    ones = Bucketing(1, s=1)(x[seeded_perm(8, 1)])
    torch.testing.assert_close(ones.sort(dim=0).values, x.sort(dim=0).values, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["clipping", "arc"])
def test_clipping_rules_are_invariant_to_row_order_up_to_the_same_permutation(name):
    x = data(9, 7) * torch.arange(1, 10, dtype=torch.float32)[:, None]
    perm = seeded_perm(9, 3)
    pre = make_defense("mean", 3, pre=name).pre_aggregators[0]
    torch.testing.assert_close(pre(x[perm]), pre(x)[perm], rtol=0, atol=0)


@pytest.mark.parametrize("pre, rule", [(("bucketing", {"s": 2}), "geomed"), ("clipping", "median"),
                                       ("arc", "meamed"), ("arc", "trimmed-mean")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_at_most_f_non_finite_rows_stay_confined_and_never_reach_the_output(chunking, pre, rule, dtype):
    n, f = 10, 2 if pre != "clipping" else 4
    x = data(n, 6, dtype)
    x[1, 2], x[6] = NONFINITE[0], NONFINITE[1]
    if f == 4:
        x[3, 0], x[8, 5] = NONFINITE[2], NONFINITE[0]
    before = x.clone()
    defense = make_defense(rule, f, pre=[pre])
    rows = defense.pre_aggregators[0](x)
    bad = ~torch.isfinite(rows).all(dim=1)
    assert int(bad.sum()) <= f
    if pre != ("bucketing", {"s": 2}):
        torch.testing.assert_close(rows[bad], x[bad], rtol=0, atol=0, equal_nan=True)   # left unchanged
    out = defense(x)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(x, before, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("pre", ["clipping", "arc", "bucketing"])
def test_the_differentiable_path_gives_finite_gradients_to_finite_rows(pre):
    x = data(7, 5, torch.float64) * 3
    x[4] = float("nan")
    leaf = x.clone().requires_grad_(True)
    out = make_defense("meamed", 2, pre=pre)(leaf)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(leaf.grad[torch.arange(7) != 4]).all()
    if pre != "bucketing":
        torch.testing.assert_close(out.detach(), make_defense("meamed", 2, pre=pre)(x))


# ------------------------------------------------------------------ hypothesis: bounds from the theory
@st.composite
def matrices(draw, max_n=8, max_d=4):
    dtype = draw(st.sampled_from([torch.float32, torch.float64]), label="dtype")
    n, d = draw(st.integers(1, max_n), label="n"), draw(st.integers(1, max_d), label="d")
    width, np_dtype = (32, np.float32) if dtype == torch.float32 else (64, np.float64)
    # Norms are √(Σ x²) in float64: squares of |x| < 1e-154 underflow there (documented in chunked_rows).
    values = st.floats(-1e6, 1e6, width=width).map(lambda v: 0.0 if abs(v) < 1e-100 else v)
    return torch.from_numpy(draw(arrays(np_dtype, (n, d), elements=values)))


def norms(x: torch.Tensor) -> torch.Tensor:
    """Row norms without underflow: scaled by each row's largest magnitude first."""
    xd = x.double()
    top = xd.abs().amax(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
    return torch.linalg.vector_norm(xd / top, dim=1) * top.squeeze(1)


@given(matrices(), st.floats(0.0, 1e4))
@example(torch.tensor([[226.0]], dtype=torch.float64), 1.1125369292536007e-308)  # c/‖x‖ is subnormal
def test_clipped_norms_are_at_most_c_and_short_rows_are_untouched(x, c):
    out = Clipping(0, c=c)(x)
    info = torch.finfo(x.dtype)
    # Near 0 the dtype's grid has spacing tiny·eps: a tiny c (and the scale c/‖x‖) round there, which costs
    # up to that spacing per coordinate of the output and ‖x‖ times it through the scale.
    subnormal = info.tiny * info.eps
    slack = (norms(x).nan_to_num(posinf=0.0) + x.shape[1] ** 0.5) * subnormal
    assert (norms(out) <= c * (1 + 4 * info.eps) + slack).all()
    short = norms(x) <= c
    assert torch.equal(out[short], x[short])


@given(matrices(), st.data())
def test_arc_changes_at_most_k_rows_and_bounds_every_norm_by_the_k_plus_1_th_largest(x, data):
    n = x.shape[0]
    f = data.draw(st.integers(0, n // 2), label="f")
    out = AdaptiveRobustClipping(f)(x)
    k = arc_clipped_count(n, f)
    assert int((out != x).any(dim=1).sum()) <= k
    threshold = float(norms(x).sort().values[n - k - 1]) if k else math.inf
    assert (norms(out) <= threshold * (1 + 4 * torch.finfo(x.dtype).eps)).all()


@given(matrices(), st.integers(1, 9), st.integers(0, 2**31))
def test_bucketing_outputs_are_the_means_of_a_partition_of_the_rows(x, s, seed):
    n = x.shape[0]
    out = Bucketing(0, s=s, seed=seed)(x)
    assert out.shape == (-(-n // s), x.shape[1])
    expected = bucketing_reference(x, s, seeded_perm(n, seed))
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=4 * s * torch.finfo(x.dtype).eps * 1e6)


# ------------------------------------------------------------------ through the runner
@pytest.mark.parametrize("algorithm", ["dsgd", "fedavg"])
@pytest.mark.parametrize("pre, rule, pre_class", [(("bucketing", {"s": 2}), "geomed", Bucketing),
                                                  (("clipping", {"c": 1.0}), "median", Clipping),
                                                  ("arc", "meamed", AdaptiveRobustClipping)])
def test_pre_aggregators_run_on_both_channels_in_dsgd_and_fedavg(monkeypatch, pre, rule, pre_class, algorithm):
    widths, fed = run_attacked(make_defense(rule, F_BYZ, pre=[pre]), algorithm, monkeypatch, pre_class)
    assert parameter_count(fed) in widths and len(widths) >= 2
    assert fed.non_finite() is None


def test_the_catalogue_classes_are_registered_under_their_names():
    assert make_defense("geomed", 1).rule.__class__ is GeometricMedian
    assert make_defense("meamed", 1).rule.__class__ is Meamed
    assert [type(p) for p in make_defense("mean", 1, pre=["bucketing", "clipping", "arc"]).pre_aggregators] == [
        Bucketing, Clipping, AdaptiveRobustClipping]
