"""byzbn.kernels.client_stats: the torch fast path and the Triton kernel against byzbn.stats.client_stats.

The reference runs in float64 on the same (possibly fp16/bf16-rounded) inputs; one tolerance per input
dtype covers fp32 accumulation. The Triton tests run compiled on CUDA, or through the interpreter on CPU
(the root conftest sets TRITON_INTERPRET=1 without CUDA); they are few and small because the
interpreter is slow. Full-size CUDA comparisons skip without CUDA.
"""
from __future__ import annotations

import importlib
from unittest import mock

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from byzbn import stats
from byzbn.kernels import _backend, client_stats

CS = importlib.import_module("byzbn.kernels.client_stats")   # the module (the package exports the function)
CUDA = torch.cuda.is_available()
TRITON_DEVICE = "cuda" if CUDA else "cpu"
triton_runs = pytest.mark.skipif(not (CUDA or _backend.is_interpreted(CS._client_stats_kernel)),
                                 reason="Triton needs CUDA or TRITON_INTERPRET=1 set before byzbn.kernels is imported")
needs_cuda = pytest.mark.skipif(not CUDA, reason="full-size kernel comparison needs CUDA")

DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
# |error| <= atol + rtol·|ref| for mean and variance, given inputs already rounded to the dtype.
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float16: dict(rtol=1e-5, atol=1e-5),
       torch.bfloat16: dict(rtol=1e-5, atol=1e-5), torch.float64: dict(rtol=1e-12, atol=1e-12)}




@st.composite
def activations(draw):
    """x [n, B, C, *spatial] with a large offset (an E[x²] − E[x]² in fp32 would lose the variance)."""
    n, b, c = draw(st.integers(1, 4)), draw(st.integers(1, 6)), draw(st.integers(1, 5))
    spatial = draw(st.sampled_from([(), (1,), (3,), (2, 3), (8, 8), (5, 13), (1, 70)]))
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**31 - 1))
    offset = draw(st.sampled_from([0.0, 3.0, 100.0]))
    scale = draw(st.sampled_from([1e-2, 1.0, 10.0]))
    g = torch.Generator().manual_seed(seed)
    shape = (n, b, c) + spatial
    x = torch.randn(shape, generator=g, dtype=torch.float64) * scale + offset
    return x.to(dtype)


def check_against_reference(mean: torch.Tensor, var: torch.Tensor, x: torch.Tensor) -> None:
    ref = stats.client_stats(x.double())
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    assert mean.dtype == acc and var.dtype == acc
    assert mean.shape == ref.mean.shape and var.shape == ref.var.shape
    tol = TOL[x.dtype]
    torch.testing.assert_close(mean.double().cpu(), ref.mean, **tol)
    # The variance tolerance scales with mean² too: fp32 rounding of x − μ is relative to |μ|.
    scale = 1.0 + ref.mean.abs().amax().item() ** 2
    torch.testing.assert_close(var.double().cpu(), ref.var, rtol=tol["rtol"], atol=tol["atol"] * scale)
    assert (var >= 0).all()


@given(x=activations(), chunk=st.sampled_from([None, 1, 7, 100]))
def test_torch_path_matches_reference(x, chunk):
    # chunk: values per CPU step, to exercise the merge of many tiles / segment chunks.
    with mock.patch.object(CS, "CPU_CHUNK_ELEMENTS", chunk or CS.CPU_CHUNK_ELEMENTS):
        mean, var = CS._client_stats_torch(x)
    check_against_reference(mean, var, x)


@given(x=activations())
def test_public_torch_backend_returns_client_stats(x):
    s = client_stats(x, backend="torch")
    assert isinstance(s, stats.ClientStats)
    check_against_reference(s.mean, s.var, x)
    per_client = x.numel() // (x.shape[0] * x.shape[2])
    assert s.count.dtype == torch.int64 and s.count.tolist() == [per_client] * x.shape[0]


