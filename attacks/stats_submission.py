"""Applying an attack to one channel's submission: generic rows (gradients) and BN statistics.

A Byzantine client that does not attack a channel, or a field of the BN statistics, submits the
honest mean there: a no-op for the mean defense (DESIGN.md §1). For batch statistics merged with the law
of total variance (FBN's merge), the no-op is the honest union's statistics (noop="union"): a row
(μ̄, σ²_b) of the union leaves the merge of all n rows equal to the merge of the honest rows, where the
plain mean of the v_i would shrink the between-client term by h/n. Running statistics that the server
simply averages (naive BN) take the row-wise mean (noop="mean").
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from byzbn.attacks.registry import Defense, check_defense, check_submission, repeat_row
from byzbn.stats import ClientStats

FIELDS = ("mean", "var", "both")
NOOPS = ("union", "mean")

AttackFn = Callable[..., torch.Tensor]


def _check_attack(attack) -> None:
    if attack is not None and not callable(attack):
        raise ValueError(f"attack must be None (no attack) or an attack from make_attack, got {type(attack).__name__}")


def byzantine_rows(honest: torch.Tensor, attack: Optional[AttackFn], n: int, f: int,
                   defense: Optional[Defense] = None) -> torch.Tensor:
    """The f Byzantine rows [f, d] for honest rows [h = n − f, d]: attack's rows, or the no-op with attack=None."""
    _check_attack(attack)
    if attack is not None:
        return attack(honest, n, f, defense)
    f = check_submission(honest, n, f)
    check_defense(defense, False, "byzantine_rows")
    return repeat_row(honest.mean(dim=0), f)


def attack_stats(honest: ClientStats, attack: Optional[AttackFn], n: int, f: int, fields: str = "both",
                 defense: Optional[Defense] = None, noop: str = "union") -> ClientStats:
    """The full BN-statistics submission of n clients: the h honest rows first, then f Byzantine rows.

    fields picks what the attack targets: "mean", "var" or "both". Each attacked field gets the attack's
    rows computed from the honest rows of that field alone; the other field gets the no-op: with
    noop="union" the honest rows' mean and total variance mean_i(v_i + (μ_i − μ̄)²) (the union's
    biased variance when counts are equal), with noop="mean" the row-wise mean of the honest rows. The
    Byzantine clients claim the median honest count, the value that moves a count-based merge least
    conspicuously. defense is passed through to attacks that optimise against it.
    """
    if not isinstance(honest, ClientStats):
        raise ValueError(f"honest must be a byzbn.stats.ClientStats, got {type(honest).__name__}")
    if fields not in FIELDS:
        raise ValueError(f"fields must be one of {list(FIELDS)}, got {fields!r}")
    if noop not in NOOPS:
        raise ValueError(f"noop must be one of {list(NOOPS)}, got {noop!r}")
    _check_attack(attack)
    targeted = {"mean", "var"} if fields == "both" else {fields}
    mean_rows = byzantine_rows(honest.mean, attack if "mean" in targeted else None, n, f, defense)
    var_rows = byzantine_rows(honest.var, attack if "var" in targeted else None, n, f, defense)
    if noop == "union" and (attack is None or "var" not in targeted):
        # Equal weights, as in the robust merge: mean over clients of v_i + (μ_i − μ̄)².
        total = (honest.var + (honest.mean - honest.mean.mean(dim=0)) ** 2).mean(dim=0)
        var_rows = repeat_row(total, f)
    count_rows = honest.count.median().repeat(f)
    return ClientStats(mean=torch.cat([honest.mean, mean_rows]),
                       var=torch.cat([honest.var, var_rows]),
                       count=torch.cat([honest.count, count_rows]))


__all__ = ["FIELDS", "NOOPS", "byzantine_rows", "attack_stats"]
