"""byzbn.defenses: robust aggregation rules, pre-aggregators (DESIGN.md §6) and their registries (§9).

    from byzbn.defenses import make_defense
    agg = make_defense("median", f=2, pre="nnm")   # nnm∘median(f=2): NNM, then the coordinate-wise median
    out = agg(x)                                   # x [n, d] -> [d]

A plugin adds a rule with `@register_aggregator("name")` or a pre-aggregator with
`@register_pre_aggregator("name")` (see byzbn.defenses.registry for the contract); make_defense then
builds it by name. `functional` holds the plain-torch reference semantics the kernels are tested against.
"""

if __name__ != "byzbn.defenses":  # e.g. `import defenses` from the repository root
    raise ImportError(f"this folder is the package byzbn.defenses: import byzbn.defenses, not {__name__} "
                      "(the same files under two names would be two separate modules, each with its own state)")

from byzbn.defenses import functional
from byzbn.defenses.registry import (AGGREGATORS, DEFENSES, PRE_AGGREGATORS, Aggregator, PreAggregator,
                                     aggregator_parameters, pre_aggregator_parameters, register_aggregator,
                                     register_pre_aggregator)
from byzbn.defenses.rules import CoordinateMedian, Mean, NearestNeighbourMixing, TrimmedMean
from byzbn.defenses.defense import Defense, make_defense
from byzbn.defenses.iterative_rules import CenteredClipping, GeometricMedian
from byzbn.defenses.meamed import Meamed
from byzbn.defenses.pre_aggregators import AdaptiveRobustClipping, Bucketing, Clipping
from byzbn.defenses.distance_rules import Krum, MoNNA, MultiKrum
from byzbn.defenses.caf import CAF
from byzbn.defenses.subset_rules import MDA, SMEA
from byzbn.defenses.bulyan import Bulyan
from byzbn.defenses.dnc import DnC
from byzbn.defenses.clipped_clustering import ClippedClustering
from byzbn.defenses.signguard import SignGuard

__all__ = [
    "AGGREGATORS", "PRE_AGGREGATORS", "DEFENSES", "register_aggregator", "register_pre_aggregator",
    "aggregator_parameters", "pre_aggregator_parameters", "Aggregator", "PreAggregator", "Mean",
    "CoordinateMedian", "TrimmedMean", "NearestNeighbourMixing", "Defense", "make_defense", "functional",
    "CenteredClipping", "GeometricMedian", "Meamed", "AdaptiveRobustClipping", "Bucketing", "Clipping", "Krum",
    "MoNNA", "MultiKrum", "CAF", "MDA", "SMEA", "Bulyan", "DnC", "ClippedClustering", "SignGuard",
]
