"""byzbn.kernels: fused kernels with one explicit dispatch per op (CUDA → Triton, otherwise torch).

- client_stats(x, backend="auto") → byzbn.stats.ClientStats: per-client BN mean / biased variance.
- robust_aggregate(x, f, rule, nnm=True, backend="auto") → [d]: NNM, then mean / median / trimmed mean.
- nearest_neighbour_mixing(x, f, backend="auto") → [n, d]: the NNM rows themselves.
- reference: the float64-friendly plain-torch references (finite_rows, pairwise_sq_distances,
  nnm_neighbours, nnm, mean, coordinate_median, trimmed_mean) the fast paths are tested against.

Each op's module holds its Triton kernel, the launcher and a fast torch path for CPU;
pairwise_distances, mixing and order_statistics are the parts robust_aggregate is built from.
Kernels import nothing of byzbn but byzbn._checks, byzbn._threads and byzbn.stats.
"""

if __name__ != "byzbn.kernels":  # e.g. `import kernels` from the repository root
    raise ImportError(f"this folder is the package byzbn.kernels: import byzbn.kernels, not {__name__} "
                      "(the same files under two names would be two separate modules, each with its own state)")

from byzbn.kernels import reference
from byzbn.kernels.client_stats import client_stats
from byzbn.kernels.mixing import nearest_neighbour_mixing
from byzbn.kernels.robust_aggregate import robust_aggregate

__all__ = ["client_stats", "nearest_neighbour_mixing", "reference", "robust_aggregate"]
