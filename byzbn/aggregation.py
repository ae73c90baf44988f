"""Attack, then aggregate: the server's side of one channel at one step, in ONE pure function (DESIGN.md §9).

    aggregate, state = attack_then_aggregate(honest, attack, defense, state, generator, context)

Every runner calls it — DSGD and FedAvg for the gradients/updates, the schemes' statistics merge (FBN,
naive BN, FedTAN inside the forward) through byzbn.schemes.StatsChannel, and the Flower strategy — so a
rule behaves the same in every engine. Given the h honest rows of a channel it

1. binds the defense to the step: a random stage (`randomized`: bucketing) draws from `generator`
   (the run's generator of that step and channel; one generator serves every call of the step), a
   stateful stage (`stateful`: centered clipping) starts from the previous aggregates in `state`;
2. forges the f Byzantine rows: the attack's (it optimises against the defense the server uses,
   bound to the step's first centre; its trial calls are never remembered), the no-op honest mean
   without an attack, or the rows the Byzantine clients computed themselves (`own`, data poisoning);
3. aggregates the n rows with `merge` (the defense itself for gradients; the two-phase robust merge
   for BN statistics) and returns the aggregate with the new state.

A step may aggregate a channel several times (the statistics' two phases, means then variances;
FedTAN's per layer): call k of a step starts from call k of the last step that aggregated the
channel, zeros before. The runner starts each step with `state.next_step()` and keeps the state in
its checkpoint (`AggregationState.state_dict`).

On the statistics channel the submission is differentiable where the protocol is: the no-op rows are
functions of the honest rows (gradients flow through them), the attack's rows are constants computed
from a detached copy. Without autograd this is exactly byzbn.attacks.attack_stats.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Optional, Union

import torch

from byzbn import stats as bnstats
from byzbn.attacks import AttackContext, attack_stats, byzantine_rows

Rows = Union[torch.Tensor, bnstats.ClientStats]
Merge = Callable[[Any, Callable[[torch.Tensor], torch.Tensor]], Any]


@dataclass(frozen=True)
class AggregationState:
    """What a stateful rule of one channel remembers: the aggregates of the last step, per call, and this step's."""

    previous: tuple = ()   # call k's aggregate at the last step that aggregated the channel
    current: tuple = ()    # this step's aggregates so far
    clipped: tuple = ()    # this step's calls' fractions of clipped rows (rules with `last_clipped_fraction`)

    def center(self, k: int) -> Optional[torch.Tensor]:
        return self.previous[k] if k < len(self.previous) else None

    def next_step(self) -> "AggregationState":
        """The state a new step starts from: this step's aggregates over the last step's (call by call)."""
        return AggregationState(self.current + self.previous[len(self.current):])

    def state_dict(self) -> list:
        return list(self.next_step().previous)

    @classmethod
    def from_state_dict(cls, state: list) -> "AggregationState":
        return cls(tuple(state))


def is_stateful(defense) -> bool:
    return bool(getattr(defense, "stateful", False))


def is_randomized(defense) -> bool:
    return bool(getattr(defense, "randomized", False))


def bind(defense, state: AggregationState, generator: Optional[torch.Generator]):
    """The defense drawing from the step's generator, and the one an attack optimises against (first centre)."""
    if generator is not None and is_randomized(defense):
        defense = defense.with_generator(generator)
    return defense, (defense.with_center(state.center(0)) if is_stateful(defense) else defense)


