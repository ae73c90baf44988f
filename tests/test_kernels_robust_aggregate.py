"""byzbn.kernels.robust_aggregate (and its parts) against byzbn.kernels.reference.

Data are mostly small integers times a power of two: every distance and every sum of a few rows is
then exact in float32, so the references and the fast paths must agree exactly on which rows NNM
selects (ties included: duplicated rows) and on every median, while averages (mean, trimmed mean,
mixed rows under the mean rule) are compared to a few ulps. Non-finite entries (NaN, ±Inf) are
sprinkled in. The Triton tests run compiled on CUDA or through the interpreter on CPU; they are few and
small because the interpreter is slow (its tl.sort costs seconds per [64, 64] tile), but reach padded
row counts and several row tiles / K-blocks (n = 17, 33, 64). Full-size CUDA comparisons skip without CUDA.
"""
from __future__ import annotations

import importlib
import math
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from byzbn.kernels import _backend, order_statistics, pairwise_distances, robust_aggregate
from byzbn.kernels import reference as F

RA = importlib.import_module("byzbn.kernels.robust_aggregate")   # the module (the package exports the function)
PD = pairwise_distances
CUDA = torch.cuda.is_available()
TRITON_DEVICE = "cuda" if CUDA else "cpu"
triton_runs = pytest.mark.skipif(not (CUDA or _backend.is_interpreted(RA._mix_aggregate_kernel)),
                                 reason="Triton needs CUDA or TRITON_INTERPRET=1 set before byzbn.kernels is imported")
needs_cuda = pytest.mark.skipif(not CUDA, reason="full-size kernel comparison needs CUDA")
interpreter_warnings = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")

RULES = ("mean", "median", "trimmed-mean")
NONFINITE = (float("nan"), float("inf"), float("-inf"))
EPS = {torch.float32: torch.finfo(torch.float32).eps, torch.float64: torch.finfo(torch.float64).eps}


def reference(x: torch.Tensor, f: int, rule: str, nnm: bool) -> torch.Tensor:
    y = F.nnm(x, f) if nnm else x
    if rule == "mean":
        return F.mean(y)
    return F.coordinate_median(y) if rule == "median" else F.trimmed_mean(y, f)


def assert_matches(got: torch.Tensor, x: torch.Tensor, f: int, rule: str, nnm: bool, exact: bool = True) -> None:
    """Medians exactly (NaN where the reference has NaN, ±Inf alike); averages to a few ulps of |x|.

    exact=False: the median of NNM-mixed rows that are not exact sums (non-integer data) is an average.
    """
    want = reference(x.cpu(), f, rule, nnm)
    got = got.cpu()
    assert got.shape == want.shape and got.dtype == want.dtype
    if rule == "median" and (exact or not nnm):
        torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)
        return
    finite = x[torch.isfinite(x)].abs()
    scale = float(finite.max()) if finite.numel() else 0.0
    # The GPU mixes with two TF32 products (relative error ~2^-21 per term); the CPU with BLAS.
    atol = 8 * x.shape[0] * max(EPS[x.dtype], 2.0**-21 if x.is_cuda else 0.0) * scale
    torch.testing.assert_close(got, want, rtol=4 * x.shape[0] * EPS[x.dtype], atol=atol, equal_nan=True)


def neighbour_sets(w: torch.Tensor) -> list[set[int]]:
    return [set(torch.nonzero(row).flatten().tolist()) for row in w.cpu()]


