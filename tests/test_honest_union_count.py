"""The robust merge's N counts the honest clients' union (byzbn.stats.robust_merge_stats, DESIGN.md §3): the
server knows n, its rule's bound f and each row's claimed count, never who is Byzantine, so
N = (n − f)·median(count) — h = 3, f = 2, m = 4 gives 12 (the honest union), not n·m = 20."""
from __future__ import annotations

import pytest
import torch

from byzbn import stats as bnstats
from byzbn.aggregation import AggregationState
from byzbn.attacks import AttackContext, make_attack
from byzbn.defenses import make_defense
from byzbn.fl.aggregation import stats_channel
from byzbn.fl.scenario import make_scenario
from byzbn.schemes import StatsChannel

H, F_BYZ, M = 3, 2, 4


def _honest(seed: int = 0) -> bnstats.ClientStats:
    gen = torch.Generator().manual_seed(seed)
    return bnstats.ClientStats(torch.randn(H, 5, generator=gen, dtype=torch.float64),
                               torch.rand(H, 5, generator=gen, dtype=torch.float64) + 0.5,
                               torch.full((H,), M, dtype=torch.int64))


def test_n_counts_the_clients_the_caller_names_with_the_median_count():
    rows = bnstats.ClientStats(torch.zeros(5, 2), torch.ones(5, 2), torch.tensor([4, 4, 4, 1000, 1]))
    mean = make_defense("mean", F_BYZ)
    assert int(bnstats.robust_merge_stats(rows, mean).count) == 5 * M
    assert int(bnstats.robust_merge_stats(rows, mean, clients=H).count) == H * M == 12
    with pytest.raises(ValueError, match="clients must be an int in"):
        bnstats.robust_merge_stats(rows, mean, clients=6)


def test_the_no_op_submission_merges_to_the_exact_honest_union_unbiased_variance_included():
    mean = make_defense("mean", F_BYZ)
    channel = StatsChannel(None, "both", mean, AttackContext(H + F_BYZ, F_BYZ, channel="stats"))
    merged, exact = channel.aggregate(_honest()), bnstats.merge_stats(_honest())
    assert int(merged.count) == int(exact.count) == 12
    torch.testing.assert_close(merged.mean, exact.mean)
    torch.testing.assert_close(merged.var_unbiased, exact.var_unbiased)


def test_an_attack_lying_about_counts_cannot_move_n():
    median = make_defense("median", F_BYZ)
    channel = StatsChannel(make_attack("alie"), "both", median, AttackContext(H + F_BYZ, F_BYZ, channel="stats"))
    honest = _honest()
    rows = bnstats.ClientStats(torch.cat([honest.mean, honest.mean[:F_BYZ] + 9]),
                               torch.cat([honest.var, honest.var[:F_BYZ]]), torch.tensor([M, M, M, 10 ** 9, 10 ** 9]))
    assert int(bnstats.robust_merge_stats(rows, median, clients=H).count) == 12
    assert int(channel.aggregate(honest).count) == 12


def test_a_server_that_takes_the_rows_as_they_come_still_counts_n_minus_f():
    scenario = make_scenario("attack+defense", H + F_BYZ, F_BYZ, make_attack("sign-flip"),
                             make_defense("median", F_BYZ))
    as_submitted = AttackContext(H + F_BYZ, 0, channel="stats")   # the Flower server in the self mode
    channel = stats_channel(scenario, AggregationState(), as_submitted, seed=0)
    assert channel.attack is None and channel.honest == H
