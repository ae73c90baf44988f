"""BN diagnostics are exact on constructed cases (byzbn.fl.diagnostics)."""
import math

import pytest
import torch

from byzbn import stats
from byzbn.fl import diagnostics as diag


def test_identical_clients_have_no_between_client_share():
    batch = torch.randn(8, 3, 4, 4, dtype=torch.float64)
    rows = stats.client_stats(batch.unsqueeze(0).repeat(5, 1, 1, 1, 1))
    assert diag.between_client_share(rows) == pytest.approx(0.0, abs=1e-12)


def test_constant_client_batches_that_differ_are_all_between_client():
    x = torch.stack([torch.full((6, 2, 3, 3), float(v), dtype=torch.float64) for v in (-1.0, 0.5, 4.0)])
    assert diag.between_client_share(stats.client_stats(x)) == pytest.approx(1.0)


def test_between_client_share_matches_the_law_of_total_variance():
    # client 1 holds {0, 2}, client 2 holds {4, 6}: the union {0, 2, 4, 6} has N·var = 20, 16 of it between
    x = torch.tensor([[0.0, 2.0], [4.0, 6.0]], dtype=torch.float64).view(2, 2, 1)
    assert diag.between_client_share(stats.client_stats(x)) == pytest.approx(0.8)


def test_between_client_share_weights_clients_by_count():
    rows = stats.ClientStats(mean=torch.tensor([[0.0], [3.0]], dtype=torch.float64),
                             var=torch.tensor([[1.0], [1.0]], dtype=torch.float64),
                             count=torch.tensor([3, 1]))
    # μ = 0.75; between = 3·0.75² + 1·2.25² = 6.75; within = 4
    assert diag.between_client_share(rows) == pytest.approx(6.75 / 10.75)


def test_mismatch_is_zero_for_exact_running_statistics_and_relative_otherwise():
    mean, var = torch.tensor([3.0, 4.0]), torch.tensor([1.0, 1.0])
    assert diag.statistics_mismatch(mean, var, mean, var) == {"mean": 0.0, "var": 0.0}
    got = diag.statistics_mismatch(torch.zeros(2), 2 * var, mean, var)
    assert got["mean"] == pytest.approx(1.0) and got["var"] == pytest.approx(1.0)


def test_gradient_deviation_flattens_parameter_lists():
    g = [torch.ones(2, 2), torch.ones(3)]
    assert diag.gradient_deviation(g, g) == 0.0
    assert diag.gradient_deviation([2 * t for t in g], g) == pytest.approx(1.0)
    assert diag.gradient_deviation(torch.zeros(7), torch.cat([t.flatten() for t in g])) == pytest.approx(1.0)


def test_attack_reach_is_zero_without_a_shift_and_inf_against_a_zero_reference():
    a = torch.tensor([1.0, -2.0])
    assert diag.attack_reach(a, a) == 0.0
    assert diag.attack_reach(a, torch.zeros(2)) == math.inf
    assert diag.attack_reach(torch.zeros(2), torch.zeros(2)) == 0.0


def test_relative_distance_refuses_mismatched_sizes():
    with pytest.raises(ValueError, match="same number of elements"):
        diag.relative_distance(torch.zeros(3), torch.zeros(2))


def test_layer_mean():
    assert diag.layer_mean([0.2, 0.4]) == pytest.approx(0.3)
    assert math.isnan(diag.layer_mean([]))
