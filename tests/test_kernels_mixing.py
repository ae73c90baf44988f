"""byzbn.kernels.nearest_neighbour_mixing and the CPU distance path's precision, against byzbn.kernels.reference.

- The NNM rows: the selection must match the reference exactly (ties to the lower index, non-finite rows
  infinitely far), the mixed rows to a few ulps (BLAS sums in another order than the reference's mean).
- Large offset, small spread (values ~3e3 or 1e4, spread 1e-3): in float32 such rows are small integers
  times 2^-12 or 2^-10 around the offset, so their exact distances tie often and a Gram matrix of the raw
  values (‖a‖² + ‖b‖² − 2a·b ≈ 1e7·d − 1e7·d) keeps nothing of them. The CPU path must return the
  reference's distances bit for bit and hence its neighbours, also when an outlying row would make a
  bad translation centre.
- Kernels must not import byzbn.defenses (the package dependency points the other way).
"""
from __future__ import annotations

import ast
import importlib
from pathlib import Path
from unittest import mock

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from byzbn.kernels import _backend, nearest_neighbour_mixing
from byzbn.kernels import pairwise_distances as PD
from byzbn.kernels import reference as R

MIX = importlib.import_module("byzbn.kernels.mixing")
RA = importlib.import_module("byzbn.kernels.robust_aggregate")
CUDA = torch.cuda.is_available()
TRITON_DEVICE = "cuda" if CUDA else "cpu"
triton_runs = pytest.mark.skipif(not (CUDA or _backend.is_interpreted(PD._pairwise_sq_dist_kernel)),
                                 reason="Triton needs CUDA or TRITON_INTERPRET=1 set before byzbn.kernels is imported")
EPS = {torch.float32: torch.finfo(torch.float32).eps, torch.float64: torch.finfo(torch.float64).eps}
NONFINITE = (float("nan"), float("inf"), float("-inf"))


def assert_mixed_rows_match(got: torch.Tensor, x: torch.Tensor, f: int) -> None:
    want = R.nnm(x.cpu(), f)
    got = got.cpu()
    assert got.shape == want.shape and got.dtype == want.dtype
    finite = x[torch.isfinite(x)].abs()
    scale = float(finite.max()) if finite.numel() else 0.0
    atol = 8 * x.shape[0] * EPS[x.dtype] * scale
    torch.testing.assert_close(got, want, rtol=4 * x.shape[0] * EPS[x.dtype], atol=atol, equal_nan=True)


@st.composite
def submissions(draw, max_n=12, max_d=40):
    """(x, f): small-integer rows times a power of two, duplicated rows, non-finite entries."""
    n, d = draw(st.integers(1, max_n)), draw(st.integers(1, max_d))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    values = draw(st.lists(st.integers(-4, 4), min_size=n * d, max_size=n * d))
    x = torch.tensor(values, dtype=dtype).view(n, d) * 2.0 ** draw(st.integers(-3, 10))
    for a, b in draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=3)):
        x[a] = x[b]
    for i, j, v in draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, d - 1),
                                           st.sampled_from(NONFINITE)), max_size=4)):
        x[i, j] = v
    return x, draw(st.integers(0, n - 1))


@given(case=submissions(), step=st.sampled_from([None, 1, 3]))
def test_torch_mixing_matches_reference(case, step):
    x, f = case
    chunk = step * x.shape[0] if step else None
    with mock.patch.object(MIX, "CPU_CHUNK_ELEMENTS", chunk or MIX.CPU_CHUNK_ELEMENTS), \
            mock.patch.object(PD, "CPU_CHUNK_ELEMENTS", chunk or PD.CPU_CHUNK_ELEMENTS):
        got = nearest_neighbour_mixing(x, f, backend="torch")
    assert_mixed_rows_match(got, x, f)


@pytest.mark.parametrize("x, f, want", [
    (torch.tensor([[0.0, 2.0], [4.0, 6.0], [8.0, 1.0]]), 0, torch.tensor([[4.0, 3.0]] * 3)),
    (torch.tensor([[1.0], [5.0], [9.0], [5.0]]), 3, torch.tensor([[1.0], [5.0], [9.0], [5.0]])),
    (torch.tensor([[0.0, 0.0], [float("nan"), 1.0], [2.0, 2.0]]), 1,
     torch.tensor([[1.0, 1.0], [float("nan"), 0.5], [1.0, 1.0]])),
], ids=["f=0: every row is the mean", "n-f=1: every row itself", "nan row: far, its own mix NaN"])
def test_labelled_mixing(x, f, want):
    torch.testing.assert_close(nearest_neighbour_mixing(x, f), want, rtol=0, atol=0, equal_nan=True)