def apply(rows: torch.Tensor, aggregate: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """The default merge: the defense on the n rows."""
    return aggregate(rows)


def stats_submission(honest: bnstats.ClientStats, attack, context: AttackContext, fields: str = "both",
                     noop: str = "union") -> bnstats.ClientStats:
    """The n-row statistics submission (honest rows, then f Byzantine rows), differentiable in the honest rows.

    As byzbn.attacks.attack_stats, but the no-op rows are computed from `honest` itself and the attacked
    fields' Byzantine rows from a detached copy (constants).
    """
    quiet = attack_stats(honest, None, context, fields=fields, noop=noop)
    if attack is None or context.f == 0:
        return quiet
    with torch.no_grad():
        detached = bnstats.ClientStats(honest.mean.detach(), honest.var.detach(), honest.count)
        attacked = attack_stats(detached, attack, context, fields=fields, noop=noop)
    h, targeted = honest.n, ({"mean", "var"} if fields == "both" else {fields})
    mean = torch.cat([honest.mean, attacked.mean[h:]]) if "mean" in targeted else quiet.mean
    var = torch.cat([honest.var, attacked.var[h:]]) if "var" in targeted else quiet.var
    return bnstats.ClientStats(mean, var, quiet.count)


def _concat(honest: Rows, own: Rows) -> Rows:
    if isinstance(honest, bnstats.ClientStats):
        return bnstats.ClientStats(torch.cat([honest.mean, own.mean]), torch.cat([honest.var, own.var]),
                                   torch.cat([honest.count, own.count]))
    return torch.cat([honest, own])


def submission(honest: Rows, attack, context: AttackContext, own: Optional[Rows] = None, fields: str = "both",
               noop: str = "union") -> Rows:
    """The n rows the server receives: the h honest rows, then the f Byzantine rows (module docstring, step 2)."""
    if isinstance(honest, bnstats.ClientStats):
        if own is not None:
            return _concat(honest, own)
        return stats_submission(honest, attack, context, fields, noop)
    if own is not None and attack is None:
        return _concat(honest, own)
    if own is not None:
        context = replace(context, own_rows=own)
    return torch.cat([honest, byzantine_rows(honest, attack, context)])


def attack_then_aggregate(honest: Rows, attack, defense, state: AggregationState, generator: Optional[torch.Generator],
                          context: AttackContext, *, own: Optional[Rows] = None, merge: Merge = apply,
                          fields: str = "both", noop: str = "union") -> tuple[Any, AggregationState]:
    """(the channel's aggregate, the new state) for one channel at one step.

    honest: the h = context.n − context.f honest rows, [h, d] (gradients, updates) or a ClientStats of
    h rows (BN statistics); attack: the channel's attack or None (the no-op); defense: the channel's
    rule ([n, d] -> [d]; the mean when the channel is not defended); state: what a stateful rule
    remembers (AggregationState, returned unchanged for other rules); generator: the step's
    generator for random rules (None: the rule draws from its own seed); context: the attack's view
    of the step (its `defense` is replaced by the one the server uses); own: the f rows the Byzantine
    clients computed themselves (data poisoning: statistics submitted as they are, gradients handed to
    the attack as context.own_rows); merge(rows, aggregate): what the server computes from the n rows
    with the bound defense (default: the defense itself; byzbn.stats.robust_merge_stats for BN
    statistics); fields, noop: the statistics channel's (byzbn.attacks.attack_stats). Inputs are not
    mutated; only `generator` advances.
    """
    server, attacked = bind(defense, state, generator)
    rows = submission(honest, attack, replace(context, defense=attacked), own, fields, noop)
    if not is_stateful(server):
        return merge(rows, server), state
    remembered: list[torch.Tensor] = []

    clipped: list[float] = []

    def aggregate(x: torch.Tensor) -> torch.Tensor:
        rule = server.with_center(state.center(len(state.current) + len(remembered)))
        out = rule(x)
        remembered.append(out.detach().clone())
        fraction = getattr(rule, "last_clipped_fraction", None)
        if fraction is not None:
            clipped.append(float(fraction))
        return out

    result = merge(rows, aggregate)
    return result, replace(state, current=state.current + tuple(remembered), clipped=state.clipped + tuple(clipped))


def honest_aggregate(honest: Rows, defense, state: AggregationState, generator: Optional[torch.Generator],
                     context: AttackContext, *, merge: Merge = apply, fields: str = "both", noop: str = "union"):
    """What attack_then_aggregate would return without the Byzantine rows' attack: the same rule, bound the
    same way, on the honest rows and the no-op rows (their honest mean), detached.

    For the diagnostics' attack reach and honest-only statistics (byzbn.fl.diagnostics). Side-effect free:
    a random rule draws from a clone of `generator` (call it before the real aggregation to draw what the
    server drew), `state` is read and not advanced, and nothing is recorded for autograd.
    """
    clone = None
    if generator is not None:
        clone = torch.Generator(device=generator.device)
        clone.set_state(generator.get_state())
    with torch.no_grad():
        if isinstance(honest, bnstats.ClientStats):
            honest = bnstats.ClientStats(honest.mean.detach(), honest.var.detach(), honest.count)
        else:
            honest = honest.detach()
        result, _ = attack_then_aggregate(honest, None, defense, state, clone, context, merge=merge, fields=fields,
                                          noop=noop)
    return detached(result)


def detached(value):
    """An aggregate without autograd history: a tensor, a GlobalStats, or a tuple of them."""
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, bnstats.GlobalStats):
        return replace(value, mean=value.mean.detach(), var=value.var.detach(),
                       var_unbiased=value.var_unbiased.detach())
    if isinstance(value, tuple):
        return tuple(detached(v) for v in value)
    raise ValueError(f"an aggregate is a tensor, a GlobalStats or a tuple of them, got {type(value).__name__}")


__all__ = ["AggregationState", "attack_then_aggregate", "honest_aggregate", "detached", "submission",
           "stats_submission", "bind", "apply",
           "is_stateful", "is_randomized"]
