"""A Flower server that trusts nobody (byzbn.flower.replies): every reply is checked against the round's contract
before anything is aggregated. A forged reply of any kind leaves the run going, is logged once per round and
counted in the summary, and its client counts as a silent one; with one hostile client out of five, the
running statistics and the update stay where NNM∘median keeps them: within the honest clients' range.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

pytest.importorskip("flwr", reason='byzbn.flower needs the flower extra: pip install -c constraints.txt ".[flower]"')

from flwr.app import Array, ArrayRecord, Error, Message, Metadata, MetricRecord, RecordDict  # noqa: E402

from byzbn.fl.client import flat_parameters  # noqa: E402
from byzbn.flower import records, replies  # noqa: E402
from byzbn.flower import strategy as strategy_module  # noqa: E402
from byzbn.flower.experiment import experiment_from_run_config  # noqa: E402
from byzbn.flower.strategy import FlowerRun, RobustBNStrategy  # noqa: E402
from byzbn.nn import BNStats  # noqa: E402
from byzbn.stats import ClientStats  # noqa: E402

N, E, HOSTILE = 5, 2, 4


@pytest.fixture(scope="module")
def experiment(tiny_npz):
    return experiment_from_run_config({"dataset": f"npz:{tiny_npz}", "clients": N, "byzantine": 1, "width": 0.25,
                                       "batch-size": 8, "local-steps": E, "rounds": 2, "schemes": "fbn",
                                       "byzantine-mode": "self", "attack": "sign-flip", "target": "both",
                                       "defense": "median", "pre": "nnm", "quiet": True})


def _strategy(experiment) -> RobustBNStrategy:
    plan = experiment.plan
    strategy = RobustBNStrategy(FlowerRun(plan.config, "fbn", "attack+defense", plan.dataset, plan.client_indices,
                                          plan.attack, plan.defense, nodes={c: 100 + c for c in range(N)},
                                          byzantine_mode="self"))
    strategy.round_clients = list(range(N))
    return strategy


def _honest(strategy: RobustBNStrategy, c: int) -> tuple[torch.Tensor, list[BNStats]]:
    """Client c's honest rows: an update near 0.01 and statistics near 3 (the same in each local step)."""
    gen = torch.Generator().manual_seed(c)
    d = sum(p.numel() for p in strategy.model.parameters())
    update = 0.01 + 0.001 * torch.randn(d, generator=gen)
    rows = [ClientStats(3 + 0.1 * torch.randn(1, w, generator=gen), 1 + 0.1 * torch.rand(1, w, generator=gen),
                        torch.tensor([count])) for (_, w), count in zip(strategy.layer_widths, strategy.counts)]
    return update, [BNStats(rows)] * E


def _content(strategy: RobustBNStrategy, c: int, update=None, stats=None, metrics=None) -> RecordDict:
    honest_update, honest_stats = _honest(strategy, c)
    names = [name for name, _ in strategy.layer_widths]
    update = honest_update if update is None else update
    return RecordDict({
        records.UPDATE: update if isinstance(update, ArrayRecord) else records.flat_record(update, strategy.model),
        records.STATS: records.stats_record(honest_stats, names) if stats is None else stats,
        records.METRICS: MetricRecord({"client": c, "train-loss": [1.0] * E}) if metrics is None else metrics,
    })


def _forged_stats(strategy: RobustBNStrategy, change) -> ArrayRecord:
    """Client HOSTILE's honest statistics record with change(key, array) applied to every entry."""
    record = _content(strategy, HOSTILE)[records.STATS]
    return ArrayRecord({key: Array(change(key, np.array(record[key].numpy()))) for key in record.keys()})


def _widen(key, a):
    return np.concatenate([a, a[:, :1]], axis=1) if not key.endswith("count") else a


def _count(value):
    return lambda key, a: (np.full_like(a, value) if key.endswith("count") else a)


def _wrong_shape(strategy) -> ArrayRecord:
    record = records.flat_record(_honest(strategy, HOSTILE)[0], strategy.model)
    first = next(iter(record.keys()))
    return ArrayRecord({**record, first: Array(np.zeros((7,), dtype=np.float32))})