def test_ties_go_to_the_lower_index():
    x = torch.tensor([[1.0], [5.0], [9.0], [5.0], [3.0]])
    w = MIX.nnm_weights(PD.sq_distances_torch(x)[0], 3)   # n − f = 2 nearest rows
    # Row 3 duplicates row 1 (both at distance 0); row 4 is 2 away from rows 0 and 1 (and 3).
    assert [r.nonzero().flatten().tolist() for r in w] == [[0, 4], [1, 3], [1, 2], [1, 3], [0, 4]]
    assert [sorted(r) for r in R.nnm_neighbours(x, 3).tolist()] == [[0, 4], [1, 3], [1, 2], [1, 3], [0, 4]]


def test_mixing_does_not_mutate_and_grad_mode_uses_the_reference():
    x = torch.randn(6, 5, dtype=torch.float64)
    before = x.clone()
    nearest_neighbour_mixing(x, 2)
    assert torch.equal(x, before)
    xg = x.clone().requires_grad_()
    out = nearest_neighbour_mixing(xg, 2)
    assert out.requires_grad
    torch.testing.assert_close(out, R.nnm(x, 2), rtol=0, atol=0)
    out.sum().backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all()
    with pytest.raises(ValueError, match="autograd"):
        nearest_neighbour_mixing(x.float().requires_grad_(), 2, backend="triton")


@pytest.mark.parametrize("kwargs, match", [
    (dict(x=torch.zeros(4), f=0), r"shape \[n, d\]"),
    (dict(x=torch.zeros(3, 2), f=3), r"f=3 is out of range for nnm with n=3"),
    (dict(x=torch.zeros(3, 2), f=0, backend="gpu"), "backend must be one of"),
])
def test_mixing_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        nearest_neighbour_mixing(**kwargs)


@triton_runs
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("n, d, f", [(17, 40, 5), (33, 60, 16)])
def test_triton_mixing_matches_reference(n, d, f):
    x = torch.randint(-4, 5, (n, d), generator=torch.Generator().manual_seed(n)).float()
    x[n - 1] = x[0]
    x[2, 3] = float("nan")
    got = nearest_neighbour_mixing(x.to(TRITON_DEVICE), f, backend="triton")
    assert_mixed_rows_match(got, x, f)


# ---------------------------------------------------------------- CPU distances: large offset, small spread

