"""One Robust-DSGD step for n = 16 clients: the batched engine against the per-client loop.

Run with `pytest benchmarks/test_bench_dsgd.py --benchmark`. Both engines are timed in the test,
interleaved step by step, and `extra_info["speedup"]` holds the median loop step time over the median
batched step time (targets: >= 1.2x on CPU, >= 3x on GPU); pytest-benchmark's own table times the
batched step. Inputs are mnist5k-shaped (28x28), width 0.25, batch 16 per client.
"""
from __future__ import annotations

import statistics
import time

import pytest
import torch

from byzbn.attacks import make_attack
from byzbn.defenses import make_defense
from byzbn.fl import Federation, make_scenario
from byzbn.nn.models import make_cnn
from byzbn.schemes import make_scheme

N_CLIENTS = 16
BATCH = 16
WIDTH = 0.25
ROUNDS = 15
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


def _federation(scheme: str, byzantine: int, target: str, device: str, per_client_grads: str) -> Federation:
    h = N_CLIENTS - byzantine
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(h * 64, 1, 28, 28, generator=gen).to(device)
    y = torch.randint(0, 10, (h * 64,), generator=gen).to(device)
    sch = make_scheme(scheme, 100)
    torch.manual_seed(0)
    model = make_cnn((1, 28, 28), 10, WIDTH, norm=sch.make_norm).to(device)
    scenario = "attack+defense" if byzantine else "no-attack"
    sc = make_scenario(scenario, N_CLIENTS, byzantine, make_attack("alie"),
                       make_defense("median", byzantine, pre="nnm"), target=target)
    return Federation(model, sch, sc, x, y, torch.arange(h * 64).view(h, 64), batch_size=BATCH, lr=0.01, seed=0,
                      per_client_grads=per_client_grads)


def _timed_step(fed: Federation, engine: str, device: str) -> float:
    start = time.perf_counter()
    fed.step(engine)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("scheme,byzantine,target", [("naive", 0, "stats"), ("fbn", 0, "stats"),
                                                     ("fbn", 3, "both")])
def test_dsgd_step_batched_vs_loop(benchmark, device, scheme, byzantine, target):
    # With gradients attacked, the batched engine's per-client gradients come from the vmap pass here
    # (the runner's "auto" uses the loop on CPU, where it measured faster).
    batched = _federation(scheme, byzantine, target, device, "vmap")
    loop = _federation(scheme, byzantine, target, device, "loop")
    for _ in range(2):  # warm-up (allocator, oneDNN primitive cache, CUDA context)
        _timed_step(batched, "batched", device)
        _timed_step(loop, "loop", device)
    # Interleaved, so that a background load that comes and goes hits both engines alike.
    times = {"batched": [], "loop": []}
    for _ in range(ROUNDS):
        times["batched"].append(_timed_step(batched, "batched", device))
        times["loop"].append(_timed_step(loop, "loop", device))
    benchmark.pedantic(_timed_step, args=(batched, "batched", device), rounds=ROUNDS, iterations=1)
    batched_s, loop_s = statistics.median(times["batched"]), statistics.median(times["loop"])
    benchmark.extra_info.update(clients=N_CLIENTS, byzantine=byzantine, target=target, batch=BATCH, width=WIDTH,
                                threads=torch.get_num_threads(), loop_s=loop_s, batched_s=batched_s,
                                speedup=loop_s / batched_s,
                                engine="vmap per-client gradients" if batched.per_client else "one stacked backward")
