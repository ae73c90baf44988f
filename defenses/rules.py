"""The paper's rules (DESIGN.md §6): mean, coordinate-wise median, trimmed mean, and the NNM pre-aggregator.

Each computes through byzbn.kernels (Triton on CUDA, the torch fast path otherwise, the differentiable
reference when x requires grad), so a built-in used on its own and the fused kernel share one semantics.
`fused_call` names the compositions the fused kernel implements; make_defense's Defense uses it as a
fast path and runs the registered objects one after another for everything else.
"""
from __future__ import annotations

from typing import ClassVar, Optional, Sequence

import torch

from byzbn import kernels
from byzbn._checks import check_f, check_matrix
from byzbn.defenses.registry import Aggregator, PreAggregator, register_aggregator, register_pre_aggregator


class CoordinateRule(Aggregator):
    """A coordinate-wise rule implemented by kernels.robust_aggregate under the name `kernel_rule`."""

    kernel_rule: ClassVar[str]

    def check_n(self, n: int) -> None:
        check_f(self.f, n, self.kernel_rule if self.kernel_rule != "mean" else "")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        check_matrix("x", x)
        self.check_n(x.shape[0])
        return kernels.robust_aggregate(x, self.f, self.kernel_rule, nnm=False)


@register_aggregator("mean")
class Mean(CoordinateRule):
    """Coordinate-wise mean: no robustness (the baseline); needs only f <= n."""

    kernel_rule = "mean"


@register_aggregator("median")
class CoordinateMedian(CoordinateRule):
    """Coordinate-wise median (even row count: mean of the two middle values); needs 2f < n."""

    kernel_rule = "median"


@register_aggregator("trimmed-mean")
class TrimmedMean(CoordinateRule):
    """Coordinate-wise mean after dropping the f largest and f smallest values; needs 2f < n."""

    kernel_rule = "trimmed-mean"


@register_pre_aggregator("nnm")
class NearestNeighbourMixing(PreAggregator):
    """NNM: row i ← mean of the n−f rows nearest to row i (itself included); needs n − f >= 1."""

    def check_n(self, n: int) -> None:
        check_f(self.f, n, "nnm")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        check_matrix("x", x)
        self.check_n(x.shape[0])
        return kernels.nearest_neighbour_mixing(x, self.f)


def fused_call(pre_aggregators: Sequence, rule) -> Optional[tuple[str, bool]]:
    """(kernel rule, nnm) when kernels.robust_aggregate computes exactly pre_aggregators then rule, else None.

    Exact types only: a subclass may override __call__, and then it is what must run.
    """
    if type(rule) not in (Mean, CoordinateMedian, TrimmedMean):
        return None
    if not pre_aggregators:
        return rule.kernel_rule, False
    if len(pre_aggregators) == 1 and type(pre_aggregators[0]) is NearestNeighbourMixing:
        return rule.kernel_rule, True
    return None


__all__ = ["CoordinateRule", "Mean", "CoordinateMedian", "TrimmedMean", "NearestNeighbourMixing", "fused_call"]
