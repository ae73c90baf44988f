"""byzbn.stats: the exact merge equals BN on the concatenated batch; the naive merge's bias; robust merge.

References are float64 (F.batch_norm on the concatenated batch, or direct formulas); the inputs are
float32 or float64. Data comes from a seeded torch generator whose shapes, scale and between-client
offsets hypothesis draws, so every example stays small and cheap.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given
from hypothesis import strategies as st

from byzbn import stats
from byzbn.kernels import reference as functional

# Relative to the data's magnitude M = max|x|: means to TOL·M, variances to TOL·M².
TOL = {torch.float32: 2e-5, torch.float64: 1e-12}
DTYPES = list(TOL)
MOMENTUM = 0.1


@st.composite
def federations(draw, equal_batches: bool = False):
    """Per-client batches [B_i, C, *spatial] (B_i unequal unless equal_batches), dtype, magnitude."""
    clients = draw(st.integers(1, 16))
    if equal_batches:
        sizes = [draw(st.integers(1, 4))] * clients
    else:
        sizes = draw(st.lists(st.integers(1, 4), min_size=clients, max_size=clients))
    channels = draw(st.integers(1, 3))
    spatial = draw(st.sampled_from([(), (1, 1), (2, 3), (3, 2), (3, 3)]))
    assume(sum(sizes) * math.prod(spatial) >= 2)  # BN in training needs N >= 2 per channel
    dtype = draw(st.sampled_from(DTYPES))
    scale = draw(st.floats(1e-3, 1e3))
    offset = draw(st.floats(0.0, 4.0))  # spread of the client means, in units of scale
    seed = draw(st.integers(0, 2**32 - 1))
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for b in sizes:
        shift = offset * scale * torch.randn(1, channels, *([1] * len(spatial)), generator=gen, dtype=torch.float64)
        batches.append((shift + scale * torch.randn(b, channels, *spatial, generator=gen, dtype=torch.float64)).to(dtype))
    magnitude = max(float(b.abs().max()) for b in batches) + 1e-30
    return batches, dtype, magnitude


def per_client_stats(batches: list[torch.Tensor]) -> stats.ClientStats:
    """client_stats needs equal batch sizes, so call it per client and stack the rows with their counts."""
    parts = [stats.client_stats(b[None]) for b in batches]
    return stats.ClientStats(mean=torch.cat([p.mean for p in parts]), var=torch.cat([p.var for p in parts]),
                             count=torch.cat([p.count for p in parts]))


def batch_norm_running(x64: torch.Tensor, running_mean: torch.Tensor, running_var: torch.Tensor, momentum: float):
    """The running statistics after one F.batch_norm(training=True) step on x64."""
    rm, rv = running_mean.clone(), running_var.clone()
    F.batch_norm(x64, rm, rv, training=True, momentum=momentum)
    return rm, rv


def assert_close(actual, expected, atol):
    torch.testing.assert_close(actual.to(torch.float64), expected.to(torch.float64), rtol=0, atol=atol)


@given(federations(), st.integers(0, 2**32 - 1))
def test_merged_client_stats_equal_batch_norm_on_the_concatenated_batch(federation, seed):
    batches, dtype, m = federation
    tol = TOL[dtype]
    union64 = torch.cat(batches).to(torch.float64)
    channels, total = union64.shape[1], union64.numel() // union64.shape[1]

    g = stats.merge_stats(per_client_stats(batches))

    # The batch statistics BN uses in training, computed directly on the union in float64.
    ref_var, ref_mean = torch.var_mean(union64.transpose(0, 1).reshape(channels, -1), dim=1, correction=0)
    assert g.count.dtype == torch.int64 and g.count.shape == () and int(g.count) == total
    assert_close(g.mean, ref_mean, tol * m)
    assert_close(g.var, ref_var, tol * m * m)
    assert_close(g.var_unbiased, ref_var * total / (total - 1), tol * m * m)

    # The running statistics as F.batch_norm(training=True) updates them (unbiased variance).
    gen = torch.Generator().manual_seed(seed)
    running_mean = m * torch.randn(channels, generator=gen, dtype=torch.float64)
    running_var = m * m * torch.rand(channels, generator=gen, dtype=torch.float64)
    new_mean, new_var = stats.update_running(running_mean.to(dtype), running_var.to(dtype), g, MOMENTUM)
    ref_new_mean, ref_new_var = batch_norm_running(union64, running_mean, running_var, MOMENTUM)
    assert new_mean.dtype == dtype and new_var.dtype == dtype
    assert_close(new_mean, ref_new_mean, tol * m)
    assert_close(new_var, ref_new_var, tol * m * m)


@pytest.mark.parametrize("seed", range(4))
def test_batch_norm_batch_statistics_equal_the_merged_client_stats(seed):
    gen = torch.Generator().manual_seed(seed)
    batches = [torch.randn(b, 3, 2, 2, generator=gen) + 3 * torch.randn(1, 3, 1, 1, generator=gen) for b in (1, 4, 2, 7)]
    union64 = torch.cat(batches).to(torch.float64)
    total = union64.numel() // 3
    # With momentum 1 the running statistics become the batch mean and unbiased batch variance.
    bn_mean, bn_var_unbiased = batch_norm_running(union64, torch.zeros(3, dtype=torch.float64),
                                                  torch.ones(3, dtype=torch.float64), momentum=1.0)
    g = stats.merge_stats(per_client_stats(batches))
    m = float(union64.abs().max())
    assert_close(g.mean, bn_mean, TOL[torch.float32] * m)
    assert_close(g.var, bn_var_unbiased * (total - 1) / total, TOL[torch.float32] * m * m)
    assert_close(g.var_unbiased, bn_var_unbiased, TOL[torch.float32] * m * m)


@given(federations())
def test_naive_variance_average_is_biased_by_exactly_the_between_client_term(federation):
    batches, dtype, m = federation
    s = per_client_stats(batches)
    counts = s.count.to(torch.float64)
    total = counts.sum()
    union64 = torch.cat(batches).to(torch.float64).transpose(0, 1).reshape(s.mean.shape[1], -1)
    exact_var, exact_mean = torch.var_mean(union64, dim=1, correction=0)

    naive = (counts[:, None] * s.var.to(torch.float64)).sum(0) / total
    between = (counts[:, None] * (s.mean.to(torch.float64) - exact_mean) ** 2).sum(0) / total

    assert_close(exact_var - naive, between, TOL[dtype] * m * m)
    if len(batches) == 1:
        assert_close(naive, exact_var, TOL[dtype] * m * m)


@given(federations(equal_batches=True))
def test_robust_merge_with_the_mean_and_equal_counts_is_the_exact_merge(federation):
    batches, dtype, m = federation
    s = stats.client_stats(torch.stack(batches))  # equal batches: one call for all clients
    exact = stats.merge_stats(s)
    robust = stats.robust_merge_stats(s, functional.mean)
    assert torch.equal(robust.count, exact.count)
    assert robust.clamped == 0
    assert_close(robust.mean, exact.mean, TOL[dtype] * m)
    assert_close(robust.var, exact.var, TOL[dtype] * m * m)
    assert_close(robust.var_unbiased, exact.var_unbiased, TOL[dtype] * m * m)


@given(st.integers(1, 9), st.integers(1, 6), st.sampled_from(DTYPES), st.integers(0, 2**32 - 1), st.data())
def test_robust_merge_clamps_and_counts_negative_variances_from_attacked_rows(n, channels, dtype, seed, data):
    gen = torch.Generator().manual_seed(seed)
    byzantine = data.draw(st.integers(1, n), label="byzantine")
    negative = torch.tensor(data.draw(st.lists(st.booleans(), min_size=channels, max_size=channels), label="negative"))
    mean = torch.randn(n, channels, generator=gen, dtype=torch.float64)
    var = torch.rand(n, channels, generator=gen, dtype=torch.float64)
    # The attackers submit zeros where the estimate must stay >= 0, and where it must go negative a
    # variance sum far below minus everything the other terms add up to.
    positive_part = var.sum(0) + ((mean - mean.mean(0)) ** 2).sum(0) + 1.0
    attacked = torch.where(negative, -2.0 * positive_part / byzantine, torch.zeros(channels, dtype=torch.float64))
    var[:byzantine] = attacked
    s = stats.ClientStats(mean.to(dtype), var.to(dtype), torch.full((n,), 8, dtype=torch.int64))

    g = stats.robust_merge_stats(s, functional.mean)

    assert g.clamped == int(negative.sum())
    assert (g.var >= 0).all() and (g.var_unbiased >= 0).all()
    assert (g.var[negative] == 0).all()
    expected = (var + (mean - mean.mean(0)) ** 2).mean(0)
    assert_close(g.var[~negative], expected[~negative], TOL[dtype] * 100)


@given(st.lists(st.tuples(st.integers(1, 4), st.integers(1, 3)), min_size=1, max_size=3), st.integers(1, 6),
       st.integers(1, 3), st.sampled_from(DTYPES), st.integers(0, 2**32 - 1))
def test_concatenated_layers_merge_and_split_like_each_layer_alone(layer_shapes, clients, batch, dtype, seed):
    # Each layer (width c, spatial size s) has its own count per client: concat_stats must carry them.
    gen = torch.Generator().manual_seed(seed)
    widths = [c for c, _ in layer_shapes]
    layers = [stats.client_stats(torch.randn(clients, batch + 1, c, s, generator=gen, dtype=torch.float64).to(dtype))
              for c, s in layer_shapes]
    concat = stats.concat_stats(layers)
    per_channel = torch.cat([layer.count[:, None].expand(clients, c) for layer, c in zip(layers, widths)], dim=1)
    assert torch.equal(concat.channel_counts(), per_channel)
    merged = stats.split_stats(stats.merge_stats(concat), widths)
    robust = stats.split_stats(stats.robust_merge_stats(concat, functional.mean), widths)
    for layer, part, rpart in zip(layers, merged, robust):
        alone = stats.merge_stats(layer)
        assert torch.equal(part.count, alone.count) and torch.equal(rpart.count, alone.count)
        for a, b in ((part.mean, alone.mean), (part.var, alone.var), (part.var_unbiased, alone.var_unbiased)):
            assert_close(a, b, TOL[dtype] * 100)
        for a, b in ((rpart.mean, alone.mean), (rpart.var, alone.var), (rpart.var_unbiased, alone.var_unbiased)):
            assert_close(a, b, TOL[dtype] * 100)


# ---- labelled examples -------------------------------------------------------------------------------

def test_robust_merge_counts_each_negative_coordinate_a_defense_returns():
    s = stats.ClientStats(torch.zeros(3, 4), torch.ones(3, 4), torch.full((3,), 5))
    g = stats.robust_merge_stats(s, lambda x: torch.tensor([-1.0, 2.0, -0.5, 0.0]))
    assert g.clamped == 2
    assert g.var.tolist() == [0.0, 2.0, 0.0, 0.0]
    assert g.count.tolist() == 15


def test_robust_merge_with_the_median_ignores_f_negative_variance_rows():
    mean = torch.zeros(5, 3, dtype=torch.float64)
    var = torch.tensor([[1.0, 2.0, 3.0]] * 3 + [[-1e6, -1e6, -1e6]] * 2, dtype=torch.float64)
    g = stats.robust_merge_stats(stats.ClientStats(mean, var, torch.full((5,), 4)), functional.coordinate_median)
    assert g.clamped == 0
    assert g.var.tolist() == [1.0, 2.0, 3.0]


def test_robust_merge_count_ignores_a_minority_lying_about_counts():
    s = stats.ClientStats(torch.zeros(5, 1), torch.ones(5, 1), torch.tensor([10, 10, 10, 10**9, 10**9]))
    assert stats.robust_merge_stats(s, functional.coordinate_median).count.tolist() == 5 * 10


def test_update_running_with_momentum_one_and_zero():
    g = stats.GlobalStats(torch.tensor([2.0]), torch.tensor([3.0]), torch.tensor([4.0]), count=4)
    rm, rv = torch.tensor([1.0]), torch.tensor([1.0])
    assert [t.item() for t in stats.update_running(rm, rv, g, 1.0)] == [2.0, 4.0]
    assert [t.item() for t in stats.update_running(rm, rv, g, 0.0)] == [1.0, 1.0]
    assert rm.item() == 1.0 and rv.item() == 1.0  # inputs unchanged


def test_client_stats_accumulates_half_precision_in_float32():
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    s = stats.client_stats(x.to(torch.float16))
    assert s.mean.dtype == torch.float32
    assert s.count.tolist() == [15, 15]
    torch.testing.assert_close(s.mean.double(), x.to(torch.float16).double().mean(dim=(1, 3)), rtol=0, atol=1e-6)


@pytest.mark.parametrize("x, match", [
    ([[[1.0]]], "x must be a tensor"),
    (torch.zeros(4, 3), r"x must be a tensor of shape \[n, B, C"),
    (torch.zeros(2, 3, 4, dtype=torch.int64), "x must have a floating dtype"),
    (torch.zeros(0, 3, 4), "x must have n >= 1"),
    (torch.zeros(2, 3, 4, 0), "x must have n >= 1"),
], ids=["non-tensor", "2-d", "int-dtype", "no-clients", "empty-spatial"])
def test_client_stats_rejects_bad_inputs(x, match):
    with pytest.raises(ValueError, match=match):
        stats.client_stats(x)


@pytest.mark.parametrize("mean, var, count, match", [
    (torch.zeros(3), torch.zeros(3), torch.ones(3, dtype=torch.int64), "mean and var must both have shape"),
    (torch.zeros(3, 2), torch.zeros(3, 3), torch.ones(3, dtype=torch.int64), "mean and var must both have shape"),
    (torch.zeros(3, 2), torch.zeros(3, 2), torch.ones(2, dtype=torch.int64), "count must have shape"),
    (torch.zeros(3, 2), torch.zeros(3, 2), torch.ones(3, 3, dtype=torch.int64), r"count must have shape \[n\]=3 or"),
    ([[0.0]], [[0.0]], [1], "mean must be a torch.Tensor"),
    (torch.zeros(3, 2, dtype=torch.int64), torch.zeros(3, 2, dtype=torch.int64), torch.ones(3, dtype=torch.int64),
     "mean and var must share a floating dtype"),
    (torch.zeros(3, 2), torch.zeros(3, 2, dtype=torch.float64), torch.ones(3, dtype=torch.int64),
     "mean and var must share a floating dtype"),
    (torch.zeros(3, 2), torch.zeros(3, 2), torch.full((3,), 2.5), "count must have an integer dtype"),
], ids=["1-d", "var-shape", "count-shape", "count-columns", "non-tensor", "int-dtype", "mixed-dtype", "float-count"])
def test_client_stats_container_rejects_bad_fields(mean, var, count, match):
    with pytest.raises(ValueError, match=match):
        stats.ClientStats(mean, var, count)


@pytest.mark.parametrize("merge", [stats.merge_stats, lambda s: stats.robust_merge_stats(s, functional.mean)],
                         ids=["merge", "robust-merge"])
@pytest.mark.parametrize("count", [[4, 0, 4], [4, -3, 4]], ids=["zero", "negative"])
def test_merges_reject_counts_below_one(merge, count):
    s = stats.ClientStats(torch.zeros(3, 2), torch.ones(3, 2), torch.tensor(count))
    with pytest.raises(ValueError, match=r"count must be >= 1 for every client"):
        merge(s)


def test_merge_rejects_a_single_element_union():
    s = stats.client_stats(torch.zeros(1, 1, 2))
    with pytest.raises(ValueError, match="N must be >= 2"):
        stats.merge_stats(s)


@pytest.mark.parametrize("momentum", [-0.1, 1.5, float("nan")])
def test_update_running_rejects_momentum_outside_unit_interval(momentum):
    g = stats.merge_stats(stats.client_stats(torch.randn(2, 3, 2)))
    with pytest.raises(ValueError, match="momentum must be in"):
        stats.update_running(torch.zeros(2), torch.ones(2), g, momentum)


@pytest.mark.parametrize("shape_mean, shape_var", [((1,), (2,)), ((3,), (3,)), ((2,), (2, 1))])
def test_update_running_rejects_running_stats_of_another_shape(shape_mean, shape_var):
    g = stats.merge_stats(stats.client_stats(torch.randn(2, 3, 2)))
    with pytest.raises(ValueError, match="running_mean and running_var must have"):
        stats.update_running(torch.zeros(shape_mean), torch.ones(shape_var), g)


def test_concat_and_split_reject_bad_arguments():
    with pytest.raises(ValueError, match="parts"):
        stats.concat_stats([])
    g = stats.merge_stats(stats.client_stats(torch.randn(2, 3, 5)))
    with pytest.raises(ValueError, match="sizes"):
        stats.split_stats(g, [2, 2])
