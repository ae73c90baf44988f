"""byzbn.kernels: GPU kernels with one explicit dispatch per op (CUDA → Triton, otherwise torch)."""
from byzbn.kernels.client_stats import client_stats
from byzbn.kernels.robust_aggregate import robust_aggregate

__all__ = ["client_stats", "robust_aggregate"]