def _without_metrics(strategy):
    content = _content(strategy, HOSTILE)
    return RecordDict({k: v for k, v in content.items() if k != records.METRICS})


def _without_stats(strategy):
    content = _content(strategy, HOSTILE)
    return RecordDict({k: v for k, v in content.items() if k != records.STATS})


FORGED = {
    "six rows of mean 50": lambda s: _content(s, HOSTILE, stats=_forged_stats(
        s, lambda key, a: np.repeat(a if key.endswith("count") else np.full_like(a, 50.0), 6, axis=0))),
    "no statistics record": _without_stats,
    "wrong update shape": lambda s: _content(s, HOSTILE, update=_wrong_shape(s)),
    "wrong channel count": lambda s: _content(s, HOSTILE, stats=_forged_stats(s, _widen)),
    "count 2^62": lambda s: _content(s, HOSTILE, stats=_forged_stats(s, _count(2 ** 62))),
    "negative count": lambda s: _content(s, HOSTILE, stats=_forged_stats(s, _count(-5))),
    "NaN count": lambda s: _content(s, HOSTILE, stats=_forged_stats(
        s, lambda key, a: np.full(a.shape, np.nan) if key.endswith("count") else a)),
    "no metrics": _without_metrics,
    "too long loss list": lambda s: _content(s, HOSTILE, metrics=MetricRecord({"client": HOSTILE,
                                                                               "train-loss": [1.0] * (E + 3)})),
    "another client's index": lambda s: _content(s, HOSTILE, metrics=MetricRecord({"client": 2,
                                                                                   "train-loss": [1.0] * E})),
    "an extra statistics entry": lambda s: _content(s, HOSTILE, stats=ArrayRecord(
        {**_forged_stats(s, lambda key, a: a), "step9/x/mean": Array(np.zeros((1, 3), dtype=np.float32))})),
}


def _round(strategy: RobustBNStrategy, hostile: RecordDict):
    contents = {c: _content(strategy, c) for c in range(N - 1)}
    contents[HOSTILE] = hostile
    return contents


def _assert_bounded(strategy: RobustBNStrategy, before: list, theta0: torch.Tensor) -> None:
    """Running means moved toward a merged mean inside the honest range; the update inside the honest range."""
    honest = [_honest(strategy, c) for c in range(N - 1)]
    for k, (layer, (mean0, _)) in enumerate(zip(strategy.layers, before)):
        momentum = 1 - (1 - layer.momentum) ** E
        merged = (layer.running_mean - (1 - momentum) * mean0) / momentum
        means = torch.cat([stats[0].clients[k].mean for _, stats in honest])
        assert bool((merged >= means.min(0).values - 1e-4).all() and (merged <= means.max(0).values + 1e-4).all())
    updates = torch.stack([u for u, _ in honest])
    step = flat_parameters(strategy.model) - theta0
    assert bool((step >= updates.min(0).values - 1e-6).all() and (step <= updates.max(0).values + 1e-6).all())


@pytest.mark.parametrize("kind", list(FORGED))
def test_a_forged_reply_is_a_silent_client_and_the_aggregate_stays_bounded(kind, experiment, monkeypatch):
    strategy = _strategy(experiment)
    logged = []
    monkeypatch.setattr(strategy_module, "log", lambda level, msg, *args: logged.append(msg % args))
    before = [(layer.running_mean.clone(), layer.running_var.clone()) for layer in strategy.layers]
    theta0 = flat_parameters(strategy.model)
    loss = strategy.apply_round(0, _round(strategy, FORGED[kind](strategy)))
    assert loss == 1.0 and strategy.problem is None and strategy.rejected_replies == 1
    assert len(logged) == 1 and f"client {HOSTILE}" in logged[0]
    _assert_bounded(strategy, before, theta0)
    strategy.apply_round(1, _round(strategy, FORGED[kind](strategy)))   # the run goes on
    assert strategy.rejected_replies == 2 and len(logged) == 2


