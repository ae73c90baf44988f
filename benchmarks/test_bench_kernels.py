"""Throughput of byzbn.kernels: per-client BN statistics, robust aggregation, NNM and the distances beneath
(run with `pytest --benchmark`).

Providers, fastest-hoped last (the baselines run first so later providers record their speedup):
- statistics: `var_mean` (torch.var_mean(x, dim=(1, 3, 4)), one call), `var_mean_per_client` (one
  torch.var_mean per client), `torch` (byzbn's torch fast path), `triton` (CUDA only);
- robust aggregation: `composite` (plain torch: cdist + topk + weight matrix @ x + sort), `torch`
  (byzbn's torch fast path), `triton` (CUDA only);
- NNM rows (nearest_neighbour_mixing) and squared distances (pairwise_sq_distances): `composite` /
  `cdist` (torch.cdist based), `torch`, `triton` (CUDA only), at n = 32, d = 10^6 and n = 64, d = 2^20.
Sizes: [16, 50, 64, 32, 32] activations; NNM + median at n ∈ {16, 64} × d ∈ {2^16, 2^20, 2^24} on CUDA
(2^24 left out on CPU) and n = 32, d = 10^6 (the CPU target); NNM + trimmed mean and the median alone
at n = 64, d = 2^20 (and the median alone at d = 2^24 on CUDA); f = ⌊(n − 1)/4⌋ outlying rows.
`extra_info` holds the bytes a one-pass (statistics, median alone) or two-pass (NNM: 2·n·d·4)
implementation must move, GB/s at the median time, that as a fraction of the measured copy bandwidth
(the roofline), and the speedup over the baselines.
Targets are read off these numbers (benchmarks/RESULTS.md), never asserted.
"""
from __future__ import annotations

import time

import pytest
import torch

from byzbn.kernels import client_stats, nearest_neighbour_mixing, robust_aggregate
from byzbn.kernels.pairwise_distances import pairwise_sq_distances

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
_MEDIANS: dict[tuple, dict[str, float]] = {}   # case → provider → median seconds (for the speedups)


def _sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


@pytest.fixture(scope="module")
def copy_gbps() -> float:
    """Device-to-device (or RAM-to-RAM) copy bandwidth, read + write bytes per second / 1e9."""
    src = torch.empty(2**28 if CUDA else 2**26, dtype=torch.uint8, device=DEVICE).fill_(1)
    dst = torch.empty_like(src)
    dst.copy_(src)
    _sync()
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        dst.copy_(src)
        _sync()
        best = min(best, time.perf_counter() - t0)
    return 2 * src.numel() / best / 1e9


def _measure(benchmark, fn, *, case: tuple, provider: str, bytes_moved: int, copy_gbps: float, rounds: int):
    def timed():
        out = fn()
        _sync()   # the timed call includes the GPU work
        return out

    benchmark.pedantic(timed, rounds=rounds, iterations=1, warmup_rounds=1)
    median = benchmark.stats.stats.median
    gbps = bytes_moved / median / 1e9
    info = dict(device=torch.cuda.get_device_name() if CUDA else "cpu", threads=torch.get_num_threads(),
                bytes=bytes_moved, gbps=round(gbps, 2), copy_gbps=round(copy_gbps, 2),
                roofline_fraction=round(gbps / copy_gbps, 3), median_ms=round(median * 1e3, 3))
    seen = _MEDIANS.setdefault(case, {})
    for base, t in seen.items():
        info[f"speedup_vs_{base}"] = round(t / median, 2)
    seen[provider] = median
    benchmark.extra_info.update(info)


def _skip_unless_runnable(provider: str) -> None:
    if provider == "triton" and not CUDA:
        pytest.skip("the triton provider needs CUDA (the interpreter is not benchmarked)")


STATS_PROVIDERS = ["var_mean", "var_mean_per_client", "torch", "triton"]


def _stats_fn(provider: str, x: torch.Tensor):
    dims = (1,) + tuple(range(3, x.dim()))
    if provider == "var_mean":
        return lambda: torch.var_mean(x, dim=dims, correction=0)
    if provider == "var_mean_per_client":
        per_client = tuple(d - 1 for d in dims)
        return lambda: [torch.var_mean(x[i], dim=per_client, correction=0) for i in range(x.shape[0])]
    return lambda: client_stats(x, backend=provider)


