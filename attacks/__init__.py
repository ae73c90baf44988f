"""byzbn.attacks: the Byzantine attack rules (DESIGN.md §5), their registry and the plugin contract (§9).

    attack = make_attack("alie")                             # or make_attack("gaussian", sigma=10.0)
    context = AttackContext(n, f, defense=defense, generator=gen, step=step)
    rows = attack(honest, context)                           # [f, d] Byzantine rows for honest rows [n − f, d]
    rows = byzantine_rows(honest, attack, context)           # the same, checked; attack=None gives the no-op rows
    submission = attack_stats(stats, attack, context, fields="mean")   # BN statistics, n rows

A plugin adds an attack with `@register_attack("name")` on a class (`__init__(self, **params)`,
`__call__(self, honest, context)`, or derive from Attack and implement `rows(honest, context)`) or on
a plain function `fn(honest, context)`.
"""

if __name__ != "byzbn.attacks":  # e.g. `import attacks` from the repository root
    raise ImportError(f"this folder is the package byzbn.attacks: import byzbn.attacks, not {__name__} "
                      "(the same files under two names would be two separate modules, each with its own state)")

from byzbn.attacks.context import AttackContext
from byzbn.attacks.registry import ATTACKS, Attack, attack_parameters, make_attack, register, register_attack
from byzbn.attacks.rules import (FOE_EPS, ALittleIsEnough, FallOfEmpires, GaussianNoise, InfFault, NaNFault,
                                 SignFlip, alie_z)
from byzbn.attacks.optimal import OptimalALIE, OptimalFOE, OptimalScaleAttack
from byzbn.attacks.mimic import Mimic
from byzbn.attacks.bn_adaptive import BNAdaptive
from byzbn.attacks.minmax import MinMax, MinSum
from byzbn.attacks.fang import FangKrum, FangTrimmed
from byzbn.attacks.label_flip import LabelFlip, poisons_data
from byzbn.attacks.stats_submission import FIELDS, NOOPS, attack_stats, byzantine_rows

__all__ = ["AttackContext", "ATTACKS", "Attack", "attack_parameters", "make_attack",
           "register_attack", "register", "FOE_EPS", "alie_z", "SignFlip", "FallOfEmpires", "ALittleIsEnough",
           "GaussianNoise", "NaNFault", "InfFault", "OptimalScaleAttack", "OptimalFOE", "OptimalALIE",
           "Mimic", "BNAdaptive", "MinMax", "MinSum", "FangTrimmed", "FangKrum", "FIELDS", "NOOPS", "attack_stats",
           "byzantine_rows", "LabelFlip", "poisons_data"]