def test_a_well_formed_hostile_row_is_aggregated_and_bounded_by_the_rule(experiment):
    strategy = _strategy(experiment)
    before = [(layer.running_mean.clone(), layer.running_var.clone()) for layer in strategy.layers]
    theta0 = flat_parameters(strategy.model)
    hostile = _content(strategy, HOSTILE, update=torch.full((theta0.numel(),), 100.0),
                       stats=_forged_stats(strategy, lambda k, a: a if k.endswith("count") else np.full_like(a, 50.0)))
    strategy.apply_round(0, _round(strategy, hostile))
    assert strategy.rejected_replies == 0
    _assert_bounded(strategy, before, theta0)


def test_the_contract_checks_each_field(experiment):
    strategy = _strategy(experiment)
    contract = strategy.contract(0)
    assert contract.recorded == tuple(range(E)) and len(contract.layers) == len(strategy.layers)
    reasons = {}
    for kind, forge in FORGED.items():
        with pytest.raises(replies.RejectedReply) as caught:
            replies.check_reply(forge(strategy), contract, strategy.model, HOSTILE)
        reasons[kind] = str(caught.value)
    assert "expected one floating row" in reasons["six rows of mean 50"]
    assert reasons["no statistics record"] == "no statistics record"
    assert "shape" in reasons["wrong update shape"]
    assert "outside [1," in reasons["count 2^62"] and "outside [1," in reasons["negative count"]
    assert "expected one integer" in reasons["NaN count"]
    assert "claims client index 2" in reasons["another client's index"]
    assert f"{E} losses" in reasons["too long loss list"]
    silent = replies.silent_reply(contract, strategy.model)
    assert silent.silent and not silent.update.any() and all(math.isnan(v) for v in silent.losses)
    for layer, row in zip(strategy.layers, silent.stats[0]):
        assert torch.equal(row.mean[0], layer.running_mean) and int(row.count[0]) > 0


def _reply(content, node: int, error: bool = False) -> Message:
    metadata = Metadata(run_id=1, message_id=f"m{node}", src_node_id=node, dst_node_id=0, reply_to_message_id="",
                        group_id="", created_at=0.0, ttl=3600.0, message_type="train")
    if error:
        return Message(error=Error(code=1, reason="client crashed"), metadata=metadata)
    return Message(content, metadata=metadata)


def test_aggregate_train_maps_replies_by_sender_node_and_never_raises(experiment, monkeypatch):
    strategy = _strategy(experiment)
    logged = []
    monkeypatch.setattr(strategy_module, "log", lambda level, msg, *args: logged.append(msg % args))
    contents = {c: _content(strategy, c) for c in range(N)}
    # Node 104 speaks for client 2; a node outside the round; client 1's node errs; client 3's node replies twice.
    messages = [_reply(contents[0], 100), _reply(contents[2], 102), _reply(_content(strategy, 2), 104),
                _reply(contents[0], 999), _reply(None, 101, error=True), _reply(contents[3], 103),
                _reply(contents[3], 103)]
    arrays, metrics = strategy.aggregate_train(1, messages)
    assert arrays is not None and metrics["train-loss"] == 1.0
    assert strategy.rejected_replies == 4   # client 4 (claims 2), node 999, client 1 (error), client 3 (twice)
    assert len(logged) == 1 and "node 999" in logged[0] and "client crashed" in logged[0]
    assert torch.isfinite(flat_parameters(strategy.model)).all()
    strategy.evaluate(0, arrays)
    assert strategy.summary_entry(1.0)["rejected_replies"] == 4


def test_a_missing_reply_is_a_silent_client_not_a_skipped_step(experiment):
    strategy = _strategy(experiment)
    before = [layer.running_mean.clone() for layer in strategy.layers]
    contents = {c: _content(strategy, c) for c in range(N - 1)}   # client 4 never replies
    strategy.apply_round(0, contents)
    assert strategy.rejected_replies == 1
    assert all(not torch.equal(layer.running_mean, m) for layer, m in zip(strategy.layers, before))
