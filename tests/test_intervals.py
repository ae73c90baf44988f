"""byzbn.grid.intervals: the t quantile, means with intervals, paired differences, verdicts, noise floors."""
from __future__ import annotations

import math

import pytest

from byzbn.grid.intervals import (INCONCLUSIVE, NO, YES, binomial_se, combine, mean_interval, noise_floor_text,
                                  paired_difference, pooled_std, t975, verdict)


def test_the_t_quantile_matches_scipy_for_every_degree_of_freedom():
    stats = pytest.importorskip("scipy.stats")
    for df in list(range(1, 61)) + [100, 1000]:
        assert t975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=2e-5), df
    with pytest.raises(ValueError, match="df must be an integer >= 1"):
        t975(0)


def test_a_mean_over_seeds_has_the_student_t_half_width():
    value = mean_interval([0.50, 0.52, 0.48])
    assert value.mean == pytest.approx(0.50) and value.std == pytest.approx(0.02)
    assert value.half == pytest.approx(4.30265273 * 0.02 / math.sqrt(3))
    assert value.text() == "50.0 ± 5.0" and value.low < 0.5 < value.high
    one = mean_interval([0.4])
    assert one.half is None and one.text() == "40.0" and mean_interval([]) is None


def test_a_paired_difference_is_over_the_seeds_both_cells_have():
    a = {0: 0.60, 1: 0.70, 2: 0.50, 3: 0.9}
    b = {0: 0.50, 1: 0.61, 2: 0.39}  # seed 3 missing: left out
    diff = paired_difference(a, b)
    assert diff.count == 3 and diff.mean == pytest.approx(0.1)
    # the per-seed noise (±0.1 between seeds) cancels: the interval is far narrower than the cells' own
    assert diff.half < 0.03 < mean_interval(a.values()).half
    assert diff.text(signed=True).startswith("+10.0 ± ")
    assert paired_difference({0: 1.0}, {1: 1.0}) is None


@pytest.mark.parametrize("values,margin,expected", [
    ([0.05, 0.06, 0.04], 0.0, YES),            # wholly above the margin
    ([-0.05, -0.06, -0.04], 0.0, NO),          # wholly below
    ([0.05, -0.03, 0.01], 0.0, INCONCLUSIVE),  # straddles it
    ([-0.01, -0.011, -0.009], -0.02, YES),      # "within 2 points": above −2
    ([0.03], 0.0, INCONCLUSIVE),               # one seed: no interval, no verdict
])
def test_a_verdict_is_yes_no_or_inconclusive_by_where_the_interval_lies(values, margin, expected):
    assert verdict(mean_interval(values), margin) == expected


def test_cells_combine_by_the_claims_rule():
    assert combine([YES, YES]) == YES and combine([YES, INCONCLUSIVE]) == INCONCLUSIVE and combine([YES, NO]) == NO
    assert combine([YES, YES, NO], "most") == YES and combine([YES, NO], "most") == NO
    assert combine([YES, INCONCLUSIVE, INCONCLUSIVE], "most") == INCONCLUSIVE and combine([]) == "no data"
    with pytest.raises(ValueError, match="need must be 'all' or 'most'"):
        combine([YES], "some")


def test_the_noise_floor_is_the_pooled_seed_std_and_the_binomial_error():
    assert binomial_se(0.4, 1017) == pytest.approx(0.01536, abs=1e-5)  # ≈ 1.5 points
    assert pooled_std([[0.5, 0.52], [0.3, 0.3, 0.3], [0.9]]) == pytest.approx(math.sqrt(0.0002 / 3))
    text = noise_floor_text([[0.4, 0.42], [0.38, 0.4]], 1017)
    assert "seed-to-seed standard deviation 1.4 points" in text and "1.5 points" in text and "N = 1,017" in text
    assert "not measured (one seed)" in noise_floor_text([[0.4]], None)
