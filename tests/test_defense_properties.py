"""Hypothesis properties of the defenses (through make_defense, i.e. the byzbn.kernels dispatch).

Robustness: median and trimmed mean stay inside the honest rows' per-coordinate [min, max] when at
most f < n/2 rows are arbitrary. With NNM in front this holds only for far outliers (see the
counterexample in test_defenses.py), so those examples draw the arbitrary rows far away: whole rows
of NaN/±Inf/±2^100, or honest rows shifted by more than 10× the honest spread + 1 per coordinate.
Selections (median) must match exactly; averages to a tolerance of a few ulps per summed row.
"""
from __future__ import annotations

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from byzbn.defenses import DEFENSES, PRE_AGGREGATORS, functional, make_defense

# The rules whose semantics these properties state (and the fused kernel implements); the catalogue's
# other rules have their own property tests (tests/test_rules_*.py).
PAPER_RULES = ["mean", "median", "trimmed-mean"]

NUMPY = {torch.float32: np.float32, torch.float64: np.float64}
WIDTH = {torch.float32: 32, torch.float64: 64}
EPS = {dtype: torch.finfo(dtype).eps for dtype in NUMPY}
DTYPES = st.sampled_from(list(NUMPY))
HONEST_BOUND = 1e3
HUGE = 2.0**100  # ≈ 1.3e30, exact in float32 and float64
FAR_VALUES = (float("nan"), float("inf"), float("-inf"), HUGE, -HUGE)
ROBUST = ("median", "trimmed-mean")
PRES = (None, "nnm")




def averaging_atol(x: torch.Tensor, dtype: torch.dtype) -> float:
    """Rounding of a mean of up to n rows, relative to the largest finite magnitude in x."""
    finite = x[torch.isfinite(x)].abs()
    return 4 * x.shape[0] * EPS[dtype] * (float(finite.max()) if finite.numel() else 0.0)


def honest_values(dtype):
    return st.floats(-HONEST_BOUND, HONEST_BOUND, width=WIDTH[dtype])


def arbitrary_values(dtype, bound=None):
    """Anything, including NaN/±Inf and values far beyond the honest range (optionally |x| <= bound)."""
    if bound is None:
        finite_or_not = st.floats(width=WIDTH[dtype])
    else:
        finite_or_not = st.floats(-bound, bound, width=WIDTH[dtype]) | st.sampled_from(FAR_VALUES[:3])
    return finite_or_not | st.sampled_from(FAR_VALUES) | honest_values(dtype)


