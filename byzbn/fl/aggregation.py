"""A run's two channels at one step: the scenario's attack and rule, the run's generator, the carried state.

Every engine — DSGD, FedAvg (byzbn.fl) and the Flower strategy (byzbn.flower) — aggregates through
these two functions, which call byzbn.aggregation.attack_then_aggregate, so that a stateful rule
(centered clipping) and a random one (bucketing) behave the same in all of them:

- `aggregate_updates`: the gradient channel (DSGD's momentums, FedAvg's and Flower's updates Δθ_i);
- `stats_channel`: the statistics channel handed to the scheme (byzbn.schemes.StatsChannel), whose
  merges advance the state.

A random rule draws from the generator (run seed, step, channel) of byzbn.fl.seeds.AGGREGATION_STREAMS;
the state (AggregationState) is the caller's: it starts each step from `state.next_step()` and keeps
what the functions return (a checkpoint holds it). An AttackContext with f = 0 means the rows are all
as the clients submitted them (a server that cannot tell the Byzantine clients apart): nothing is forged.
"""
from __future__ import annotations

from typing import Optional

import torch

from byzbn.aggregation import AggregationState, attack_then_aggregate, honest_aggregate
from byzbn.attacks import AttackContext
from byzbn.fl import seeds
from byzbn.fl.scenario import Scenario
from byzbn.schemes import StatsChannel

CHANNELS = ("stats", "grads")


def channel_generator(seed: int, step: int, channel: str) -> torch.Generator:
    """The generator a random rule of `channel` draws from at `step` (one per step, shared by its calls)."""
    return seeds.generator(seed, step, seeds.AGGREGATION_STREAMS[channel])


def aggregate_updates(scenario: Scenario, state: AggregationState, honest: torch.Tensor, context: AttackContext,
                      *, seed: int, own: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, AggregationState]:
    """(the server's update [d], the new state) from the h honest rows [h, d] of the gradient channel.

    When the scenario leaves the channel alone the Byzantine clients send the no-op honest mean, which
    leaves the mean of the honest rows: that mean, without forging rows. own: the Byzantine clients'
    own rows [f, d] under a data-poisoning attack.
    """
    if not scenario.attacks("grads"):
        return honest.mean(dim=0), state
    attack = scenario.channel_attack("grads") if context.f else None
    return attack_then_aggregate(honest, attack, scenario.channel_aggregator("grads"), state,
                                 channel_generator(seed, context.step, "grads"), context, own=own)


def honest_update(scenario: Scenario, state: AggregationState, honest: torch.Tensor, context: AttackContext, *,
                  seed: int) -> torch.Tensor:
    """The update aggregate_updates would return without the Byzantine rows' attack (the diagnostics' reference):
    the same rule on the honest and no-op rows, drawing what the server draws, advancing nothing."""
    if not scenario.attacks("grads"):
        return honest.detach().mean(dim=0)
    return honest_aggregate(honest, scenario.channel_aggregator("grads"), state,
                            channel_generator(seed, context.step, "grads"), context)


def stats_channel(scenario: Scenario, state: AggregationState, context: AttackContext, *, seed: int) -> StatsChannel:
    """The statistics channel of the step context.step, starting from `state` (read channel.state afterwards)."""
    attack = scenario.channel_attack("stats") if context.f else None
    return StatsChannel(attack, scenario.fields, scenario.channel_aggregator("stats"), context, state,
                        channel_generator(seed, context.step, "stats"), honest=scenario.n - scenario.f)


__all__ = ["CHANNELS", "channel_generator", "aggregate_updates", "honest_update", "stats_channel"]
