"""byzbn.attacks: the Byzantine attack rules (DESIGN.md §5) and their registry.

    attack = make_attack("alie")                 # or ATTACKS["alie"](), validated parameters
    rows = attack(honest, n, f, defense=None)    # [f, d] Byzantine rows for honest rows [n - f, d]
    submission = attack_stats(stats, attack, n, f, fields="mean")   # BN statistics, n rows
"""
from byzbn.attacks.registry import ATTACKS, Attack, attack_parameters, make_attack, register
from byzbn.attacks.rules import (FOE_EPS, ALittleIsEnough, FallOfEmpires, GaussianNoise, InfFault, NaNFault,
                                 SignFlip, alie_z)
from byzbn.attacks.optimal import OptimalALIE, OptimalFOE, OptimalScaleAttack
from byzbn.attacks.stats_submission import FIELDS, NOOPS, attack_stats, byzantine_rows

__all__ = ["ATTACKS", "Attack", "attack_parameters", "make_attack", "register", "FOE_EPS", "alie_z",
           "SignFlip", "FallOfEmpires", "ALittleIsEnough", "GaussianNoise", "NaNFault", "InfFault",
           "OptimalScaleAttack", "OptimalFOE", "OptimalALIE", "FIELDS", "NOOPS", "attack_stats", "byzantine_rows"]
