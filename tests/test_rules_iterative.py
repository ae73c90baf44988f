"""geomed, centered-clipping and meamed: float64 references written out here, ByzFL as an extra
cross-check when it is installed, non-finite rows, purity, hypothesis bounds, the stateful centre and runs."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from byzbn.defenses import CenteredClipping, GeometricMedian, Meamed, make_defense
from byzbn.defenses.iterative_rules import clipped_fraction
from byzbn.defenses import chunked_rows
from byzfl_aggregators import load_byzfl_aggregators
from defense_runs import F_BYZ, parameter_count, run_attacked

RULES = ("geomed", "centered-clipping", "meamed")
NONFINITE = (float("nan"), float("inf"), float("-inf"))


# ------------------------------------------------------------------ float64 references, written plainly
def geomed_reference(x: torch.Tensor, nu: float = 0.1, T: int = 100, tol: float = 1e-6) -> torch.Tensor:
    """Smoothed Weiszfeld from 0 over the rows without NaN/±Inf (the others weigh 1/∞ = 0), until a step
    moves z by at most tol·‖z‖ (tol = 0: T steps)."""
    rows = [r for r in x.double() if bool(torch.isfinite(r).all())]
    z = torch.zeros(x.shape[1], dtype=torch.float64)
    for _ in range(T):
        betas = [1.0 / max(nu, float(torch.linalg.vector_norm(r - z))) for r in rows]
        z, previous = sum(b * r for b, r in zip(betas, rows)) / sum(betas), z
        if tol > 0 and float(torch.linalg.vector_norm(z - previous)) <= tol * float(torch.linalg.vector_norm(z)):
            break
    return z


def cc_reference(x: torch.Tensor, center=None, L: int = 1, tau="auto") -> torch.Tensor:
    """v ← v + (1/n) Σ clip_τ(x_i − v); a row with a NaN/±Inf adds 0; tau="auto": twice the (lower) median
    distance of the finite rows to the centre."""
    n, d = x.shape
    v = torch.zeros(d, dtype=torch.float64) if center is None else center.double().clone()
    if tau == "auto":
        norms = sorted(float(torch.linalg.vector_norm(r - v)) for r in x.double() if bool(torch.isfinite(r).all()))
        tau = 2.0 * norms[(len(norms) - 1) // 2] if norms else 0.0
    for _ in range(L):
        step = torch.zeros(d, dtype=torch.float64)
        for r in x.double():
            if bool(torch.isfinite(r).all()):
                diff = r - v
                norm = float(torch.linalg.vector_norm(diff))
                step += diff * (min(1.0, tau / norm) if norm > 0 else 1.0)
        v = v + step / n
    return v


def meamed_reference(x: torch.Tensor, f: int) -> np.ndarray:
    """Per column: the n − f values nearest to the median (NaN farthest; ties keep the lower value), averaged."""
    n = x.shape[0]
    out = []
    for column in x.double().numpy().T:
        s = sorted(column, key=lambda v: (math.isnan(v), v))
        med = s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])
        distance = [(math.inf if math.isnan(v) else abs(v - med), v if not math.isnan(v) else math.inf) for v in s]
        kept = [s[i] for i in sorted(range(n), key=lambda i: distance[i])[: n - f]]
        out.append(sum(kept) / (n - f))
    return np.array(out)


def reference(name: str, x: torch.Tensor, f: int, **params) -> torch.Tensor:
    if name == "geomed":
        return geomed_reference(x, **params)
    if name == "centered-clipping":
        return cc_reference(x, **params)
    return torch.from_numpy(meamed_reference(x, f))


def tolerance(x: torch.Tensor) -> float:
    finite = x[torch.isfinite(x)].abs()
    scale = float(finite.max()) if finite.numel() else 1.0
    return (1e-5 if x.dtype == torch.float32 else 1e-11) * max(scale, 1.0)


@pytest.fixture(params=["chunks", "whole"])
def chunking(request, monkeypatch):
    """Both ways the CPU path streams x: many column chunks (3 columns each at n = 7) or one."""
    monkeypatch.setattr(chunked_rows, "CPU_CHUNK_ELEMENTS", 21 if request.param == "chunks" else 1 << 30)
    return request.param


def data(n: int, d: int, dtype=torch.float32, seed: int = 0, scale: float = 3.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(n, d, generator=g, dtype=torch.float64) + 1.0).to(dtype)


CASES = [("geomed", {}), ("geomed", {"nu": 0.5, "T": 6}), ("geomed", {"T": 0}), ("geomed", {"T": 3, "tol": 0.0}),
         ("centered-clipping", {}), ("centered-clipping", {"L": 3, "tau": 2.0}), ("centered-clipping", {"tau": 0.0}),
         ("centered-clipping", {"tau": 100.0}), ("centered-clipping", {"L": 2, "tau": "auto"}),
         ("centered-clipping", {"L": 0}), ("meamed", {})]


# ------------------------------------------------------------------ exact semantics
@pytest.mark.parametrize("name, params", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n, f", [(7, 0), (7, 3), (8, 2), (1, 0)])
def test_rules_equal_their_float64_reference(chunking, name, params, dtype, n, f):
    x = data(n, 10, dtype)
    out = make_defense(name, f, **params)(x)
    assert out.dtype == dtype and out.shape == (10,)
    torch.testing.assert_close(out.double(), reference(name, x, f, **params), rtol=0, atol=tolerance(x))


@pytest.mark.parametrize("name, params", CASES)
def test_the_differentiable_path_equals_the_reference_and_has_finite_gradients(name, params):
    x = data(7, 10, torch.float64)
    x[2] = float("nan")
    x[5, 3] = float("inf")
    leaf = x.clone().requires_grad_(True)
    f = 2
    out = make_defense(name, f, **params)(leaf)
    expected = reference(name, x, f, **params)
    torch.testing.assert_close(out.detach(), expected, rtol=0, atol=tolerance(x))
    if out.requires_grad:
        out.sum().backward()
        finite_rows = torch.isfinite(x).all(dim=1)
        assert torch.isfinite(leaf.grad[finite_rows]).all()


def test_the_byzfl_rules_agree_when_byzfl_is_installed():
    byzfl = import_byzfl()
    x = data(11, 300)
    f = 3
    pairs = [(make_defense("geomed", f, T=3, tol=0.0), byzfl.GeometricMedian()),
             (make_defense("geomed", f, nu=0.5, T=7, tol=0.0), byzfl.GeometricMedian(nu=0.5, T=7)),
             (make_defense("centered-clipping", f, tau=100.0), byzfl.CenteredClipping()),
             (make_defense("centered-clipping", f, L=3, tau=5.0), byzfl.CenteredClipping(L=3, tau=5.0)),
             (make_defense("meamed", f), byzfl.Meamed(f))]
    for ours, theirs in pairs:
        torch.testing.assert_close(ours(x), theirs(x.clone()), rtol=1e-5, atol=1e-5)


def import_byzfl():
    """ByzFL 0.0.11's aggregators (optional), loaded without its package __init__ (tests/byzfl_aggregators.py)."""
    byzfl = load_byzfl_aggregators()
    if byzfl is None:
        pytest.skip("ByzFL is not installed")
    return byzfl