@st.composite
def submissions(draw, max_n=12, max_d=40, dtypes=(torch.float32, torch.float64)):
    """(x, f, rule, nnm): small-integer rows (times a power of two), duplicates, non-finite entries."""
    n, d = draw(st.integers(1, max_n)), draw(st.integers(1, max_d))
    dtype = draw(st.sampled_from(dtypes))
    values = draw(st.lists(st.integers(-4, 4), min_size=n * d, max_size=n * d))
    x = torch.tensor(values, dtype=dtype).view(n, d) * 2.0 ** draw(st.integers(-3, 10))
    for a, b in draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=3)):
        x[a] = x[b]
    for i, j, v in draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, d - 1),
                                           st.sampled_from(NONFINITE)), max_size=4)):
        x[i, j] = v
    rule = draw(st.sampled_from(RULES))
    nnm = draw(st.booleans())
    f_max = (n - 1) // 2 if rule != "mean" else (n - 1 if nnm else n)
    f = draw(st.integers(0, f_max) | st.just(f_max))
    return x, f, rule, nnm


# ---------------------------------------------------------------- torch fast path (CPU), many examples

@given(case=submissions(), step=st.sampled_from([None, 1, 3, 16]))
def test_torch_path_matches_reference(case, step):
    x, f, rule, nnm = case
    # step: columns per CPU chunk (mixing / sorting network / pdist), to exercise the chunk loops.
    with mock.patch.object(RA, "CPU_CHUNK_ELEMENTS", step * x.shape[0] if step else RA.CPU_CHUNK_ELEMENTS), \
            mock.patch.object(PD, "CPU_CHUNK_ELEMENTS", step * x.shape[0] if step else PD.CPU_CHUNK_ELEMENTS):
        got = robust_aggregate(x, f, rule, nnm=nnm, backend="torch")
    assert_matches(got, x, f, rule, nnm)


@given(case=submissions())
def test_torch_selection_and_distances_match_reference(case):
    x, f, _, _ = case
    assume(f < x.shape[0])
    dist, finite = PD.sq_distances_torch(x)
    assert finite.tolist() == F.finite_rows(x).tolist()
    # Small integers times a power of two: every shifted Gram term is exact, so the distances are too.
    torch.testing.assert_close(dist, F.pairwise_sq_distances(x), rtol=0, atol=0)
    want = [set(r) for r in F.nnm_neighbours(x, f).tolist()]
    assert neighbour_sets(RA.nnm_weights(dist, f)) == want


@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 12), d=st.integers(1, 50),
       rule=st.sampled_from(RULES), nnm=st.booleans(), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_torch_path_on_gaussian_rows(seed, n, d, rule, nnm, dtype):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, d, generator=g, dtype=torch.float64) * 10 + torch.randn(n, 1, generator=g,
                                                                               dtype=torch.float64) * 50).to(dtype)
    f = (n - 1) // 2
    if nnm:  # no near-ties at the selection boundary: there the rounding order decides
        dist = F.pairwise_sq_distances(x.double()).sort(dim=1).values
        if f > 0:
            gap = (dist[:, n - f] - dist[:, n - f - 1]) / dist[:, n - f].clamp_min(1e-300)
            assume(bool((gap > 1e-6).all()))
    assert_matches(robust_aggregate(x, f, rule, nnm=nnm, backend="torch"), x, f, rule, nnm, exact=False)


@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 40), m=st.integers(1, 20),
       dtype=st.sampled_from([torch.float32, torch.float64]), special=st.booleans())
