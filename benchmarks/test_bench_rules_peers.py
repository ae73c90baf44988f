"""Throughput of bulyan, dnc, signguard and clippedclustering against plain implementations of the same maths,
side by side in one run (`pytest --benchmark benchmarks/test_bench_rules_peers.py`).

n = 32, d = 10^6 float32 on CPU with 2 intra-op threads, f = ⌊(n − 3)/4⌋ = 7 (Bulyan's largest) with f
outlying rows. The plain providers are what the peers' code does, in torch/numpy/scikit-learn:
Bulyan as Flower's aggregate_bulyan (Krum on the rows left each round from one torch.cdist, then torch
median and an argsort of |x − median| over the [θ, d] picked rows), DnC as Blades' (torch.linalg.svd of
the subsample, x[kept].mean), SignGuard as the authors' code (torch.norm, scikit-learn's MeanShift,
x[kept] scaled and averaged) and ClippedClustering as Blades' (the rows clipped into a copy, cosine
similarity pair by pair, scikit-learn's AgglomerativeClustering). Providers run the plain one first, so
byzbn's entry records `speedup_vs_plain`. `extra_info`: bytes of one read of x, the passes over x
byzbn's algorithm makes, GB/s of those at the median time and that as a fraction of the copy bandwidth.
Targets are read off these numbers, never asserted.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from byzbn.defenses import make_defense

N, D = 32, 10**6
F = (N - 3) // 4
_MEDIANS: dict[str, dict[str, float]] = {}   # case → provider → median seconds

# name → passes over x byzbn makes (a pass over θ of n rows counts θ/n)
PASSES = {"bulyan": 1 + (N - 2 * F) / N, "dnc": 1 + (N - F) / N, "signguard": 1.1 + (N - F) / N,
          "clippedclustering": 1 + (N - F) / N}


def plain_bulyan(x: torch.Tensor, f: int) -> torch.Tensor:
    dist = torch.cdist(x, x) ** 2
    left, picked = list(range(x.shape[0])), []
    for _ in range(x.shape[0] - 2 * f):
        sub = dist[left][:, left]
        k = max(1, len(left) - f - 2)
        scores = torch.sort(sub, dim=1).values[:, 1:k + 1].sum(dim=1)
        picked.append(left.pop(int(scores.argmin())))
    sel = x[picked]
    beta = len(picked) - 2 * f
    med = sel.median(dim=0).values
    nearest = torch.argsort((sel - med).abs(), dim=0)[:beta]
    return torch.gather(sel, 0, nearest).mean(dim=0)


def plain_dnc(x: torch.Tensor, f: int, b: int = 10000) -> torch.Tensor:
    idx = torch.randperm(x.shape[1])[:b]
    sub = x[:, idx]
    centred = sub - sub.mean(dim=0)
    v = torch.linalg.svd(centred, full_matrices=False).Vh[0]
    scores = (centred @ v) ** 2
    kept = scores.argsort()[: x.shape[0] - f]
    return x[kept].mean(dim=0)


def plain_signguard(x: torch.Tensor) -> torch.Tensor:
    from sklearn.cluster import MeanShift, estimate_bandwidth
    norms = torch.norm(x, dim=1)
    m = float(np.median(norms.numpy()))
    s1 = set(torch.nonzero((norms >= 0.1 * m) & (norms <= 3.0 * m)).flatten().tolist())
    k = int(0.1 * x.shape[1])
    start = int(torch.randint(0, x.shape[1] - k + 1, (1,)))
    signs = torch.sign(x[:, start:start + k])
    feats = torch.stack([(signs == 1).sum(1), (signs == 0).sum(1), (signs == -1).sum(1)], dim=1).double() / k
    feats = (feats / (feats.max(dim=0).values + 1e-8)).numpy()
    labels = MeanShift(bandwidth=estimate_bandwidth(feats, quantile=0.5), cluster_all=False).fit(feats).labels_
    best = np.bincount(labels[labels >= 0]).argmax()
    kept = sorted(s1 & set(np.flatnonzero(labels == best).tolist()))
    sel = x[kept]
    scale = torch.clamp(m / norms[kept], max=1.0)
    return (sel * scale[:, None]).mean(dim=0)


def plain_clippedclustering(x: torch.Tensor) -> torch.Tensor:
    from sklearn.cluster import AgglomerativeClustering
    norms = torch.norm(x, dim=1)
    tau = min(float(np.median(norms.numpy())), 1e5)
    clipped = x * torch.clamp(tau / norms, max=1.0)[:, None]
    n = x.shape[0]
    dist = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            dist[i, j] = dist[j, i] = 1 - float(torch.nn.functional.cosine_similarity(clipped[i], clipped[j], dim=0))
    labels = AgglomerativeClustering(n_clusters=2, metric="precomputed", linkage="average").fit(dist).labels_
    flag = 1 if labels.sum() > n // 2 else 0
    return clipped[labels == flag].mean(dim=0)


PLAIN = {"bulyan": lambda x: plain_bulyan(x, F), "dnc": lambda x: plain_dnc(x, F), "signguard": plain_signguard,
         "clippedclustering": plain_clippedclustering}


@pytest.fixture(scope="module")
def submissions():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=g)
    x[:F] += 10.0    # f outlying rows, as in the other rule benchmarks
    return x


@pytest.mark.parametrize("provider", ["plain", "byzbn"])
@pytest.mark.parametrize("name", list(PASSES))
def test_bench_peer_rules(benchmark, two_threads, submissions, copy_gbps, provider, name):
    x = submissions
    defense = make_defense(name, F)
    fn = (lambda: defense(x)) if provider == "byzbn" else (lambda: PLAIN[name](x))
    benchmark.pedantic(fn, rounds=3, iterations=1, warmup_rounds=1)
    median = benchmark.stats.stats.median
    one_read = N * D * 4
    gbps = PASSES[name] * one_read / median / 1e9
    info = dict(device="cpu", threads=torch.get_num_threads(), n=N, d=D, f=F, bytes=one_read,
                passes=round(PASSES[name], 2), gbps=round(gbps, 2), copy_gbps=round(copy_gbps, 2),
                roofline_fraction=round(gbps / copy_gbps, 3), median_ms=round(median * 1e3, 1))
    seen = _MEDIANS.setdefault(name, {})
    for base, t in seen.items():
        info[f"speedup_vs_{base}"] = round(t / median, 2)
    seen[provider] = median
    benchmark.extra_info.update(info)
