"""One DSGD step of ResNet-20 and ResNet-18 (width 1 and 0.25): byzbn's batched step against plain torch.

Run with `pytest benchmarks/test_bench_models.py --benchmark`. CIFAR-shaped inputs (3x32x32), n = 10
clients, batch 16 per client, no attack. byzbn's step is `Federation.step()` of the federated model
(naive BN: per-client statistics from the fused kernel; FBN: the server's running statistics, and the
clients' statistics recorded and merged); the plain-torch step is the unconverted model (nn.BatchNorm2d)
on the same union batch of 160 images: forward, cross-entropy, backward, SGD with the same momentum.
Both are timed in the test, interleaved step by step; `extra_info["ratio"]` is the median byzbn step
time over the median plain step time (what byzbn's federation costs on top of training the model).
Both run on one intra-op thread: on a shared 2-core machine a second thread mostly waits at OpenMP
barriers for a core another job holds.
"""
from __future__ import annotations

import statistics
import time

import pytest
import torch
import torch.nn.functional as F

from byzbn.fl import Federation, make_scenario
from byzbn.nn import build_model, plain_model
from byzbn.schemes import make_scheme

N_CLIENTS = 10
BATCH = 16
SHAPE = (3, 32, 32)
ROUNDS = 3
CASES = [(model, width, scheme) for model in ("resnet20", "resnet18") for width in (1.0, 0.25)
         for scheme in ("naive", "fbn")]


def _data():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N_CLIENTS * 32, *SHAPE, generator=gen)
    y = torch.randint(0, 10, (N_CLIENTS * 32,), generator=gen)
    return x, y, torch.arange(N_CLIENTS * 32).view(N_CLIENTS, 32)


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@pytest.mark.parametrize("model_name,width,scheme", CASES)
def test_dsgd_step_byzbn_vs_plain_torch(benchmark, one_thread, model_name, width, scheme):
    x, y, parts = _data()
    sch = make_scheme(scheme, 100)
    torch.manual_seed(0)
    fed = Federation(build_model(model_name, SHAPE, 10, width, sch), sch, make_scenario("no-attack", N_CLIENTS, 0,
                                                                                        None, None),
                     x, y, parts, batch_size=BATCH, lr=0.01, momentum=0.9, seed=0)
    torch.manual_seed(0)
    plain = plain_model(model_name, SHAPE, 10, width).train()
    optimizer = torch.optim.SGD(plain.parameters(), lr=0.01, momentum=0.9, dampening=0.1)
    union = fed.client_batch(0)

    def plain_step():
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(plain(union[0]), union[1]).backward()
        optimizer.step()

    _timed(fed.step), _timed(plain_step)  # warm-up
    times = {"byzbn": [], "plain": []}
    for _ in range(ROUNDS):  # interleaved: a background load that comes and goes hits both alike
        times["byzbn"].append(_timed(fed.step))
        times["plain"].append(_timed(plain_step))
    benchmark.pedantic(fed.step, rounds=1, iterations=1)
    byzbn_s, plain_s = statistics.median(times["byzbn"]), statistics.median(times["plain"])
    benchmark.extra_info.update(model=model_name, width=width, scheme=scheme, clients=N_CLIENTS, batch=BATCH,
                                threads=torch.get_num_threads(), byzbn_s=byzbn_s, plain_s=plain_s,
                                ratio=byzbn_s / plain_s)
