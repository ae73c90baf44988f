"""The runner's per-channel aggregation (byzbn.aggregation, byzbn.fl.aggregation): centered clipping starts from the previous
aggregate of the same channel and call, bucketing draws from the run's generator of each step, both
survive a resume, and attacks optimise against the defense the server will really use."""
from __future__ import annotations

import copy

import pytest
import torch

from byzbn.attacks import make_attack
from byzbn.defenses import make_defense
from byzbn.fl import Federation, make_scenario
from byzbn.aggregation import AggregationState, attack_then_aggregate, bind
from byzbn.attacks import AttackContext
from byzbn.fl import seeds
from byzbn.nn.models import make_cnn
from byzbn.schemes import make_scheme
from federation_data import client_data

N, F_BYZ = 6, 2
H = N - F_BYZ
SHAPE, BATCH = (1, 8, 8), 5


def _centered_clipping():
    # A fixed radius that clips at these scales (ByzFL's tau=100 clips nothing here, and then the centre cancels).
    return make_defense("centered-clipping", F_BYZ, tau=0.05)


def _aggregate(defense, state, rows, gen):
    context = AttackContext(N, 0, channel="grads")
    return attack_then_aggregate(rows, None, defense, state, gen, context)


def test_a_stateful_defense_remembers_each_call_of_the_step_before():
    defense = _centered_clipping()
    gen = torch.Generator().manual_seed(0)
    rows = [torch.randn(N, 7, generator=gen) for _ in range(4)]
    state = AggregationState()
    first = []
    for x in rows[:2]:                                       # two calls in one step (means, then variances)
        out, state = _aggregate(defense, state, x, gen)
        first.append(out)
    fresh = _centered_clipping()
    torch.testing.assert_close(first[0], fresh(rows[0]))    # the first step starts from zeros
    torch.testing.assert_close(first[1], fresh(rows[1]))
    assert bind(defense, AggregationState(), gen)[1](rows[0]).equal(fresh(rows[0]))
    state = state.next_step()
    second, state = _aggregate(defense, state, rows[2], gen)
    torch.testing.assert_close(second, fresh.with_center(first[0])(rows[2]))  # call 0 from call 0
    third, state = _aggregate(defense, state, rows[3], gen)
    torch.testing.assert_close(third, fresh.with_center(first[1])(rows[3]))   # call 1 from call 1
    attacked = bind(defense, state, gen)[1]
    torch.testing.assert_close(attacked(rows[2]), second)   # the attack sees the centre the server uses ...
    attacked(rows[0])                                        # ... and its trial calls are not remembered
    assert torch.equal(state.next_step().previous[0], second)
    assert not torch.equal(fresh.with_center(first[0])(rows[2]), fresh(rows[2]))  # the centre matters here


def test_the_state_of_a_shorter_step_keeps_the_later_calls_of_the_step_before():
    state = AggregationState((torch.zeros(2), torch.ones(2)), (torch.full((2,), 5.0),))
    assert [t.tolist() for t in state.next_step().previous] == [[5.0, 5.0], [1.0, 1.0]]
    assert AggregationState.from_state_dict(state.state_dict()) == AggregationState(state.next_step().previous)


def test_a_plain_defense_passes_through():
    defense = make_defense("median", F_BYZ, pre="nnm")
    server, attacked = bind(defense, AggregationState(), torch.Generator())
    assert server is defense and attacked is defense
    state = AggregationState()
    assert _aggregate(defense, state, torch.randn(N, 3), torch.Generator())[1] is state


def _federation(defense, target="both", seed=3):
    x, y, parts = client_data(H, SHAPE, 20)
    scheme = make_scheme("fbn", 6)
    torch.manual_seed(0)
    model = make_cnn(SHAPE, 10, 0.25, norm=scheme.make_norm, dropout=0.0)
    scenario = make_scenario("attack+defense", N, F_BYZ, make_attack("alie"), defense, target=target)
    return Federation(model, scheme, scenario, x, y, parts, batch_size=BATCH, lr=0.05, seed=seed)


