"""byzbn.schemes: the BN schemes (DESIGN.md §4), one module each, and their registry.

    scheme = make_scheme("fbn", steps=300)
    @register_scheme("mine")          # a plugin's own scheme: subclass Scheme (byzbn.schemes.base)
    class Mine(Scheme): ...
"""
from byzbn.schemes.base import (SCHEMES, Scheme, StatsChannel, make_scheme, register_scheme, scheme_parameters,
                                update_running, write_running)
from byzbn.schemes.centralized import Centralized
from byzbn.schemes.naive import Naive
from byzbn.schemes.fbn import FederatedBN
from byzbn.schemes.fixbn import DEFAULT_FIXBN_FREEZE, FixBN
from byzbn.schemes.fedtan import FEDTAN_EXCHANGES_PER_LAYER, FedTAN, synchronize
from byzbn.schemes.hbn import HybridBN
from byzbn.schemes.groupnorm import DEFAULT_GROUPS, GroupNormScheme

__all__ = ["SCHEMES", "Scheme", "StatsChannel", "make_scheme", "register_scheme", "scheme_parameters",
           "update_running", "write_running", "Centralized", "Naive", "FederatedBN", "DEFAULT_FIXBN_FREEZE",
           "FixBN",
           "FEDTAN_EXCHANGES_PER_LAYER", "FedTAN", "synchronize", "HybridBN",
           "DEFAULT_GROUPS", "GroupNormScheme"]