def test_meamed_keeps_the_nearer_value_of_each_pair_and_the_lower_one_on_ties():
    # Column 0: median 2, the 4 nearest are 1, 2, 3 and (tie between 0 and 4) the lower 0.
    # Column 1: median 10; 30 is farther than 0.5 from it, so the window keeps 0.5.
    x = torch.tensor([[0.0, 0.5], [1.0, 9.0], [2.0, 10.0], [3.0, 11.0], [4.0, 30.0]])
    out = make_defense("meamed", 1)(x)
    torch.testing.assert_close(out, torch.tensor([1.5, (0.5 + 9 + 10 + 11) / 4]))
    torch.testing.assert_close(out.double(), torch.from_numpy(meamed_reference(x, 1)))


@pytest.mark.parametrize("n", [3, 8, 9])
def test_meamed_with_f0_is_the_mean_and_with_2f_n_minus_1_averages_around_the_median(n):
    x = data(n, 40, torch.float64)
    torch.testing.assert_close(make_defense("meamed", 0)(x), x.mean(0))
    f = (n - 1) // 2
    torch.testing.assert_close(make_defense("meamed", f)(x), torch.from_numpy(meamed_reference(x, f)))


@pytest.mark.parametrize("name, f, n, match", [
    ("meamed", 2, 4, r"f=2 is out of range for meamed with n=4: valid 0 <= f <= 1 \(2f < n\)"),
    ("geomed", 3, 3, r"f=3 is out of range for geomed with n=3: valid 0 <= f <= 2 \(f < n\)"),
    ("centered-clipping", 2, 2, r"f=2 is out of range for centered-clipping with n=2"),
])
def test_rules_name_f_and_its_range_when_n_is_too_small(name, f, n, match):
    with pytest.raises(ValueError, match=match):
        make_defense(name, f)(torch.zeros(n, 3))