def test_centered_clipping_in_a_run_starts_from_the_previous_aggregate_of_each_channel():
    fed = _federation(_centered_clipping())
    fed.step()
    after_one = {channel: [t.clone() for t in a.next_step().previous] for channel, a in fed.aggregates.items()}
    assert len(after_one["grads"]) == 1 and len(after_one["stats"]) == 2   # FBN: means, then variances
    fed.step()
    assert all(not torch.equal(a, b) for a, b in zip(after_one["stats"], fed.aggregates["stats"].next_step().previous))
    # A run whose defense forgets its centre every step ends elsewhere.
    forgetful = _federation(_centered_clipping())
    for _ in range(2):
        forgetful.step()
        forgetful.aggregates = {channel: AggregationState() for channel in forgetful.aggregates}
    assert any(not torch.equal(p, q) for p, q in zip(fed.params, forgetful.params))


@pytest.mark.parametrize("defense", [("centered-clipping", None), ("mean", [("bucketing", {"s": 2})])])
def test_stateful_and_random_defenses_resume_bit_for_bit(defense):
    name, pre = defense

    def build():
        return _federation(make_defense(name, F_BYZ, pre=pre))

    straight = build()
    for _ in range(4):
        straight.step()
    first = build()
    for _ in range(2):
        first.step()
    resumed = build()
    resumed.load_state_dict(copy.deepcopy(first.state_dict()))
    for _ in range(2):
        resumed.step()
    for a, b in zip(straight.params, resumed.params):
        assert torch.equal(a, b)


def test_bucketing_draws_fresh_buckets_every_step_from_the_runs_seed():
    def params_after(seed, steps=2):
        fed = _federation(make_defense("mean", F_BYZ, pre=[("bucketing", {"s": 2})]), seed=seed)
        for _ in range(steps):
            fed.step()
        return [p.clone() for p in fed.params]

    a, b = params_after(3), params_after(3)
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    fed = _federation(make_defense("mean", F_BYZ, pre=[("bucketing", {"s": 2})]))
    x = torch.arange(N * 3, dtype=torch.float32).view(N, 3)
    defense = fed.scenario.channel_aggregator("grads")
    buckets = [bind(defense, AggregationState(), seeds.generator(3, t, seeds.AGGREGATION_STREAMS["grads"]))[0]
               .pre_aggregators[0](x) for t in range(4)]
    assert any(not torch.equal(buckets[0], other) for other in buckets[1:])


def test_centered_clipping_reports_the_fraction_of_rows_each_call_clipped():
    from byzbn.defenses.iterative_rules import clipped_fraction

    gen = torch.Generator().manual_seed(1)
    x = torch.randn(N, 7, generator=gen)
    x[0] *= 100.0                                            # one row far from the others
    for defense in (_centered_clipping(), make_defense("centered-clipping", F_BYZ, pre="nnm", tau=0.05)):
        _, state = _aggregate(defense, AggregationState(), x, gen)
        rows = defense.pre_aggregators[0](x) if defense.pre_aggregators else x
        assert state.clipped == (float(clipped_fraction(rows, None, 1, 0.05)),)
        assert state.next_step().clipped == ()              # a new step starts with no calls
    wide = make_defense("centered-clipping", F_BYZ, tau=1e6)  # a radius nothing reaches: nothing clipped
    assert _aggregate(wide, AggregationState(), x, gen)[1].clipped == (0.0,)
    assert _aggregate(make_defense("median", F_BYZ), AggregationState(), x, gen)[1].clipped == ()


def test_a_run_averages_the_clipped_fractions_of_every_call_and_keeps_them_in_its_checkpoint():
    fed = _federation(_centered_clipping())
    fed.step()
    per_call = fed.aggregates["grads"].clipped + fed.aggregates["stats"].clipped
    assert len(per_call) == 3                               # gradients once, FBN's statistics twice
    assert fed.clipped_fraction == pytest.approx(sum(per_call) / 3)
    fed.step()
    assert 0.0 < fed.clipped_fraction <= 1.0
    resumed = _federation(_centered_clipping())
    resumed.load_state_dict(copy.deepcopy(fed.state_dict()))
    assert resumed.clipped_fraction == pytest.approx(fed.clipped_fraction)
    fed.step()
    resumed.step()
    assert resumed.clipped_fraction == pytest.approx(fed.clipped_fraction)
    median = _federation(make_defense("median", F_BYZ))
    median.step()
    assert median.clipped_fraction is None
