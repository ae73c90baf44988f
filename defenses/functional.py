"""The plain-torch reference semantics of the robust aggregation rules (DESIGN.md §6).

They live beside the kernels, in byzbn.kernels.reference (the kernels are tested against them and must
not import byzbn.defenses); this module re-exports them so `byzbn.defenses.functional` keeps working.
"""
from byzbn.kernels.reference import (
    coordinate_median,
    finite_rows,
    mean,
    nnm,
    nnm_neighbours,
    pairwise_sq_distances,
    trimmed_mean,
)

__all__ = ["coordinate_median", "finite_rows", "mean", "nnm", "nnm_neighbours", "pairwise_sq_distances",
           "trimmed_mean"]
