"""One attack-then-aggregate path (byzbn.aggregation): in-process FedAvg and the Flower strategy aggregate the
same rows to the same bits, round after round, for every registered rule and pre-aggregator — stateful
(centered clipping) and randomized (bucketing) ones included — and the state a stateful rule carries is
the run's (checkpointed), not re-centred every round.

Both engines are driven through their server side with fixed rows (no training): FedAvgFederation.apply_round
and RobustBNStrategy.apply_round (one test through aggregate_train with real Flower messages).
"""
from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("flwr", reason='byzbn.flower needs the flower extra: pip install -c constraints.txt ".[flower]"')

from flwr.app import Message, Metadata, MetricRecord, RecordDict  # noqa: E402

from byzbn.defenses import AGGREGATORS, PRE_AGGREGATORS  # noqa: E402
from byzbn.fl import FedAvgFederation  # noqa: E402
from byzbn.fl.client import flat_parameters  # noqa: E402
from byzbn.fl.passes import concat_rows  # noqa: E402
from byzbn.flower import records  # noqa: E402
from byzbn.flower.experiment import experiment_from_run_config  # noqa: E402
from byzbn.flower.strategy import FlowerRun, RobustBNStrategy  # noqa: E402
from byzbn.nn import BNStats  # noqa: E402
from byzbn.runs.errors import ArgumentError  # noqa: E402
from byzbn.stats import ClientStats  # noqa: E402

N, E, ROUNDS = 7, 2, 3
# Parameters that make a rule's state or randomness matter at these scales (the defaults clip nothing).
PARAMS = {"centered-clipping": "tau=0.05"}
RULES = [(name, "") for name in sorted(AGGREGATORS)] + [("mean", name) for name in sorted(PRE_AGGREGATORS)]


def _experiment(npz, rule: str, pre: str):
    """The Flower experiment for `pre`∘`rule` at n = 7 with the largest f in (2, 1) the rule accepts."""
    for f in (2, 1):
        config = {"dataset": f"npz:{npz}", "clients": N, "byzantine": f, "width": 0.25, "batch-size": 4,
                  "local-steps": E, "rounds": ROUNDS, "schemes": "fbn", "defense": rule, "pre": pre,
                  "attack": "alie", "target": "both", "quiet": True}
        if rule in PARAMS:
            config["defense-param"] = PARAMS[rule]
        try:
            return experiment_from_run_config(config)
        except ArgumentError:
            if f == 1:
                raise
    raise AssertionError("unreachable")


def _engines(npz, rule: str, pre: str) -> tuple[RobustBNStrategy, FedAvgFederation]:
    plan = _experiment(npz, rule, pre).plan
    strategy = RobustBNStrategy(FlowerRun(plan.config, "fbn", "attack+defense", plan.dataset, plan.client_indices,
                                          plan.attack, plan.defense, nodes={c: 100 + c for c in range(N)}))
    data, c = plan.dataset, plan.config
    fed = FedAvgFederation(copy.deepcopy(strategy.model), strategy.scheme, strategy.scenario, data.x_train,
                           data.y_train, plan.client_indices, batch_size=c.batch_size, lr=c.lr, seed=c.seed,
                           local_steps=E)
    return strategy, fed


def _round_rows(strategy: RobustBNStrategy, r: int) -> tuple[torch.Tensor, list[list[BNStats]]]:
    """Fixed honest rows of round r: updates [h, d] and, per client, each local step's one-row statistics."""
    gen = torch.Generator().manual_seed(1000 + r)
    d = sum(p.numel() for p in strategy.model.parameters())
    deltas = 0.05 * torch.randn(strategy.h, d, generator=gen) + 0.02 * r
    widths = [w for _, w in strategy.layer_widths]
    stats = [[BNStats([ClientStats(torch.randn(1, w, generator=gen) + r, torch.rand(1, w, generator=gen) + 0.1,
                                   torch.tensor([count])) for w, count in zip(widths, strategy.counts)])
              for _ in range(E)] for _ in range(strategy.h)]
    return deltas, stats


def _contents(strategy: RobustBNStrategy, deltas, stats) -> dict:
    names = [name for name, _ in strategy.layer_widths]
    return {c: RecordDict({records.UPDATE: records.flat_record(deltas[c], strategy.model),
                           records.STATS: records.stats_record(stats[c], names),
                           records.METRICS: MetricRecord({"client": c, "train-loss": [1.0] * E})})
            for c in range(strategy.h)}


