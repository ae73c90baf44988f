"""Fixtures shared by the CPU benchmarks of the aggregation rules (test_bench_rules*.py)."""
import sys
import time
from pathlib import Path

import pytest
import torch

# The tests' helpers (tests/byzfl_aggregators.py: ByzFL's rules loaded without its package __init__).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

THREADS = 2  # ByzFL's published-here timings (benchmarks/RESULTS.md) were taken with 2 threads


@pytest.fixture(scope="module")
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def copy_gbps(two_threads) -> float:
    """RAM-to-RAM copy bandwidth, read + write bytes per second / 1e9 (the roofline of a CPU rule)."""
    src = torch.empty(2**26, dtype=torch.uint8).fill_(1)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.numel() / best / 1e9