@pytest.mark.parametrize("name, params, match", [
    ("geomed", {"nu": 0.0}, r"nu=0.0 is out of range: valid > 0"),
    ("geomed", {"T": -1}, r"T=-1 is out of range"),
    ("geomed", {"nu": float("nan")}, r"nu must be a finite number"),
    ("centered-clipping", {"tau": -1.0}, r"tau=-1.0 is out of range: valid >= 0"),
    ("centered-clipping", {"L": 1.5}, r"L must be an int"),
    ("centered-clipping", {"m": 1}, r"unknown parameter\(s\) \['m'\] for aggregator 'centered-clipping': "
                                    r"valid parameters are \['L', 'tau'\]"),
])
def test_bad_parameters_raise_one_clear_error(name, params, match):
    with pytest.raises(ValueError, match=match):
        make_defense(name, 1, **params)


# ------------------------------------------------------------------ symmetry, purity, non-finite rows
@pytest.mark.parametrize("name", RULES)
def test_rules_are_invariant_to_row_order(chunking, name):
    x = data(9, 12)
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(1))
    rule = make_defense(name, 3)
    torch.testing.assert_close(rule(x[perm]), rule(x), rtol=0, atol=tolerance(x))


@pytest.mark.parametrize("name", RULES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_at_most_f_non_finite_rows_never_reach_the_output_and_inputs_stay_unchanged(chunking, name, dtype):
    n, f = 9, 4
    x = data(n, 12, dtype)
    for i, value in zip((0, 4, 7, 8), NONFINITE + (float("nan"),)):
        x[i, [1, 5, 11] if i != 8 else slice(None)] = value
    x[7, 2] = float("-inf")
    before = x.clone()
    center = torch.full((12,), 0.5, dtype=dtype)
    rule = make_defense(name, f)
    if name == "centered-clipping":
        rule = rule.with_center(center)
    out = rule(x)
    assert torch.isfinite(out).all()
    expected = reference(name, x, f, **({"center": center} if name == "centered-clipping" else {}))
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=tolerance(x))
    torch.testing.assert_close(x, before, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(center, torch.full((12,), 0.5, dtype=dtype))


def test_float32_rows_whose_squares_overflow_are_still_finite_rows():
    # 1e30² overflows float32; the distance is then summed in float64, so the row keeps its finite weight.
    x = torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 0.0], [1e30, -1e30]])
    torch.testing.assert_close(make_defense("geomed", 1, T=4)(x).double(), geomed_reference(x, T=4),
                               rtol=1e-5, atol=0)
    torch.testing.assert_close(make_defense("centered-clipping", 1, L=2, tau=1.0)(x).double(),
                               cc_reference(x, L=2, tau=1.0), rtol=1e-5, atol=1e-6)


def test_geomed_of_only_non_finite_rows_is_nan():
    out = GeometricMedian(0)(torch.tensor([[float("nan"), 1.0], [float("inf"), 0.0]]))
    assert torch.isnan(out).all()


# ------------------------------------------------------------------ the stateful centre
def test_centered_clipping_with_center_is_a_new_rule_and_the_original_stays_pure():
    x = data(6, 5)
    rule = CenteredClipping(1, L=2, tau=1.5)
    center = torch.arange(5, dtype=torch.float32)
    moved = rule.with_center(center)
    assert moved is not rule and type(moved) is CenteredClipping and rule.center is None
    torch.testing.assert_close(moved(x).double(), cc_reference(x, center, L=2, tau=1.5), rtol=0, atol=1e-5)
    torch.testing.assert_close(rule(x), rule(x))                  # stand-alone: zeros every call
    torch.testing.assert_close(rule(x).double(), cc_reference(x, L=2, tau=1.5), rtol=0, atol=1e-5)
    assert moved.with_center(None).center is None
    with pytest.raises(ValueError, match=r"center must be a tensor of shape \[d=5\], got \[4\]"):
        rule.with_center(torch.zeros(4))(x)
    with pytest.raises(ValueError, match="center must be a finite"):
        rule.with_center(torch.tensor([0.0, float("nan"), 0.0, 0.0, 0.0]))


def test_defense_with_center_passes_the_centre_to_stateful_stages_only():
    x = data(6, 5)
    center = torch.ones(5)
    defense = make_defense("centered-clipping", 1, pre="nnm", tau=0.5)
    moved = defense.with_center(center)
    assert defense.stateful and moved is not defense and torch.equal(moved.rule.center, center)
    assert defense.rule.center is None and moved.pre_aggregators == defense.pre_aggregators
    mixed = make_defense("mean", 1, pre="nnm").pre_aggregators[0](x)
    torch.testing.assert_close(moved(x).double(), cc_reference(mixed, center, tau=0.5), rtol=0, atol=1e-5)
    assert repr(moved) == repr(defense)
    stateless = make_defense("geomed", 1)
    assert not stateless.stateful and stateless.with_center(center) is stateless


