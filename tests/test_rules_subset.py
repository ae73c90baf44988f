"""mda and smea: the exact searches equal brute force over all C(n, f) subsets (written out here
in float64), on integer data full of ties and on continuous data; ByzFL's MDA as an extra cross-check when
installed; non-finite rows, purity, permutation invariance, the f = 0 and 2f = n − 1 edges."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from byzbn.defenses import MDA, SMEA, make_defense
from byzbn.defenses.subset_search import TIE_RTOL, min_diameter_subset, min_eigenvalue_subset
from byzfl_aggregators import load_byzfl_aggregators

NONFINITE = (float("nan"), float("inf"), float("-inf"))


# ------------------------------------------------------------------ brute force, float64, written plainly
def finite_rows(x: torch.Tensor) -> list[bool]:
    return [bool(torch.isfinite(r).all()) for r in x]


def diameter(x: torch.Tensor, rows) -> float:
    if any(not ok for ok in (finite_rows(x[list(rows)]))):
        return math.inf
    xd = x.double()
    return max((float(((xd[i] - xd[j]) ** 2).sum()) for i in rows for j in rows), default=0.0)


def top_eigenvalue(x: torch.Tensor, rows) -> float:
    """λ_max of Σ_{i∈rows} (x_i − μ)(x_i − μ)ᵀ (the d × d scatter matrix)."""
    if any(not ok for ok in (finite_rows(x[list(rows)]))):
        return math.inf
    y = x.double()[list(rows)]
    y = y - y.mean(dim=0)
    return float(torch.linalg.eigvalsh(y.T @ y)[-1])


def mda_brute_force(x: torch.Tensor, f: int) -> list[int]:
    """The first subset in combinations order with the smallest diameter."""
    subsets = list(itertools.combinations(range(x.shape[0]), x.shape[0] - f))
    values = [diameter(x, s) for s in subsets]
    return list(subsets[values.index(min(values))])


def smea_brute_force(x: torch.Tensor, f: int) -> list[int]:
    """The first subset in combinations order whose λ_max is within TIE_RTOL·λ_max(all finite rows) of the least."""
    n = x.shape[0]
    subsets = list(itertools.combinations(range(n), n - f))
    values = [top_eigenvalue(x, s) for s in subsets]
    scale = top_eigenvalue(x, [i for i, ok in enumerate(finite_rows(x)) if ok])
    least = min(values)
    if least == math.inf or scale == 0.0:
        return list(next(s for s, v in zip(subsets, values) if v == least))
    return list(next(s for s, v in zip(subsets, values) if v <= least + TIE_RTOL * scale))


BRUTE_FORCE = {"mda": mda_brute_force, "smea": smea_brute_force}
RULES = {"mda": MDA, "smea": SMEA}


def data(n: int, d: int, dtype=torch.float32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (3.0 * torch.randn(n, d, generator=g, dtype=torch.float64) + 1.0).to(dtype)


def integer_rows(max_n: int, max_d: int = 3):
    """(x float64 with small integer values — exact distances, many ties —, f with 2f < n)."""
    return st.integers(1, max_n).flatmap(lambda n: st.tuples(
        st.integers(1, max_d).flatmap(lambda d: st.lists(st.lists(st.integers(-2, 2), min_size=d, max_size=d),
                                                         min_size=n, max_size=n)),
        st.integers(0, (n - 1) // 2))).map(lambda t: (torch.tensor(t[0], dtype=torch.float64), t[1]))


# ------------------------------------------------------------------ the searches equal brute force
@settings(max_examples=150, deadline=None)
@given(integer_rows(9))
def test_mda_equals_brute_force_on_integer_data_full_of_ties(case):
    x, f = case
    assert MDA(f).select(x).tolist() == mda_brute_force(x, f)


@settings(max_examples=80, deadline=None)
@given(integer_rows(8))
def test_smea_equals_brute_force_on_integer_data_full_of_ties(case):
    x, f = case
    assert SMEA(f).select(x).tolist() == smea_brute_force(x, f)


@pytest.mark.parametrize("name", ["mda", "smea"])
@pytest.mark.parametrize("n, f, d, seed", [(12, 3, 5, 0), (11, 5, 30, 1), (13, 4, 200, 2)])
def test_the_searches_equal_brute_force_on_continuous_data(name, n, f, d, seed):
    x = data(n, d, torch.float64, seed)
    x[: f - 1] += 0.5 * torch.randn(d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    selected = RULES[name](f).select(x).tolist()
    assert selected == BRUTE_FORCE[name](x, f)
    torch.testing.assert_close(make_defense(name, f)(x), x[selected].mean(dim=0), rtol=0, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(integer_rows(8, 2), st.data())
def test_searches_on_distances_skip_rows_with_no_finite_distance(case, draw):
    """Rows at +inf from every other row (non-finite ones) count against f and are never kept."""
    x, f = case
    n = x.shape[0]
    bad = draw.draw(st.lists(st.integers(0, n - 1), max_size=f, unique=True))
    x = x.clone()
    for i in bad:
        x[i, 0] = NONFINITE[i % 3]
    for name, search in (("mda", min_diameter_subset), ("smea", min_eigenvalue_subset)):
        d2 = np.array([[0.0 if i == j else diameter(x, (i, j)) for j in range(n)] for i in range(n)])
        kept = search(d2, f).tolist()
        assert kept == BRUTE_FORCE[name](x, f) and not set(kept) & set(bad)
        assert torch.isfinite(make_defense(name, f)(x)).all()


# ------------------------------------------------------------------ theory's bounds, edges, purity
@settings(max_examples=100, deadline=None)
@given(integer_rows(9), st.floats(0.0, 1.0))
def test_mda_is_the_mean_of_n_minus_f_rows_of_least_diameter(case, jitter):
    x, f = case
    x = x + jitter * torch.sin(torch.arange(x.numel(), dtype=torch.float64)).view_as(x)
    n = x.shape[0]
    rows = MDA(f).select(x).tolist()
    assert len(rows) == n - f
    assert diameter(x, rows) <= min(diameter(x, s) for s in itertools.combinations(range(n), n - f))
    out = MDA(f)(x)
    torch.testing.assert_close(out, x[rows].mean(dim=0), rtol=0, atol=1e-12)
    assert bool((out >= x.min(dim=0).values - 1e-12).all()) and bool((out <= x.max(dim=0).values + 1e-12).all())


@pytest.mark.parametrize("name", ["mda", "smea"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_f0_is_the_mean_and_2f_n_minus_1_keeps_the_majority(name, dtype):
    x = data(7, 6, dtype)
    torch.testing.assert_close(make_defense(name, 0)(x), x.mean(dim=0))
    x[5:] += 50.0                                   # two far rows; f = 3 = (n − 1)/2 removes them and one more
    rows = RULES[name](3).select(x).tolist()
    assert len(rows) == 4 and not {5, 6} & set(rows)
    assert rows == BRUTE_FORCE[name](x.double(), 3)


@pytest.mark.parametrize("name", ["mda", "smea"])
def test_rules_are_invariant_to_row_order_when_the_best_subset_is_unique(name):
    """Ties go to the first subset in index order, so only a unique optimum is order-free. MDA's are common:
    every n − f rows inside the ball of the farthest pair share its diameter; hence f far rows here."""
    x = data(10, 8, torch.float64)
    x[[1, 4, 8]] += 20.0 * torch.randn(3, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(make_defense(name, 3)(x[perm]), make_defense(name, 3)(x), rtol=0, atol=1e-12)
    assert sorted(perm[RULES[name](3).select(x[perm])].tolist()) == RULES[name](3).select(x).tolist()


@pytest.mark.parametrize("name", ["mda", "smea"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_at_most_f_non_finite_rows_never_reach_the_output_and_inputs_stay_unchanged(name, dtype):
    x = data(9, 5, dtype)
    x[0, 1], x[3, 4], x[8] = NONFINITE
    before = x.clone()
    out = make_defense(name, 3)(x)
    assert torch.isfinite(out).all()
    assert RULES[name](3).select(x).tolist() == [1, 2, 4, 5, 6, 7]
    assert torch.equal(x.isnan(), before.isnan()) and torch.equal(x.nan_to_num(), before.nan_to_num())


@pytest.mark.parametrize("rule", [MDA, SMEA])
@pytest.mark.parametrize("n, f", [(4, 2), (1, 1), (6, 3)])
def test_rules_name_f_and_its_range_when_n_is_too_small(rule, n, f):
    with pytest.raises(ValueError, match=rf"f={f} is out of range .* valid 0 <= f <= {(n - 1) // 2} \(2f < n\)"):
        rule(f)(data(n, 3))


def test_byzfl_mda_agrees_when_byzfl_is_installed():
    """ByzFL's MDA enumerates all subsets (its SMEA and CAF use one random power-iteration step: no cross-check)."""
    byzfl = load_byzfl_aggregators()
    if byzfl is None:
        pytest.skip("ByzFL is not installed")
    for seed, (n, f) in enumerate([(7, 3), (10, 2), (12, 4)]):
        x = data(n, 30, seed=seed)
        x[:2] += 3.0
        torch.testing.assert_close(MDA(f)(x), byzfl.MDA(f)(x.clone()), rtol=1e-5, atol=1e-5)


