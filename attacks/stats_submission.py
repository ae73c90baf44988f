"""Applying an attack to one channel's submission: generic rows (gradients) and BN statistics.

A Byzantine client that does not attack a channel, or a field of the BN statistics, submits the
honest mean there: a no-op for the mean defense (DESIGN.md §1). For batch statistics merged with the law
of total variance (FBN's merge), the no-op is the honest union's statistics (noop="union"): a row
(μ̄, σ²_b) of the union leaves the merge of all n rows equal to the merge of the honest rows, where the
plain mean of the v_i would shrink the between-client term by h/n. Running statistics that the server
simply averages (naive BN) take the row-wise mean (noop="mean").

These are the entry points the runner uses: they validate the call, skip the attack when f = 0, and
hold every attack — registered classes that do not derive from Attack included — to the output contract.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Optional

import torch

from byzbn.attacks.context import AttackContext, AttackFn
from byzbn.attacks.registry import check_rows, check_submission, repeat_row
from byzbn.stats import ClientStats, merge_moments

FIELDS = ("mean", "var", "both")
NOOPS = ("union", "mean")


def _check_attack(attack) -> None:
    if attack is not None and not callable(attack):
        raise ValueError(f"attack must be None (no attack) or an attack from make_attack, got {type(attack).__name__}")


def byzantine_rows(honest: torch.Tensor, attack: Optional[AttackFn], context: AttackContext) -> torch.Tensor:
    """The f Byzantine rows [f, d] for honest rows [h = n − f, d]: attack's rows, or the no-op with attack=None."""
    _check_attack(attack)
    f = check_submission(honest, context)
    if attack is None or f == 0:
        return repeat_row(honest.mean(dim=0), f)
    who = f"attack {getattr(attack, 'name', '') or type(attack).__name__!r}"
    return check_rows(who, attack(honest, context), honest, f)


def union_row(honest: ClientStats) -> torch.Tensor:
    """[C] the honest clients' union variance with equal weights: mean_i v_i + (μ_i − μ̄)².

    Equal weights, as the robust merge uses: with them, f copies of (μ̄, this) leave the merge of all
    n rows equal to the merge of the honest rows.
    """
    equal = torch.ones((honest.n, 1), dtype=torch.int64, device=honest.mean.device)
    _, var = merge_moments(equal, honest.mean, honest.var, dim=0)
    return var.to(honest.var.dtype)


def claimed_count(count: torch.Tensor, f: int) -> torch.Tensor:
    """[f] or [f, C]: the median honest count (the lower middle for an even count), per channel if per channel.

    The value that moves a count-based merge least conspicuously.
    """
    middle = count.median(dim=0).values
    return middle.unsqueeze(0).repeat(f, *([1] * middle.dim()))


def attack_stats(honest: ClientStats, attack: Optional[AttackFn], context: AttackContext, fields: str = "both",
                 noop: str = "union") -> ClientStats:
    """The full BN-statistics submission of n clients: the h honest rows first, then f Byzantine rows.

    fields picks what the attack targets: "mean", "var" or "both". Each attacked field gets the attack's
    rows computed from the honest rows of that field alone (with the same context, its `field` set to
    "mean" or "var" so an attack can tell which statistics the rows are; its defense is what optimal
    attacks search against); the other field gets the no-op: with noop="union" the honest rows'
    mean and total variance (union_row), with noop="mean" the row-wise mean of the honest rows. The
    Byzantine clients claim the median honest count (claimed_count).
    """
    if not isinstance(honest, ClientStats):
        raise ValueError(f"honest must be a byzbn.stats.ClientStats, got {type(honest).__name__}")
    if fields not in FIELDS:
        raise ValueError(f"fields must be one of {list(FIELDS)}, got {fields!r}")
    if noop not in NOOPS:
        raise ValueError(f"noop must be one of {list(NOOPS)}, got {noop!r}")
    _check_attack(attack)
    if not isinstance(context, AttackContext):
        raise ValueError(f"context must be a byzbn.attacks.AttackContext, got {type(context).__name__}")
    targeted = {"mean", "var"} if fields == "both" else {fields}
    mean_rows = byzantine_rows(honest.mean, attack if "mean" in targeted else None, replace(context, field="mean"))
    var_rows = byzantine_rows(honest.var, attack if "var" in targeted else None, replace(context, field="var"))
    if noop == "union" and (attack is None or "var" not in targeted):
        var_rows = repeat_row(union_row(honest), context.f)
    return ClientStats(mean=torch.cat([honest.mean, mean_rows]),
                       var=torch.cat([honest.var, var_rows]),
                       count=torch.cat([honest.count, claimed_count(honest.count, context.f)]))


__all__ = ["FIELDS", "NOOPS", "byzantine_rows", "attack_stats", "union_row", "claimed_count"]