@st.composite
def attacked_submissions(draw, pre: str | None):
    """(x, f, honest rows, dtype): n <= 9 rows, f < n/2, at most f of them arbitrary, in random places."""
    dtype = draw(DTYPES, label="dtype")
    n = draw(st.integers(1, 9), label="n")
    f = draw(st.integers(0, (n - 1) // 2), label="f")
    byzantine = draw(st.integers(0, f), label="byzantine")
    d = draw(st.integers(1, 5), label="d")
    honest = torch.from_numpy(draw(arrays(NUMPY[dtype], (n - byzantine, d), elements=honest_values(dtype))))
    if pre is None:
        bad = torch.from_numpy(draw(arrays(NUMPY[dtype], (byzantine, d), elements=arbitrary_values(dtype))))
    else:
        bad = torch.stack([draw(far_row(honest, dtype)) for _ in range(byzantine)]) if byzantine else honest[:0]
    order = torch.tensor(draw(st.permutations(range(n)), label="order"))
    return torch.cat([honest, bad])[order], f, honest, dtype


@st.composite
def far_row(draw, honest: torch.Tensor, dtype):
    """A row farther from every honest row than the honest rows are from each other."""
    d = honest.shape[1]
    if draw(st.booleans(), label="non-finite or huge"):
        return torch.tensor(draw(st.lists(st.sampled_from(FAR_VALUES), min_size=d, max_size=d)), dtype=dtype)
    base = honest[draw(st.integers(0, honest.shape[0] - 1), label="base row")].to(torch.float64)
    spread = float((honest.amax(0) - honest.amin(0)).max())
    signs = torch.tensor(draw(st.lists(st.sampled_from([-1.0, 1.0]), min_size=d, max_size=d)), dtype=torch.float64)
    factors = torch.tensor(draw(st.lists(st.floats(1.1, 100.0), min_size=d, max_size=d)), dtype=torch.float64)
    return (base + signs * factors * (10 * spread + 1)).to(dtype)


@st.composite
def matrices(draw, values=honest_values, max_n=9, max_d=5):
    dtype = draw(DTYPES, label="dtype")
    n, d = draw(st.integers(1, max_n), label="n"), draw(st.integers(1, max_d), label="d")
    return torch.from_numpy(draw(arrays(NUMPY[dtype], (n, d), elements=values(dtype)))), dtype


@st.composite
def continuous_matrices(draw):
    """Seeded normal data at a drawn scale: no exact distance ties, so NNM's neighbour sets are unique."""
    dtype = draw(DTYPES, label="dtype")
    n, d = draw(st.integers(1, 9), label="n"), draw(st.integers(1, 5), label="d")
    scale = draw(st.floats(1e-3, 1e3), label="scale")
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1), label="seed"))
    return (scale * torch.randn(n, d, generator=gen, dtype=torch.float64)).to(dtype), dtype


def assert_inside_honest_range(out, honest, dtype, atol):
    lo, hi = honest.amin(0), honest.amax(0)
    assert out.dtype == dtype and out.shape == lo.shape
    assert torch.isfinite(out).all(), (out, honest)
    assert ((out >= lo - atol) & (out <= hi + atol)).all(), (out, lo, hi)


@given(attacked_submissions(pre=None), st.sampled_from(ROBUST))
def test_robust_rules_stay_inside_the_honest_range_whatever_f_rows_hold(case, name):
    x, f, honest, dtype = case
    out = make_defense(name, f, pre=None)(x)
    # A selection is exact; an average of in-range values may exceed the range by its rounding only.
    atol = 0.0 if name == "median" else averaging_atol(honest, dtype)
    assert_inside_honest_range(out, honest, dtype, atol)


@given(attacked_submissions(pre="nnm"), st.sampled_from(ROBUST))
def test_nnm_robust_rules_stay_inside_the_honest_range_against_far_outliers(case, name):
    x, f, honest, dtype = case
    out = make_defense(name, f, pre="nnm")(x)
    assert_inside_honest_range(out, honest, dtype, averaging_atol(honest, dtype))