def test_smea_prunes_at_n32_f6():
    """The branch and bound visits far fewer nodes than the C(32, 6) = 906,192 subsets ByzFL enumerates."""
    x = data(32, 50, torch.float64, seed=4)
    x[:6] += 10.0
    d2 = torch.cdist(x, x).pow(2).numpy()
    stats: dict = {}
    kept = min_eigenvalue_subset(d2, 6, stats)
    assert kept.tolist() == list(range(6, 32)) and stats["nodes"] < 2000


# Squared distances (float32-rounded) of an ALIE round on the statistics channel in tests/test_integration.py:
# rows 0, 3, 4, 5 agree to ~1e-8, rows 1, 2 sit 0.063 away. Their centred Gram has eigenvalues ±1.6e-10 made by
# the rounding alone; counted as spread, the interlacing test pruned the optimum and the search found nothing.
ALIE_ROUND_D2 = [
    [0.0, 0.003938223235309124, 0.0039382209070026875, 3.552713678800501e-15, 4.440892098500626e-15,
     4.440892098500626e-15],
    [0.003938223235309124, 0.0, 3.774758283725532e-15, 0.003938221372663975, 0.0039382195100188255,
     0.0039382195100188255],
    [0.0039382209070026875, 3.774758283725532e-15, 0.0, 0.003938219044357538, 0.003938216716051102,
     0.003938216716051102],
    [3.552713678800501e-15, 0.003938221372663975, 0.003938219044357538, 0.0, 8.881784197001252e-16,
     8.881784197001252e-16],
    [4.440892098500626e-15, 0.0039382195100188255, 0.003938216716051102, 8.881784197001252e-16, 0.0, 0.0],
    [4.440892098500626e-15, 0.0039382195100188255, 0.003938216716051102, 8.881784197001252e-16, 0.0, 0.0]]


@pytest.mark.parametrize("eps", [float(np.finfo(np.float32).eps), float(np.finfo(np.float64).eps)])
def test_smea_treats_rounding_sized_eigenvalues_as_zero(eps):
    """With the distances' accuracy given (float32) or not (the negative eigenvalue then measures the noise)."""
    d2 = np.array(ALIE_ROUND_D2)
    assert min_eigenvalue_subset(d2, 2, eps=eps).tolist() == [0, 3, 4, 5]
    assert min_diameter_subset(d2, 2).tolist() == [0, 3, 4, 5]