# ------------------------------------------------------------------ hypothesis: bounds from the theory
@st.composite
def finite_matrices(draw, max_n=8, max_d=4):
    dtype = draw(st.sampled_from([torch.float32, torch.float64]), label="dtype")
    n, d = draw(st.integers(1, max_n), label="n"), draw(st.integers(1, max_d), label="d")
    width = 32 if dtype == torch.float32 else 64
    np_dtype = np.float32 if dtype == torch.float32 else np.float64
    values = st.floats(-1e3, 1e3, width=width)
    return torch.from_numpy(draw(arrays(np_dtype, (n, d), elements=values)))


@given(finite_matrices(), st.floats(1e-3, 10.0), st.integers(1, 5))
def test_geomed_lies_in_the_bounding_box_of_the_rows(x, nu, T):
    out = make_defense("geomed", 0, nu=nu, T=T)(x)
    slack = 8 * x.shape[0] * torch.finfo(x.dtype).eps * (1.0 + float(x.abs().max()))
    assert (out >= x.amin(0) - slack).all() and (out <= x.amax(0) + slack).all()


@given(finite_matrices(), st.floats(0.0, 100.0), st.integers(0, 4), st.data())
def test_centered_clipping_moves_at_most_L_tau_from_its_centre(x, tau, L, data):
    d = x.shape[1]
    center = torch.tensor(data.draw(st.lists(st.floats(-1e3, 1e3), min_size=d, max_size=d)), dtype=x.dtype)
    out = CenteredClipping(0, L=L, tau=tau).with_center(center)(x)
    moved = float(torch.linalg.vector_norm((out - center).double()))
    rounding = 16 * (L + 1) * d * torch.finfo(x.dtype).eps * (1.0 + 1e3 + float(x.abs().max()))
    assert moved <= L * tau * (1 + 1e-5) + rounding


@given(finite_matrices().map(lambda x: x.round()), st.data())
def test_meamed_selects_exactly_on_integer_data_full_of_ties(x, data):
    # Small integers: every difference and sum is exact, so ties are real ties and the window must
    # be the reference's (the lower value on a tie), to the rounding of the final mean.
    f = data.draw(st.integers(0, (x.shape[0] - 1) // 2), label="f")
    out = make_defense("meamed", f)(x)
    expected = torch.from_numpy(meamed_reference(x, f)).to(x.dtype)
    torch.testing.assert_close(out, expected, rtol=0, atol=4 * x.shape[0] * torch.finfo(x.dtype).eps * 1e3)


# ------------------------------------------------------------------ through the runner
@pytest.mark.parametrize("algorithm", ["dsgd", "fedavg"])
@pytest.mark.parametrize("name", RULES)
def test_rules_aggregate_both_channels_in_dsgd_and_fedavg_runs(monkeypatch, name, algorithm):
    rule_class = {"geomed": GeometricMedian, "centered-clipping": CenteredClipping, "meamed": Meamed}[name]
    widths, fed = run_attacked(make_defense(name, F_BYZ), algorithm, monkeypatch, rule_class)
    assert parameter_count(fed) in widths       # the gradient (FedAvg: model update) channel ...
    assert len(widths) >= 2                     # ... and the statistics channel (per-layer channel counts)
    assert fed.non_finite() is None


# ------------------------------------------------------------------ settings that do what the names say
def test_geomed_iterates_to_its_tolerance_where_three_steps_from_zero_do_not():
    x = data(9, 20, torch.float64, scale=1.0) + 20.0  # far from z0 = 0
    converged = make_defense("geomed", 2)(x)
    long_run = make_defense("geomed", 2, T=2000, tol=0.0)(x)
    torch.testing.assert_close(converged, long_run, rtol=1e-5, atol=0)
    three = make_defense("geomed", 2, T=3, tol=0.0)(x)  # ByzFL's variant, still reachable
    error = lambda z: float(torch.linalg.vector_norm(z - long_run))  # noqa: E731
    assert error(three) > 100 * error(converged)


def test_centered_clipping_reports_the_fraction_of_rows_it_clipped():
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [10.0, 10.0], [float("nan"), 0.0]])
    # distances to 0: 0, 1, 1, 14.1 (the NaN row is not finite); auto: tau = 2 · 1 → only the far row
    assert float(clipped_fraction(x)) == pytest.approx(0.25)
    assert float(clipped_fraction(x, tau=100.0)) == 0.0 and float(clipped_fraction(x, tau=0.5)) == pytest.approx(0.75)
    rule = CenteredClipping(1)
    assert rule.last_clipped_fraction is None
    rule(x)
    assert float(rule.last_clipped_fraction) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="tau must be a number >= 0 or 'auto', got 'big'"):
        CenteredClipping(1, tau="big")