@given(matrices(lambda dtype: arbitrary_values(dtype, bound=HUGE)), st.sampled_from(PAPER_RULES), st.data())
def test_rules_without_nnm_are_invariant_to_row_order(case, name, data):
    x, dtype = case
    n = x.shape[0]
    f = data.draw(st.integers(0, (n - 1) // 2), label="f")
    perm = torch.tensor(data.draw(st.permutations(range(n)), label="perm"))
    d = make_defense(name, f, pre=None)
    out, out_perm = d(x), d(x[perm])
    atol = 0.0 if name == "median" else averaging_atol(x, dtype)
    torch.testing.assert_close(out_perm, out, rtol=0, atol=atol, equal_nan=True)


@given(continuous_matrices(), st.sampled_from(PAPER_RULES), st.data())
def test_rules_with_nnm_are_invariant_to_row_order(case, name, data):
    x, dtype = case
    n = x.shape[0]
    f = data.draw(st.integers(0, n - 1 if name == "mean" else (n - 1) // 2), label="f")
    perm = torch.tensor(data.draw(st.permutations(range(n)), label="perm"))
    d = make_defense(name, f, pre="nnm")
    torch.testing.assert_close(d(x[perm]), d(x), rtol=0, atol=averaging_atol(x, dtype))


@given(matrices(), st.sampled_from(PRES))
def test_trimmed_mean_with_f0_is_the_mean(case, pre):
    x, dtype = case
    out = make_defense("trimmed-mean", 0, pre=pre)(x)
    torch.testing.assert_close(out, x.mean(0), rtol=0, atol=averaging_atol(x, dtype))


@given(matrices())
def test_nnm_with_f0_maps_every_row_to_the_mean(case):
    x, dtype = case
    mixed = PRE_AGGREGATORS["nnm"](0)(x)
    assert mixed.shape == x.shape and mixed.dtype == dtype
    torch.testing.assert_close(mixed, x.mean(0).expand_as(x), rtol=0, atol=averaging_atol(x, dtype))


@given(matrices(lambda dtype: st.floats(allow_nan=False, width=WIDTH[dtype])), st.data())
def test_median_selects_exactly_the_middle_order_statistics(case, data):
    x, dtype = case
    n = x.shape[0]
    out = make_defense("median", data.draw(st.integers(0, (n - 1) // 2), label="f"), pre=None)(x).numpy()
    for column, value in zip(x.numpy().T, out):
        s = sorted(column)
        if n % 2:
            assert value == s[n // 2] and value in column
        else:  # the same float ops in the same dtype: 0.5·(a + b)
            with np.errstate(over="ignore", invalid="ignore"):  # inf − inf and overflow as torch does them
                expected = NUMPY[dtype](0.5) * (s[n // 2 - 1] + s[n // 2])
            assert value == expected or (np.isnan(value) and np.isnan(expected))


@given(matrices(lambda dtype: arbitrary_values(dtype, bound=HUGE)), st.sampled_from(PAPER_RULES),
       st.sampled_from(PRES), st.data())
def test_rules_are_pure_and_keep_dtype_and_device(case, name, pre, data):
    x, dtype = case
    n = x.shape[0]
    f = data.draw(st.integers(0, (n - 1) // 2), label="f")
    before = x.clone()
    out = make_defense(name, f, pre=pre)(x)
    assert out.shape == (x.shape[1],) and out.dtype == dtype and out.device == x.device
    torch.testing.assert_close(x, before, rtol=0, atol=0, equal_nan=True)
    out.fill_(12345.0)  # the output owns its memory: writing it leaves the input alone
    torch.testing.assert_close(x, before, rtol=0, atol=0, equal_nan=True)


@given(attacked_submissions(pre="nnm"), st.sampled_from(PAPER_RULES), st.sampled_from(PRES))
def test_the_dispatch_agrees_with_the_functional_reference(case, name, pre):
    x, f, _, dtype = case
    expected = functional.nnm(x, f) if pre == "nnm" else x
    if name == "mean":
        expected = functional.mean(expected)
    elif name == "median":
        expected = functional.coordinate_median(expected)
    else:
        expected = functional.trimmed_mean(expected, f)
    out = make_defense(name, f, pre=pre)(x)
    exact = name == "median" and pre is None
    torch.testing.assert_close(out, expected, rtol=0, atol=0 if exact else averaging_atol(x, dtype), equal_nan=True)


@given(attacked_submissions(pre="nnm"), st.sampled_from(PAPER_RULES), st.sampled_from(PRES))
def test_the_fused_fast_path_equals_running_the_registered_stages_in_turn(case, name, pre):
    # make_defense fuses (no pre | nnm) ∘ built-in rule into one kernel call; the registered objects,
    # called one after another (as any other composition is), must give the same aggregate.
    x, f, _, dtype = case
    mixed = PRE_AGGREGATORS["nnm"](f)(x) if pre == "nnm" else x
    staged = DEFENSES[name](f)(mixed)
    exact = name == "median" and pre is None
    torch.testing.assert_close(make_defense(name, f, pre=pre)(x), staged, rtol=0,
                               atol=0 if exact else averaging_atol(x, dtype), equal_nan=True)
