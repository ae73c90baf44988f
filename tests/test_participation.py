"""byzbn.fl.participation: the per-step client sample of partial participation."""
from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from byzbn.defenses import PRE_AGGREGATORS, PreAggregator, make_defense, register_pre_aggregator
from byzbn.fl.participation import (DEFENSE_F, Participants, check_defense_f, check_participation, defense_f,
                                    defense_for, largest_fitting_f, sample_participants, sample_size, step_defense)


def test_the_sample_is_reproducible_per_step_and_fresh_across_steps():
    draws = [sample_participants(7, t, n=20, f=5, participation=0.5) for t in range(30)]
    assert draws == [sample_participants(7, t, n=20, f=5, participation=0.5) for t in range(30)]
    assert len({d.clients for d in draws}) > 20  # steps differ (C(20, 10) samples to draw from)
    assert draws != [sample_participants(8, t, n=20, f=5, participation=0.5) for t in range(30)]


def test_the_sample_depends_only_on_seed_and_step_not_on_order_of_calls():
    later = sample_participants(3, 11, n=12, f=3, participation=0.25)
    for t in range(11):
        sample_participants(3, t, n=12, f=3, participation=0.25)
    assert sample_participants(3, 11, n=12, f=3, participation=0.25) == later


def test_the_global_torch_rng_is_left_alone():
    torch.manual_seed(123)
    want = torch.rand(3)
    torch.manual_seed(123)
    sample_participants(0, 5, n=10, f=3, participation=0.3)
    assert torch.equal(torch.rand(3), want)


@pytest.mark.parametrize("n,f,p", [(10, 3, 0.5), (20, 4, 0.3), (7, 2, 0.9), (10, 0, 0.4)])
def test_each_sample_has_k_distinct_clients_honest_first_with_the_last_f_byzantine(n, f, p):
    k = sample_size(n, p)
    for t in range(40):
        part = sample_participants(1, t, n, f, p)
        assert part.n == k and len(set(part.clients)) == k
        assert all(0 <= c < n - f for c in part.honest) and all(n - f <= c < n for c in part.byzantine)
        assert list(part.honest) == sorted(part.honest) and list(part.byzantine) == sorted(part.byzantine)
        assert part.h >= 1
        assert torch.equal(part.index(), torch.tensor(part.honest + part.byzantine))


def test_the_sampled_byzantine_count_varies_and_matches_the_hypergeometric_law():
    n, f, p, steps = 10, 3, 0.5, 4000
    counts = Counter(sample_participants(0, t, n, f, p).f for t in range(steps))
    assert set(counts) == {0, 1, 2, 3}  # from max(0, k − h) = 0 to min(k, f) = 3
    for j in range(4):  # P(j Byzantine among k = 5 of 10 with 3 Byzantine) = C(3, j) C(7, 5 − j) / C(10, 5)
        want = math.comb(3, j) * math.comb(7, 5 - j) / math.comb(10, 5)
        # 5 standard deviations of a binomial count: a wrong law (say, a fixed share) is far outside.
        assert abs(counts[j] / steps - want) <= 5 * math.sqrt(want * (1 - want) / steps), (j, counts)


def test_every_client_is_sampled_as_often_as_the_conditioned_uniform_sample_says():
    n, f, p, steps = 8, 2, 0.25, 4000  # k = 2
    seen = Counter(c for t in range(steps) for c in sample_participants(2, t, n, f, p).clients)
    # Uniform pairs conditioned on an honest member: 27 of the 28 pairs; an honest client is in 7 of
    # them, a Byzantine one in 6 (its pair with the other Byzantine client is redrawn).
    for c in range(n):
        want = (7 if c < n - f else 6) / 27
        assert abs(seen[c] / steps - want) <= 5 * math.sqrt(want * (1 - want) / steps), (c, seen)


def test_a_sample_always_holds_an_honest_client():
    # k = 1 of n = 4 with f = 3: without the redraw, three steps in four would have no honest client.
    parts = [sample_participants(0, t, n=4, f=3, participation=0.25) for t in range(200)]
    assert all(part.clients == (0,) for part in parts)


def test_full_participation_is_every_client_without_a_draw():
    part = sample_participants(0, 3, n=6, f=2, participation=1.0)
    assert part == Participants((0, 1, 2, 3), (4, 5)) and part.n == 6 and part.h == 4 and part.f == 2