def _clustered(n: int, d: int, offset: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (offset + 1e-3 * torch.randn(n, d, generator=g, dtype=torch.float64)).float()


def _assert_same_neighbours(x: torch.Tensor, f: int, exact_rows=None) -> None:
    dist, finite = PD.sq_distances_torch(x)
    ref = R.pairwise_sq_distances(x)
    rows = slice(None) if exact_rows is None else exact_rows
    torch.testing.assert_close(dist[rows, rows], ref[rows, rows], rtol=0, atol=0)
    torch.testing.assert_close(dist, ref, rtol=1e-12, atol=0)
    want = [set(r) for r in R.nnm_neighbours(x, f).tolist()]
    assert [set(r.nonzero().flatten().tolist()) for r in MIX.nnm_weights(dist, f)] == want


@pytest.mark.parametrize("offset", [3e3, 1e4])
@pytest.mark.parametrize("n", [8, 17, 32])
@pytest.mark.parametrize("seed", range(3))
def test_cpu_neighbours_match_reference_at_large_offset(offset, n, seed):
    for d in (50, 3000):
        x = _clustered(n, d, offset, seed)
        f = (n - 1) // 3
        _assert_same_neighbours(x, f)
        torch.testing.assert_close(RA.robust_aggregate(x, f, "median", backend="torch"),
                                   R.coordinate_median(R.nnm(x, f)), rtol=0, atol=8 * n * EPS[x.dtype] * offset)


@pytest.mark.parametrize("where", ["everywhere", "late-chunk"])
def test_cpu_neighbours_at_large_offset_with_an_outlying_first_row(where):
    # Row 0 (the first translation centre) lies 1e6 away: around it the cancellation would come back.
    x = _clustered(17, 600, 3e3, seed=5)
    if where == "everywhere":
        x[0] += 1e6
    else:   # near the others in the first chunks, far in the last ones
        x[0, 400:] += 1e6
    with mock.patch.object(PD, "CPU_CHUNK_ELEMENTS", 17 * 100):   # chunks of 100 columns
        _assert_same_neighbours(x, 4, exact_rows=slice(1, None))


def test_cpu_distances_keep_integer_ties_and_nonfinite_rows():
    x = torch.tensor([[1e4, 1e4 + 2], [1e4 + 1, 1e4 + 1], [1e4 + 2, 1e4], [float("inf"), 0.0], [1e4, 1e4 + 2]])
    dist, finite = PD.sq_distances_torch(x)
    assert finite.tolist() == [True, True, True, False, True]
    torch.testing.assert_close(dist, R.pairwise_sq_distances(x), rtol=0, atol=0)
    assert dist[0, 1] == dist[1, 2] == 2.0 and dist[0, 4] == 0.0 and dist[3, :3].isinf().all()


@triton_runs
@pytest.mark.parametrize("offset", [3e3, 1e4])
@pytest.mark.parametrize("n", [8, 17, 33])
def test_triton_neighbours_match_reference_at_large_offset(offset, n):
    # The kernel sums exact float32 differences: on these quantized rows every sum is exact too.
    x = _clustered(n, 64, offset, seed=n)
    dist, finite = PD.sq_distances_triton(x.to(TRITON_DEVICE))
    torch.testing.assert_close(dist.cpu(), R.pairwise_sq_distances(x), rtol=0, atol=0)
    f = (n - 1) // 3
    want = [set(r) for r in R.nnm_neighbours(x, f).tolist()]
    assert [set(r.nonzero().flatten().tolist()) for r in MIX.nnm_weights(dist, f).cpu()] == want


@pytest.mark.skipif(not CUDA, reason="full-size kernel comparison needs CUDA")
def test_cuda_full_size_triton_mixing_matches_torch():
    n, d, f = 64, 2**20, 15
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(n, d, device="cuda", generator=g) + 3 * torch.randn(n, 1, device="cuda", generator=g)
    x[3, 17] = float("nan")
    x[40, 5] = float("inf")
    got = nearest_neighbour_mixing(x, f)            # auto: Triton distances on CUDA
    want = nearest_neighbour_mixing(x, f, backend="torch")
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, equal_nan=True)


@pytest.mark.parametrize("v", [214.2789, 0.1, 1 / 3, 7e5 + 1e-4])
def test_cpu_float64_distances_are_the_references_bit_for_bit(v):
    # d(1, 0) = d(1, 2) = v² in exact arithmetic; rounded, they tie only when both sums add the same
    # rounded squares, as the reference's do (a float64 Gram matrix rounds them apart).
    x = torch.tensor([[0.0, 0.0], [0.0, v], [v, v], [v, v]], dtype=torch.float64)
    dist, _ = PD.sq_distances_torch(x)
    torch.testing.assert_close(dist, R.pairwise_sq_distances(x), rtol=0, atol=0)
    assert dist[1, 0] == dist[1, 2]
    assert [sorted(r) for r in R.nnm_neighbours(x, 1).tolist()] == \
        [sorted(r.nonzero().flatten().tolist()) for r in MIX.nnm_weights(dist, 1)]
    g = torch.Generator().manual_seed(int(v * 1e4) % 2**31)
    y = torch.randn(9, 300, generator=g, dtype=torch.float64) * v + 1e3
    torch.testing.assert_close(PD.sq_distances_torch(y)[0], R.pairwise_sq_distances(y), rtol=0, atol=0)


# ---------------------------------------------------------------- the kernels' dependency rule

KERNELS_DIR = Path(__file__).resolve().parents[1] / "kernels"
ALLOWED = ("byzbn._checks", "byzbn._threads", "byzbn.stats", "byzbn.kernels")


@pytest.mark.parametrize("path", sorted(KERNELS_DIR.glob("*.py")), ids=lambda p: p.name)
def test_kernels_import_nothing_of_byzbn_but_checks_threads_and_stats(path):
    imported = []
    for node in ast.walk(ast.parse(path.read_text())):   # function-level imports included
        if isinstance(node, ast.ImportFrom) and node.module:
            imported += [node.module] + [f"{node.module}.{a.name}" for a in node.names if node.module == "byzbn"]
        elif isinstance(node, ast.Import):
            imported += [a.name for a in node.names]
    ours = [m for m in imported if m == "byzbn" or m.startswith("byzbn.")]
    bad = [m for m in ours if m != "byzbn" and not m.startswith(ALLOWED)]
    assert not bad, f"{path.name} imports {bad}"