def _fedavg_round(fed: FedAvgFederation, r: int, deltas, stats) -> None:
    """In-process FedAvg's server side of round r on the same rows."""
    fed.start_step()
    batches = fed.client_batch(r * E)
    channel = fed.stats_channel(r, batches)
    recorded = [BNStats([concat_rows([stats[c][e].clients[k] for c in range(fed.h)]) for k in range(len(fed.layers))])
                for e in range(E)]
    fed.apply_round(r, flat_parameters(fed.model), deltas, recorded, batches, channel)


def _assert_same_server(strategy: RobustBNStrategy, fed: FedAvgFederation) -> None:
    assert torch.equal(flat_parameters(strategy.model), flat_parameters(fed.model))
    for a, b in zip(strategy.layers, fed.layers):
        assert torch.equal(a.running_mean, b.running_mean) and torch.equal(a.running_var, b.running_var)
    assert strategy.stats_clamped == fed.stats_clamped


def _reply(content: RecordDict, node: int) -> Message:
    metadata = Metadata(run_id=1, message_id=f"reply-{node}", src_node_id=node, dst_node_id=0, reply_to_message_id="",
                        group_id="", created_at=0.0, ttl=3600.0, message_type="train")
    return Message(content, metadata=metadata)


@pytest.mark.parametrize("rule,pre", RULES, ids=[f"{p}+{r}" if p else r for r, p in RULES])
def test_fedavg_and_flower_aggregate_the_same_rows_to_the_same_bits_for_three_rounds(rule, pre, tiny_npz):
    strategy, fed = _engines(tiny_npz, rule, pre)
    strategy.round_clients = list(range(N))
    for r in range(ROUNDS):
        deltas, stats = _round_rows(strategy, r)
        strategy.apply_round(r, _contents(strategy, deltas, stats))
        _fedavg_round(fed, r, deltas, stats)
        _assert_same_server(strategy, fed)
        assert strategy.rejected_replies == 0
    for channel in ("stats", "grads"):
        mine, theirs = strategy.aggregates[channel].state_dict(), fed.state_dict()["aggregates"][channel]
        assert len(mine) == len(theirs) and all(torch.equal(a, b) for a, b in zip(mine, theirs))


@pytest.mark.parametrize("rule,pre", [("centered-clipping", ""), ("mean", "bucketing")])
def test_aggregate_train_with_flower_messages_carries_state_and_draws_per_round(rule, pre, tiny_npz):
    strategy, fed = _engines(tiny_npz, rule, pre)
    strategy.round_clients = list(range(N))
    updates = []
    for r in range(ROUNDS):
        deltas, stats = _round_rows(strategy, r)
        before = flat_parameters(strategy.model)
        messages = [_reply(content, 100 + c) for c, content in _contents(strategy, deltas, stats).items()]
        arrays, metrics = strategy.aggregate_train(r + 1, messages)
        assert metrics["train-loss"] == 1.0
        assert sorted(arrays.keys()) == sorted(name for name, _ in strategy.model.named_parameters())
        updates.append(flat_parameters(strategy.model) - before)
        _fedavg_round(fed, r, deltas, stats)
        _assert_same_server(strategy, fed)
    # The same rows in a fresh strategy: round 0's aggregate, not the carried one's.
    fresh, _ = _engines(tiny_npz, rule, pre)
    fresh.round_clients = list(range(N))
    deltas, stats = _round_rows(fresh, ROUNDS - 1)
    before = flat_parameters(fresh.model)
    fresh.apply_round(ROUNDS - 1, _contents(fresh, deltas, stats))
    if rule == "centered-clipping":   # restarted from zeros, it clips elsewhere
        assert not torch.allclose(flat_parameters(fresh.model) - before, updates[-1])
        assert len(strategy.aggregates["grads"].next_step().previous) == 1
        assert len(strategy.aggregates["stats"].next_step().previous) == 2   # FBN: means, then variances


def test_the_flower_strategy_resumes_centered_clipping_from_the_carried_centre(tiny_npz):
    strategy, _ = _engines(tiny_npz, "centered-clipping", "")
    strategy.round_clients = list(range(N))
    deltas, stats = _round_rows(strategy, 0)
    moves = []
    for r in range(ROUNDS):   # the same rows every round: the centre moves on, as in-process
        before = flat_parameters(strategy.model)
        strategy.apply_round(r, _contents(strategy, deltas, stats))
        moves.append(float((flat_parameters(strategy.model) - before).norm()))
    assert moves[0] < moves[1] < moves[2]
