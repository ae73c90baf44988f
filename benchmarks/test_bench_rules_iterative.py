"""Throughput of geomed, centered-clipping and meamed (and the bucketing / clipping / arc pre-aggregators)
against ByzFL 0.0.11, side by side in one run (`pytest --benchmark benchmarks/test_bench_rules_iterative.py`).

The target: at n = 32, d = 10^6 float32 on CPU with 2 intra-op threads, byzbn at least 3× faster
than ByzFL (measured there: GeoMed 688 ms, CenteredClipping 173 ms, Meamed 2,773 ms). Providers run
ByzFL first, so byzbn's entry records `speedup_vs_byzfl`; the byzfl provider is skipped when ByzFL is
not installed (or cannot be imported). ByzFL's defaults on both sides (geomed ν = 0.1, exactly T = 3 steps:
byzbn's T=3, tol=0; centered clipping L = 1, τ = 100 from the zero centre; meamed and arc with f = ⌊(n − 1)/4⌋ = 7; bucketing s = 2; clipping c = 2).
`extra_info`: bytes of one read of x (n·d·4), the passes over x byzbn's algorithm makes, GB/s of those
passes at the median time, and that as a fraction of the measured copy bandwidth (the roofline).
ByzFL's Clipping and ARC overwrite their input, so they get a copy made inside the timed call.
Targets are read off these numbers, never asserted.
"""
from __future__ import annotations

import importlib.util

import pytest
import torch

from byzbn.defenses import make_defense

N, D = 32, 10**6
F = (N - 1) // 4
_MEDIANS: dict[str, dict[str, float]] = {}   # case → provider → median seconds

# name → (byzbn's make_defense arguments [and rule parameters], passes over x, ByzFL's class name and arguments, copies input)
CASES = {
    "geomed": (("geomed", 0, None, {"T": 3, "tol": 0.0}), 4, ("GeometricMedian", ()), False),
    "centered-clipping": (("centered-clipping", 0, None, {"tau": 100.0}), 2, ("CenteredClipping", ()), False),
    "meamed": (("meamed", F, None), 1, ("Meamed", (F,)), False),
    "bucketing": (("mean", F, ("bucketing", {"s": 2})), 2, ("Bucketing", (2,)), False),
    "clipping": (("mean", F, "clipping"), 3, ("Clipping", ()), True),
    "arc": (("mean", F, "arc"), 3, ("ARC", (F,)), True),
}


def _byzfl():
    if importlib.util.find_spec("byzfl") is None:
        pytest.skip("ByzFL is not installed")
    from byzbn.data._torchvision import import_torchvision

    import_torchvision()   # ByzFL imports torchvision, whose CUDA build needs this on CPU-only torch
    try:
        import byzfl
    except ImportError as error:
        pytest.skip(f"ByzFL cannot be imported: {error}")
    return byzfl


@pytest.fixture(scope="module")
def submissions():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=g)
    x[:F] += 10.0    # f outlying rows, as in benchmarks/test_bench_kernels.py
    return x


def _callable(provider: str, name: str, x: torch.Tensor):
    (rule, f, pre, *params), _, (byzfl_class, byzfl_args), copies = CASES[name]
    if provider == "byzbn":
        defense = make_defense(rule, f, pre=pre, **(params[0] if params else {}))
        stage = defense.pre_aggregators[0] if pre is not None else defense
        return lambda: stage(x)
    agg = getattr(_byzfl(), byzfl_class)(*byzfl_args)
    return (lambda: agg(x.clone())) if copies else (lambda: agg(x))


@pytest.mark.parametrize("provider", ["byzfl", "byzbn"])
@pytest.mark.parametrize("name", list(CASES))
def test_bench_catalogue_rules(benchmark, two_threads, submissions, copy_gbps, provider, name):
    fn = _callable(provider, name, submissions)
    slow = provider == "byzfl" and name == "meamed"
    benchmark.pedantic(fn, rounds=2 if slow else 5, iterations=1, warmup_rounds=1)
    median = benchmark.stats.stats.median
    one_read = N * D * 4
    passes = CASES[name][1]
    gbps = passes * one_read / median / 1e9
    info = dict(device="cpu", threads=torch.get_num_threads(), n=N, d=D, bytes=one_read, passes=passes,
                gbps=round(gbps, 2), copy_gbps=round(copy_gbps, 2), roofline_fraction=round(gbps / copy_gbps, 3),
                median_ms=round(median * 1e3, 1))
    seen = _MEDIANS.setdefault(name, {})
    for base, t in seen.items():
        info[f"speedup_vs_{base}"] = round(t / median, 2)
    seen[provider] = median
    benchmark.extra_info.update(info)