@pytest.mark.parametrize("path", ["torch", "triton"])
def test_variance_tiny_next_to_the_mean(path):
    # mean 1e4, std 1e-2: E[x²] − E[x]² in fp32 would be pure rounding noise (ulp(1e8) = 8), and even a
    # two-pass variance around an fp32-rounded mean (ulp(1e4) ≈ 1e-3) would be off by a few per mille.
    if path == "triton" and not (CUDA or _backend.is_interpreted(CS._client_stats_kernel)):
        pytest.skip("Triton needs CUDA or TRITON_INTERPRET=1")
    g = torch.Generator().manual_seed(0)
    x = (1e4 + 1e-2 * torch.randn(2, 8, 3, 16, 16, generator=g, dtype=torch.float64)).float()
    if path == "torch":
        mean, var = CS._client_stats_torch(x)
    else:
        mean, var = CS._client_stats_triton(x.to(TRITON_DEVICE), splits=2)
    ref = stats.client_stats(x.double())
    torch.testing.assert_close(var.double().cpu(), ref.var, rtol=1e-5, atol=0)


def test_auto_on_cpu_uses_the_torch_path():
    x = torch.randn(2, 3, 4, 5)
    with mock.patch.object(CS, "_client_stats_triton", side_effect=AssertionError("Triton on CPU")):
        s = client_stats(x)
    check_against_reference(s.mean, s.var, x)


def test_grad_mode_returns_differentiable_reference():
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    s = client_stats(x)
    (s.mean.sum() + s.var.sum()).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    with pytest.raises(ValueError, match="autograd"):
        client_stats(x, backend="triton")


@pytest.mark.parametrize("bad, match", [
    (torch.zeros(3, 4), r"\[n, B, C, \*spatial\]"),
    (torch.zeros(2, 3, 4, dtype=torch.int32), "floating dtype"),
    (torch.zeros(2, 0, 4), "empty"),
    ([1.0, 2.0], r"\[n, B, C, \*spatial\]"),
])
def test_invalid_inputs_raise(bad, match):
    with pytest.raises(ValueError, match=match):
        client_stats(bad)


def test_unknown_backend_raises_with_choices():
    with pytest.raises(ValueError, match=r"backend must be one of \['auto', 'triton', 'torch'\]"):
        client_stats(torch.zeros(1, 1, 1), backend="cuda")


def test_triton_backend_without_cuda_or_interpreter_raises():
    not_interpreted = object()
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        _backend.choose("triton", torch.zeros(1), not_interpreted, None)
    assert _backend.choose("auto", torch.zeros(1), not_interpreted, None) == "torch"


@triton_runs
@settings(max_examples=12, deadline=None)
@given(x=activations(), splits=st.sampled_from([None, 1, 2, 3]))
def test_triton_matches_reference(x, splits):
    x = x.to(TRITON_DEVICE)
    mean, var = CS._client_stats_triton(x, splits=splits)
    check_against_reference(mean, var, x.cpu())


@triton_runs
@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 7, 5), (3, 5, 4, 3, 3), (2, 3, 3, 1, 70), (1, 2, 1, 1030)],
                         ids=["one-value", "no-spatial", "2d-spatial", "long-segments", "segment>block"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_triton_labelled_shapes(shape, dtype):
    x = (torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64) + 5).to(dtype)
    s = client_stats(x.to(TRITON_DEVICE), backend="triton")
    check_against_reference(s.mean, s.var, x)


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_cuda_full_size_triton_matches_torch(dtype):
    x = torch.randn(16, 50, 64, 32, 32, device="cuda", dtype=torch.float32).mul_(2).add_(1).to(dtype)
    fast = client_stats(x)           # auto: Triton on CUDA
    ref = stats.client_stats(x.double())
    torch.testing.assert_close(fast.mean.double(), ref.mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast.var.double(), ref.var, rtol=1e-5, atol=1e-5)
