"""byzbn.defenses: robust aggregation rules (DESIGN.md §6) and their registries.

    from byzbn.defenses import make_defense
    agg = make_defense("median", f=2, pre="nnm")   # nnm∘median(f=2)
    out = agg(x)                                   # x [n, d] -> [d]

`functional` holds the plain-torch reference semantics the kernels are tested against.
"""
from byzbn.defenses import functional
from byzbn.defenses.registry import (
    DEFENSES,
    PRE_AGGREGATORS,
    CoordinateMedian,
    Defense,
    Mean,
    NearestNeighbourMixing,
    PreAggregator,
    TrimmedMean,
    make_defense,
    register,
    register_pre,
)

__all__ = [
    "DEFENSES", "PRE_AGGREGATORS", "CoordinateMedian", "Defense", "Mean", "NearestNeighbourMixing",
    "PreAggregator", "TrimmedMean", "functional", "make_defense", "register", "register_pre",
]