@pytest.mark.parametrize("n,p,k", [(10, 0.5, 5), (10, 0.25, 2), (10, 0.39, 3), (10, 0.01, 1), (3, 1.0, 3),
                                   (7, 0.9, 6), (1, 0.5, 1)])
def test_sample_size_floors_the_fraction_like_flower_and_keeps_one_client(n, p, k):
    assert sample_size(n, p) == k


def test_defense_f_is_the_runs_or_the_sampled_count():
    part = Participants((0, 2, 3), (5,))
    assert defense_f(part, 3, "run") == 3
    assert defense_f(part, 3, "sampled") == 1
    assert DEFENSE_F == ("run", "sampled")


@pytest.mark.parametrize("value", [0, 0.0, -0.5, 1.5, math.nan, math.inf, True, "0.5", None])
def test_bad_participation_is_one_line_error(value):
    with pytest.raises(ValueError, match=r"participation=.* is out of range: valid \(0, 1\]"):
        check_participation(value)


def test_bad_arguments_are_value_errors():
    with pytest.raises(ValueError, match=r"defense_f must be one of \['run', 'sampled'\]"):
        check_defense_f("oracle")
    with pytest.raises(ValueError, match="f=4 is out of range"):
        sample_participants(0, 0, n=4, f=4, participation=0.5)
    with pytest.raises(ValueError, match="f=5 is out of range"):
        sample_participants(0, 0, n=4, f=5, participation=0.5)
    with pytest.raises(ValueError, match="step=-1 is out of range"):
        sample_participants(0, -1, n=4, f=1, participation=0.5)
    with pytest.raises(ValueError, match="participation"):
        sample_participants(0, 0, n=4, f=1, participation=0.0)


# ---------------------------------------------------------------- the step's defense

def test_defense_for_rebuilds_the_same_stages_and_parameters_for_another_f():
    defense = make_defense("trimmed-mean", 3, pre=[("bucketing", {"s": 2}), "nnm"])
    rebuilt = defense_for(defense, 1)
    assert rebuilt.f == 1 and rebuilt.name == "trimmed-mean" and rebuilt.pre == ("bucketing", "nnm")
    assert rebuilt.pre_params == defense.pre_params and rebuilt.params == defense.params
    assert defense_for(defense, 3) is defense and defense.f == 3
    with pytest.raises(ValueError, match="must be a byzbn.defenses.Defense"):
        defense_for(lambda x: x.mean(dim=0), 1)


def test_largest_fitting_f_caps_at_what_the_rule_accepts_on_the_sampled_rows():
    assert largest_fitting_f(make_defense("median", 3), 3, 10) == 3
    assert largest_fitting_f(make_defense("median", 3), 3, 5) == 2  # 2f < n
    assert largest_fitting_f(make_defense("krum", 3), 3, 6) == 2  # 2f < n, as ByzFL's Krum
    assert largest_fitting_f(make_defense("krum", 3, pre="nnm"), 3, 3) == 1


def test_largest_fitting_f_refuses_a_sample_the_rule_never_accepts():
    before = set(PRE_AGGREGATORS)

    @register_pre_aggregator("test-needs-four")
    class NeedsFour(PreAggregator):
        def check_n(self, n):
            if n < 4:
                raise ValueError(f"test-needs-four needs n >= 4, got n={n}")

        def __call__(self, x):
            return x

    try:
        defense = make_defense("median", 1, pre="test-needs-four")
        assert largest_fitting_f(defense, 1, 4) == 1
        with pytest.raises(ValueError, match="cannot aggregate n=3 rows for any f: sample more clients"):
            largest_fitting_f(defense, 1, 3)
    finally:
        for name in set(PRE_AGGREGATORS) - before:
            del PRE_AGGREGATORS[name]


def test_step_defense_uses_the_runs_or_the_sampled_f_capped_by_the_sample():
    defense = make_defense("trimmed-mean", 3, pre="nnm")
    small = Participants((0, 1, 4), (7, 8))  # 5 rows, 2 Byzantine
    assert step_defense(defense, small, 3, "run").f == 2  # the run's 3, capped: 2f < 5
    assert step_defense(defense, small, 3, "sampled").f == 2
    none = Participants((0, 1, 2, 3, 4, 5, 6), ())  # 7 rows, no Byzantine
    assert step_defense(defense, none, 3, "run").f == 3
    assert step_defense(defense, none, 3, "sampled").f == 0
    x = torch.randn(7, 4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(step_defense(defense, none, 3, "sampled")(x), x.mean(dim=0))  # f = 0 trims nothing