@pytest.mark.parametrize("provider", STATS_PROVIDERS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_bench_client_stats(benchmark, copy_gbps, provider, dtype):
    _skip_unless_runnable(provider)
    shape = (16, 50, 64, 32, 32)
    x = torch.randn(shape, device=DEVICE).to(dtype)
    n, c = shape[0], shape[2]
    bytes_moved = x.numel() * x.element_size() + 2 * n * c * 4
    _measure(benchmark, _stats_fn(provider, x), case=("stats", dtype), provider=provider,
             bytes_moved=bytes_moved, copy_gbps=copy_gbps, rounds=20 if CUDA else 5)


AGG_PROVIDERS = ["composite", "torch", "triton"]
AGG_SIZES = [(16, 2**16), (64, 2**16), (16, 2**20), (64, 2**20), (32, 10**6)]
if CUDA:
    AGG_SIZES += [(16, 2**24), (64, 2**24)]


def composite_baseline(x: torch.Tensor, f: int, rule: str, nnm: bool) -> torch.Tensor:
    """What one writes with plain torch ops: cdist, topk, a mixing matrix product, a sort along clients."""
    n = x.shape[0]
    if nnm:
        idx = torch.cdist(x, x).topk(n - f, dim=1, largest=False).indices
        w = torch.zeros(n, n, dtype=x.dtype, device=x.device).scatter_(1, idx, 1.0 / (n - f))
        x = w @ x
    s = torch.sort(x, dim=0).values
    if rule == "median":
        return 0.5 * (s[(n - 1) // 2] + s[n // 2])
    return s[f: n - f].mean(dim=0)


AGG_CASES = ([(n, d, "median", True) for n, d in AGG_SIZES]
             + [(64, 2**20, "trimmed-mean", True), (64, 2**20, "median", False)]
             + ([(64, 2**24, "median", False)] if CUDA else []))


@pytest.mark.parametrize("provider", AGG_PROVIDERS)
@pytest.mark.parametrize("n, d, rule, nnm", AGG_CASES,
                         ids=[f"{'nnm+' if nnm else ''}{rule}-n={n}-d={d}" for n, d, rule, nnm in AGG_CASES])
def test_bench_robust_aggregate(benchmark, copy_gbps, provider, n, d, rule, nnm):
    _skip_unless_runnable(provider)
    f = (n - 1) // 4
    g = torch.Generator(device=DEVICE).manual_seed(0)
    x = torch.randn(n, d, device=DEVICE, generator=g)
    x[:f] += 10.0    # f outlying rows: NNM has something to reject
    if provider == "composite":
        fn = lambda: composite_baseline(x, f, rule, nnm)  # noqa: E731
    else:
        fn = lambda: robust_aggregate(x, f, rule, nnm=nnm, backend=provider)  # noqa: E731
    passes = 2 if nnm else 1
    _measure(benchmark, fn, case=("aggregate", rule, nnm, n, d), provider=provider,
             bytes_moved=passes * n * d * 4 + d * 4, copy_gbps=copy_gbps,
             rounds=20 if CUDA else (3 if n * d >= 2**25 else 5))


NNM_SIZES = [(32, 10**6), (64, 2**20)]


def _outlying_rows(n: int, d: int) -> tuple[torch.Tensor, int]:
    f = (n - 1) // 4
    x = torch.randn(n, d, device=DEVICE, generator=torch.Generator(device=DEVICE).manual_seed(0))
    x[:f] += 10.0
    return x, f


def composite_nnm(x: torch.Tensor, f: int) -> torch.Tensor:
    n = x.shape[0]
    idx = torch.cdist(x, x).topk(n - f, dim=1, largest=False).indices
    return torch.zeros(n, n, dtype=x.dtype, device=x.device).scatter_(1, idx, 1.0 / (n - f)) @ x


@pytest.mark.parametrize("provider", ["composite", "torch", "triton"])
@pytest.mark.parametrize("n, d", NNM_SIZES, ids=[f"n={n}-d={d}" for n, d in NNM_SIZES])
def test_bench_nearest_neighbour_mixing(benchmark, copy_gbps, provider, n, d):
    _skip_unless_runnable(provider)
    x, f = _outlying_rows(n, d)
    if provider == "composite":
        fn = lambda: composite_nnm(x, f)  # noqa: E731
    else:
        fn = lambda: nearest_neighbour_mixing(x, f, backend=provider)  # noqa: E731
    _measure(benchmark, fn, case=("nnm", n, d), provider=provider, bytes_moved=3 * n * d * 4,
             copy_gbps=copy_gbps, rounds=20 if CUDA else 3)


@pytest.mark.parametrize("provider", ["cdist", "torch", "triton"])
@pytest.mark.parametrize("n, d", NNM_SIZES, ids=[f"n={n}-d={d}" for n, d in NNM_SIZES])
def test_bench_pairwise_sq_distances(benchmark, copy_gbps, provider, n, d):
    _skip_unless_runnable(provider)
    x, _ = _outlying_rows(n, d)
    if provider == "cdist":
        fn = lambda: torch.cdist(x, x).square_()  # noqa: E731
    else:
        fn = lambda: pairwise_sq_distances(x, backend=provider)  # noqa: E731
    _measure(benchmark, fn, case=("distances", n, d), provider=provider, bytes_moved=n * d * 4,
             copy_gbps=copy_gbps, rounds=20 if CUDA else 5)
