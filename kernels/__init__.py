"""byzbn.kernels: fused kernels with one explicit dispatch per op (CUDA → Triton, otherwise torch).

- client_stats(x, backend="auto") → byzbn.stats.ClientStats: per-client BN mean / biased variance.
- robust_aggregate(x, f, rule, nnm=True, backend="auto") → [d]: NNM, then mean / median / trimmed mean.

Each op's module holds its Triton kernel, the launcher and a fast torch path for CPU;
pairwise_distances and order_statistics are the parts robust_aggregate is built from.
"""
from byzbn.kernels.client_stats import client_stats
from byzbn.kernels.robust_aggregate import robust_aggregate

__all__ = ["client_stats", "robust_aggregate"]