def test_sorting_network_sorts_like_torch_sort(seed, n, m, dtype, special):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(-3, 4, (n, m), generator=g).to(dtype)
    if special:  # NaN of both signs, ±Inf, ±0
        pool = torch.tensor([float("nan"), -float("nan"), float("inf"), -float("inf"), 0.0, -0.0], dtype=dtype)
        pick = torch.randint(0, 2, (n, m), generator=g).bool()
        y = torch.where(pick, pool[torch.randint(0, 6, (n, m), generator=g)], y)
    got = order_statistics.sorted_rows(y, tuple(range(n)))
    want = torch.sort(y, dim=0).values
    for p in range(n):
        torch.testing.assert_close(got[p], want[p], rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("dtype, itype, negative_nan_bits", [
    (torch.float32, torch.int32, -(2**22)),          # 0xFFC00000
    (torch.float64, torch.int64, -(2**51)),          # 0xFFF8000000000000
], ids=["float32", "float64"])
def test_sort_keys_order_and_round_trip(dtype, itype, negative_nan_bits):
    tiny = torch.finfo(dtype).tiny * torch.finfo(dtype).eps        # the smallest subnormal
    ordered = torch.tensor([-float("inf"), -3.0, -tiny, -0.0, 0.0, tiny, 2.0, float("inf")], dtype=dtype)
    nans = torch.cat([torch.tensor([float("nan")], dtype=dtype),
                      torch.tensor([negative_nan_bits], dtype=itype).view(dtype)])
    y = torch.cat([ordered, nans])
    keys = order_statistics.to_keys(y)
    assert (keys[:8].diff() > 0).all()                   # -Inf < ... < -0 < +0 < ... < +Inf
    assert keys[8] == keys[9] and keys[8] > keys[7]      # NaNs of both signs: one key above +Inf
    back = order_statistics.from_keys(keys, dtype)
    assert torch.equal(back[:8].view(itype), ordered.view(itype))
    assert torch.isnan(back[8:]).all()


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("name, x, f", [
    ("all-rows-nan", torch.full((4, 3), float("nan")), 1),
    ("nan-majority-column", torch.tensor([[float("nan"), 1.0], [float("nan"), 2.0], [0.0, 3.0]]), 1),
    ("inf-rows-both-signs", torch.tensor([[float("inf"), 0.0], [1.0, 1.0], [-float("inf"), 2.0], [0.0, 0.0],
                                          [2.0, 2.0]]), 2),
])
@pytest.mark.parametrize("nnm", [False, True])
def test_torch_path_nonfinite_cases(name, x, f, rule, nnm):
    assert_matches(robust_aggregate(x, f, rule, nnm=nnm, backend="torch"), x, f, rule, nnm)


# ---------------------------------------------------------------- dispatch and validation

def test_auto_on_cpu_uses_the_torch_path():
    x = torch.randn(5, 7)
    with mock.patch.object(RA, "_robust_aggregate_triton", side_effect=AssertionError("Triton on CPU")):
        got = robust_aggregate(x, 1, "median")
    assert_matches(got, x, 1, "median", True, exact=False)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_public_pairwise_sq_distances(backend):
    if backend == "triton" and not (CUDA or _backend.is_interpreted(PD._pairwise_sq_dist_kernel)):
        pytest.skip("Triton needs CUDA or TRITON_INTERPRET=1")
    x = _labelled(6, 11, dup=True, bad=[(2, 4, float("nan"))])
    got = PD.pairwise_sq_distances(x.to(TRITON_DEVICE if backend == "triton" else "cpu"), backend=backend)
    torch.testing.assert_close(got.cpu(), F.pairwise_sq_distances(x), rtol=8 * EPS[x.dtype], atol=0)
    xg = x.double().requires_grad_()
    PD.pairwise_sq_distances(xg)[0, 1].backward()    # with grad: the differentiable reference
    assert xg.grad is not None


def test_grad_mode_uses_differentiable_reference():
    x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    robust_aggregate(x, 1, "trimmed-mean").sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    with pytest.raises(ValueError, match="autograd"):
        robust_aggregate(x.detach().float().requires_grad_(), 1, "median", backend="triton")


@pytest.mark.parametrize("kwargs, match", [
    (dict(x=torch.zeros(4), f=0, rule="median"), r"shape \[n, d\]"),
    (dict(x=torch.zeros(4, 3, dtype=torch.int64), f=0, rule="median"), "dtype"),
    (dict(x=torch.zeros(4, 3), f=0, rule="krum"), r"rule must be one of \['mean', 'median', 'trimmed-mean'\]"),
    (dict(x=torch.zeros(4, 3), f=0, rule="median", backend="gpu"), r"backend must be one of"),
    (dict(x=torch.zeros(4, 3), f=2, rule="median"), r"f=2 is out of range for median with n=4"),
    (dict(x=torch.zeros(5, 3), f=3, rule="trimmed-mean"), r"f=3 is out of range for trimmed-mean"),
    (dict(x=torch.zeros(3, 3), f=3, rule="mean"), r"f=3 is out of range for nnm"),
    (dict(x=torch.zeros(3, 3), f=-1, rule="mean", nnm=False), r"f=-1 is out of range"),
])
def test_invalid_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        robust_aggregate(**kwargs)


@pytest.mark.parametrize("x, match", [
    (torch.zeros(257, 4), r"n=257 rows is out of range: valid 1 <= n <= 256"),
    (torch.zeros(2, 1).expand(2, 2**31), r"d=2147483648 columns is out of range"),
    (torch.zeros(3, 4, dtype=torch.float64), r"float32"),
])
def test_triton_out_of_range_raises(x, match):
    with pytest.raises(ValueError, match=match):
        robust_aggregate(x, 0, "median", nnm=False, backend="triton")


def test_auto_handles_what_triton_cannot():
    x = torch.randn(300, 3)   # n > 256: auto (CPU: torch anyway) still aggregates
    assert_matches(robust_aggregate(x, 10, "median"), x, 10, "median", True, exact=False)


# ---------------------------------------------------------------- Triton (interpreter on CPU: keep tiny)

@triton_runs
@interpreter_warnings
@settings(max_examples=10, deadline=None)
@given(case=submissions(max_n=8, max_d=64, dtypes=(torch.float32,)),
       tuning=st.sampled_from([{}, dict(inner=1, chunk_len=1), dict(inner=2, chunk_len=40)]))
def test_triton_matches_reference(case, tuning):
    x, f, rule, nnm = case
    assert_matches(RA._robust_aggregate_triton(x.to(TRITON_DEVICE), f, rule, nnm, **tuning), x, f, rule, nnm)


@triton_runs
@interpreter_warnings
@settings(max_examples=10, deadline=None)
@given(case=submissions(max_n=8, max_d=64, dtypes=(torch.float32,)),
       tuning=st.sampled_from([{}, dict(inner=1, chunk_len=1), dict(inner=2, chunk_len=40)]))
def test_triton_distances_and_selection_exact(case, tuning):
    x, f, _, _ = case
    assume(f < x.shape[0])
    dist, finite = PD.sq_distances_triton(x.to(TRITON_DEVICE), **tuning)
    assert finite.cpu().tolist() == F.finite_rows(x).tolist()
    torch.testing.assert_close(dist.cpu(), F.pairwise_sq_distances(x), rtol=0, atol=0)
    assert neighbour_sets(RA.nnm_weights(dist, f)) == [set(r) for r in F.nnm_neighbours(x, f).tolist()]


def _labelled(n, d, seed=0, dup=False, bad=()):
    x = torch.randint(-4, 5, (n, d), generator=torch.Generator().manual_seed(seed)).float()
    if dup:
        x[n - 1] = x[0]
        x[1] = x[n - 2]
    for i, j, v in bad:
        x[i, j] = v
    return x


@triton_runs
@interpreter_warnings
@pytest.mark.parametrize("x, f", [
    (_labelled(1, 5), 0),
    (_labelled(6, 37), 0),
    (_labelled(7, 33, dup=True), 3),
    (_labelled(8, 64, dup=True, bad=[(2, 5, float("nan")), (5, 0, float("inf")), (6, 63, -float("inf"))]), 3),
    (_labelled(5, 16, bad=[(i, 3, float("nan")) for i in range(5)]), 2),
], ids=["n=1", "f=0,d=37", "2f=n-1,ties", "nonfinite-rows", "nan-column"])
def test_triton_labelled_cases(x, f):
    for rule in RULES:
        assert_matches(robust_aggregate(x.to(TRITON_DEVICE), f, rule, nnm=True, backend="triton"), x, f, rule, True)
    assert_matches(robust_aggregate(x.to(TRITON_DEVICE), f, "median", nnm=False, backend="triton"),
                   x, f, "median", False)


# Padded row counts and several tiles: the distance kernel's 32-row tiles (n = 17: one padded tile,
# 33 and 64: three tile pairs) and K-blocks of 8 columns; the mixing kernel's N_PAD (32, 64, 64) and
# its two tl.dot K-blocks of 32 rows at N_PAD = 64. The sorting rules are slow in the interpreter:
# all rules at n = 17, the median at n = 33 (one column block), the mean everywhere.
LARGE = [
    pytest.param(_labelled(17, 40, seed=1, dup=True, bad=[(3, 7, float("nan"))]), 4, RULES, id="n=17,d=40"),
    pytest.param(_labelled(33, 40, seed=2, dup=True, bad=[(32, 0, float("inf"))]), 16, ("mean", "median"),
                 id="n=33,d=40"),
    pytest.param(_labelled(33, 150, seed=3, bad=[(0, 149, -float("inf"))]), 10, ("mean",), id="n=33,d=150"),
    pytest.param(_labelled(64, 300, seed=4, dup=True, bad=[(40, 5, float("nan")), (63, 299, float("inf"))]), 21,
                 ("mean",), id="n=64,d=300"),
]


@triton_runs
@interpreter_warnings
@pytest.mark.parametrize("x, f, rules", LARGE)
def test_triton_padded_rows_and_several_blocks(x, f, rules):
    for rule in rules:
        assert_matches(robust_aggregate(x.to(TRITON_DEVICE), f, rule, nnm=True, backend="triton"), x, f, rule, True)
    assert_matches(robust_aggregate(x.to(TRITON_DEVICE), f, "mean", nnm=False, backend="triton"), x, f, "mean", False)


@triton_runs
@interpreter_warnings
@pytest.mark.parametrize("x, f, rules", LARGE)
@pytest.mark.parametrize("tuning", [{}, dict(inner=1, chunk_len=1), dict(inner=2, chunk_len=40)],
                         ids=["default", "one-block-chunks", "inner=2"])
def test_triton_distances_padded_rows_and_several_blocks(x, f, rules, tuning):
    dist, finite = PD.sq_distances_triton(x.to(TRITON_DEVICE), **tuning)
    assert finite.cpu().tolist() == F.finite_rows(x).tolist()
    torch.testing.assert_close(dist.cpu(), F.pairwise_sq_distances(x), rtol=0, atol=0)
    assert neighbour_sets(RA.nnm_weights(dist, f)) == [set(r) for r in F.nnm_neighbours(x, f).tolist()]


# ---------------------------------------------------------------- real GPU compilation, without a GPU

@pytest.mark.slow
def test_all_kernels_compile_for_h100():
    """Triton's real pipeline down to an sm_90 cubin for the launchers' block shapes (both ops' kernels).

    The interpreter tests above cannot see GPU-only compile errors; this runs byzbn.kernels._compile_check
    in a process without TRITON_INTERPRET.
    """
    pytest.importorskip("triton.backends.nvidia")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-W", "ignore", "-m", "byzbn.kernels._compile_check", "--arch", "90"],
                          cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert done.stdout.count("sm_90 cubin") == 8


# ---------------------------------------------------------------- full size (CUDA only)

@needs_cuda
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("nnm", [True, False])
def test_cuda_full_size_triton_matches_torch(rule, nnm):
    n, d, f = 64, 2**20, 15
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(n, d, device="cuda", generator=g) + 3 * torch.randn(n, 1, device="cuda", generator=g)
    x[3, 17] = float("nan")
    x[40, 5] = float("inf")
    got = robust_aggregate(x, f, rule, nnm=nnm)            # auto: Triton on CUDA
    want = robust_aggregate(x, f, rule, nnm=nnm, backend="torch")
    if rule == "median" and not nnm:
        torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)
    else:
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * math.sqrt(n), equal_nan=True)
