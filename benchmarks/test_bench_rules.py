"""Throughput of the catalogue's selection rules against ByzFL 0.0.11, side by side in one run
(`pytest --benchmark benchmarks/test_bench_rules.py`).

The targets, on CPU with 2 intra-op threads: at n = 32, d = 10^6 float32, byzbn at least 3× faster
than ByzFL (measured there: Krum 400 ms, MultiKrum 481 ms, CAF 808 ms); MDA and SMEA exact in <= 2 s at
n = 32, f = 6, d = 10^5 (ByzFL enumerates the C(32, 6) = 906,192 subsets there: about two minutes a call,
so its provider is skipped at that size and measured at n = 16, f = 3 instead).

One table, CASES: a case is a rule with its parameters, the sizes, the data, ByzFL's class and arguments,
and the passes over x byzbn's algorithm makes. Providers: `byzfl` (skipped when ByzFL is not installed
or too slow for the case), `byzbn` (CPU), `byzbn-cuda` (the Triton distance kernel; skipped without CUDA).
ByzFL runs first, so byzbn's entries record `speedup_vs_byzfl`. Data: "attacked" = honest N(0, 1) rows and
f rows shifted by +10 (as benchmarks/test_bench_kernels.py), "iid" = all rows N(0, 1): SMEA's hardest
case, where every subset is about as spread as every other and the branch and bound prunes least.
`extra_info`: bytes of one read of x (n·d·4), the passes, GB/s of those passes at the median time, that
as a fraction of the measured copy bandwidth (the roofline), and the speedup. Never asserted.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import pytest
import torch

from byzbn.defenses import make_defense
from byzfl_aggregators import load_byzfl_aggregators  # tests/: ByzFL's rules without its package __init__

CUDA = torch.cuda.is_available()
_MEDIANS: dict[str, dict[str, float]] = {}   # case id → provider → median seconds


class Case(NamedTuple):
    rule: str                       # byzbn's registered name
    params: dict                    # byzbn's parameters (besides f)
    n: int
    d: int
    f: int
    data: str                       # "attacked" or "iid"
    byzfl: Optional[tuple]          # (ByzFL class name, positional args), None: not run (too slow / absent)
    passes: int                     # passes over x byzbn makes (distances, then the mean)

    @property
    def id(self) -> str:
        extra = "".join(f"-{k}={v}" for k, v in self.params.items())
        return f"{self.rule}{extra}-n={self.n}-d={self.d}-f={self.f}-{self.data}"


CASES = [
    Case("krum", {}, 32, 10**6, 6, "attacked", ("Krum", (6,)), 1),
    Case("multi-krum", {}, 32, 10**6, 6, "attacked", ("MultiKrum", (6,)), 2),
    Case("caf", {}, 32, 10**6, 6, "attacked", ("CAF", (6,)), 2),
    Case("monna", {}, 32, 10**6, 6, "attacked", ("MoNNA", (6,)), 2),
    Case("mda", {}, 16, 10**5, 3, "attacked", ("MDA", (3,)), 2),
    Case("smea", {}, 16, 10**5, 3, "attacked", ("SMEA", (3,)), 2),
    Case("mda", {}, 32, 10**5, 6, "attacked", None, 2),
    Case("mda", {}, 32, 10**5, 6, "iid", None, 2),
    Case("smea", {}, 32, 10**5, 6, "attacked", None, 2),
    Case("smea", {}, 32, 10**5, 6, "iid", None, 2),
]


_DATA: dict[tuple, torch.Tensor] = {}


def submissions(case: Case) -> torch.Tensor:
    key = (case.n, case.d, case.f, case.data)
    if key not in _DATA:
        _DATA.clear()                    # one matrix at a time (128 MB at n = 32, d = 10^6)
        x = torch.randn(case.n, case.d, generator=torch.Generator().manual_seed(0))
        if case.data == "attacked":
            x[: case.f] += 10.0
        _DATA[key] = x
    return _DATA[key]


def _callable(provider: str, case: Case, x: torch.Tensor):
    if provider == "byzfl":
        if case.byzfl is None:
            pytest.skip(f"ByzFL is not run on {case.id} (enumerating C(n, f) subsets takes minutes)")
        module = load_byzfl_aggregators()
        if module is None:
            pytest.skip("ByzFL is not installed")
        name, args = case.byzfl
        agg = getattr(module, name)(*args)
        return lambda: agg(x)
    defense = make_defense(case.rule, case.f, **case.params)
    if provider == "byzbn-cuda":
        if not CUDA:
            pytest.skip("the byzbn-cuda provider needs CUDA")
        xc = x.cuda()

        def on_gpu():
            out = defense(xc)
            torch.cuda.synchronize()
            return out

        return on_gpu
    return lambda: defense(x)


@pytest.mark.parametrize("provider", ["byzfl", "byzbn", "byzbn-cuda"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bench_selection_rules(benchmark, two_threads, copy_gbps, provider, case):
    x = submissions(case)
    fn = _callable(provider, case, x)
    if provider == "byzfl" and case.rule == "smea":      # ~45 s a call: one round, no warm-up
        benchmark.pedantic(fn, rounds=1, iterations=1, warmup_rounds=0)
    else:
        slow = provider == "byzfl" or case.rule == "smea"
        benchmark.pedantic(fn, rounds=3 if slow else 5, iterations=1, warmup_rounds=1)
    median = benchmark.stats.stats.median
    one_read = case.n * case.d * 4
    gbps = case.passes * one_read / median / 1e9
    info = dict(device=torch.cuda.get_device_name() if provider == "byzbn-cuda" else "cpu",
                threads=torch.get_num_threads(), n=case.n, d=case.d, f=case.f, data=case.data, bytes=one_read,
                passes=case.passes, gbps=round(gbps, 2), copy_gbps=round(copy_gbps, 2),
                roofline_fraction=round(gbps / copy_gbps, 3), median_ms=round(median * 1e3, 1))
    seen = _MEDIANS.setdefault(case.id, {})
    for base, t in seen.items():
        info[f"speedup_vs_{base}"] = round(t / median, 2)
    seen[provider] = median
    benchmark.extra_info.update(info)
