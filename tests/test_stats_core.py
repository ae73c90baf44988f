"""byzbn.stats as the one statistics core: merge_moments, unbiased, merge_steps, per-layer and per-channel
counts, counts beyond the input dtype's range, the differentiable robust merge, GlobalStats validation.

References are float64 formulas or float64 statistics of the concatenated data.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from byzbn import stats
from byzbn.kernels import reference

TOL64 = dict(rtol=1e-12, atol=1e-12)


def _groups(seed: int, sizes: list[int], channels: int, offset: float = 3.0):
    """One [size, channels] float64 block of values per group, each group with its own offset."""
    gen = torch.Generator().manual_seed(seed)
    return [offset * torch.randn(1, channels, generator=gen, dtype=torch.float64)
            + torch.randn(b, channels, generator=gen, dtype=torch.float64) for b in sizes]


@given(st.lists(st.integers(1, 6), min_size=1, max_size=6), st.integers(1, 4), st.integers(0, 2**32 - 1))
def test_merge_moments_is_the_moments_of_the_union(sizes, channels, seed):
    blocks = _groups(seed, sizes, channels)
    var_mean = [torch.var_mean(b, dim=0, correction=0) for b in blocks]
    means = torch.stack([m for _, m in var_mean])
    variances = torch.stack([v for v, _ in var_mean])
    count = torch.tensor(sizes)[:, None]
    mean, var = stats.merge_moments(count, means, variances)
    want_var, want_mean = torch.var_mean(torch.cat(blocks), dim=0, correction=0)
    torch.testing.assert_close(mean, want_mean, **TOL64)
    torch.testing.assert_close(var, want_var, **TOL64)
    # Along another dim, with the groups on dim 1 and counts broadcast over the channels.
    mean_t, var_t = stats.merge_moments(count.T, means.T, variances.T, dim=1)
    torch.testing.assert_close(mean_t, want_mean, **TOL64)
    torch.testing.assert_close(var_t, want_var, **TOL64)


def test_merge_moments_accumulates_half_precision_in_float32_and_is_differentiable():
    mean = torch.tensor([[1.0, 2.0], [3.0, 6.0]], dtype=torch.float16)
    var = torch.tensor([[1.0, 0.0], [1.0, 4.0]], dtype=torch.float16)
    merged_mean, merged_var = stats.merge_moments(torch.tensor([[1], [3]]), mean, var)
    assert merged_mean.dtype == merged_var.dtype == torch.float32
    assert merged_mean.tolist() == [2.5, 5.0]
    assert merged_var.tolist() == [1.0 + 0.75, 3.0 + 3.0]   # mean of v_i plus the between-group term
    m = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    v = torch.rand(3, 2, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda a, b: stats.merge_moments(torch.tensor([[2], [5], [1]]), a, b), (m, v))


def test_counts_beyond_half_precision_range_are_exact():
    # 70000 elements per client: fp16 stops at 65504, so a count cast to the means' dtype is inf.
    gen = torch.Generator().manual_seed(0)
    mean64 = 5 + torch.randn(4, 3, generator=gen, dtype=torch.float64)
    var64 = torch.rand(4, 3, generator=gen, dtype=torch.float64)
    mean, var = mean64.half(), var64.half()
    count = torch.tensor([70000, 70000, 90000, 70000])
    g = stats.merge_stats(stats.ClientStats(mean, var, count))
    w = count.double()[:, None] / count.sum()
    want_mean = (w * mean.double()).sum(0)
    want_var = (w * (var.double() + (mean.double() - want_mean) ** 2)).sum(0)
    assert g.count.dtype == torch.int64 and g.count.tolist() == 300000
    assert g.mean.dtype == torch.float32 and torch.isfinite(g.var_unbiased).all()
    torch.testing.assert_close(g.mean.double(), want_mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(g.var.double(), want_var, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(g.var_unbiased.double(), want_var * 300000 / 299999, rtol=1e-6, atol=1e-6)
    robust = stats.robust_merge_stats(stats.ClientStats(mean.float(), var.float(), count), reference.mean)
    assert robust.count.tolist() == 4 * 70000
    steps = stats.merge_steps([stats.ClientStats(mean, var, count)] * 2)
    assert steps.count.tolist() == [140000, 140000, 180000, 140000]
    torch.testing.assert_close(steps.mean.double(), mean.double(), rtol=0, atol=0)


def test_unbiased_with_int_and_tensor_totals():
    var = torch.tensor([2.0, 3.0], dtype=torch.float64)
    assert stats.unbiased(var, 4).tolist() == [2.0 * 4 / 3, 3.0 * 4 / 3]
    torch.testing.assert_close(stats.unbiased(var, torch.tensor(4)), stats.unbiased(var, 4), rtol=0, atol=0)
    torch.testing.assert_close(stats.unbiased(var, torch.tensor([2, 5])), torch.tensor([4.0, 3.75], dtype=var.dtype))
    assert stats.unbiased(var.float(), torch.tensor(4)).dtype == torch.float32
    for bad in (1, torch.tensor([5, 1]), torch.tensor(0)):
        with pytest.raises(ValueError, match="N must be >= 2"):
            stats.unbiased(var, bad)
    with pytest.raises(ValueError, match="total must be an int or an integer tensor"):
        stats.unbiased(var, 2.5)


@given(st.lists(st.integers(1, 4), min_size=1, max_size=4), st.integers(1, 3), st.integers(1, 3),
       st.sampled_from([(), (3,), (2, 2)]), st.integers(0, 2**32 - 1))
def test_merge_steps_is_the_statistics_of_the_concatenated_batches(batches, clients, channels, spatial, seed):
    # E local steps with their own batch sizes; per client the merge equals one pass over all its batches.
    gen = torch.Generator().manual_seed(seed)
    xs = [torch.randn(clients, b, channels, *spatial, generator=gen, dtype=torch.float64) + e
          for e, b in enumerate(batches)]
    merged = stats.merge_steps([stats.client_stats(x) for x in xs])
    want = stats.client_stats(torch.cat(xs, dim=1))
    torch.testing.assert_close(merged.mean, want.mean, **TOL64)
    torch.testing.assert_close(merged.var, want.var, **TOL64)
    assert torch.equal(merged.count, want.count)


def test_merge_steps_with_per_channel_counts():
    gen = torch.Generator().manual_seed(1)
    a = stats.ClientStats(torch.randn(2, 3, generator=gen), torch.rand(2, 3, generator=gen),
                          torch.tensor([[4, 4, 9], [4, 4, 9]]))
    b = stats.ClientStats(torch.randn(2, 3, generator=gen), torch.rand(2, 3, generator=gen), torch.tensor([2, 6]))
    merged = stats.merge_steps([a, b])
    assert merged.count.tolist() == [[6, 6, 11], [10, 10, 15]]
    for i in range(2):
        for c in range(3):
            na, nb = int(a.count[i, c]), int(b.count[i])
            mean, var = stats.merge_moments(torch.tensor([na, nb]), torch.stack([a.mean[i, c], b.mean[i, c]]),
                                            torch.stack([a.var[i, c], b.var[i, c]]))
            torch.testing.assert_close(merged.mean[i, c], mean, rtol=0, atol=0)
            torch.testing.assert_close(merged.var[i, c], var, rtol=0, atol=0)


def test_merge_steps_rejects_bad_steps():
    s = stats.client_stats(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="steps must hold at least one"):
        stats.merge_steps([])
    with pytest.raises(ValueError, match="steps must hold byzbn.stats.ClientStats"):
        stats.merge_steps([s, (s.mean, s.var, s.count)])
    with pytest.raises(ValueError, match=r"steps must all have the shape \[n, C\]"):
        stats.merge_steps([s, stats.client_stats(torch.randn(3, 3, 4))])
    with pytest.raises(ValueError, match="count must be >= 1 for every client"):
        stats.merge_steps([s, stats.ClientStats(s.mean, s.var, torch.tensor([3, 0]))])


def test_per_layer_counts_after_concatenation_and_split():
    # Two layers seen by the same 3 clients: 4 and 25 elements per channel (e.g. 1x2x2 and 1x5x5 maps).
    gen = torch.Generator().manual_seed(2)
    small = stats.client_stats(torch.randn(3, 1, 2, 4, generator=gen, dtype=torch.float64))
    large = stats.client_stats(torch.randn(3, 1, 3, 25, generator=gen, dtype=torch.float64))
    concat = stats.concat_stats([small, large])
    assert concat.count.tolist() == [[4, 4, 25, 25, 25]] * 3
    assert stats.concat_stats([small, small]).count.tolist() == [4, 4, 4]   # equal counts stay [n]
    merged = stats.merge_stats(concat)
    assert merged.count.tolist() == [12, 12, 75, 75, 75]
    parts = stats.split_stats(merged, [2, 3])
    assert [p.count.tolist() for p in parts] == [12, 75]
    for part, layer in zip(parts, (small, large)):
        alone = stats.merge_stats(layer)
        torch.testing.assert_close(part.var_unbiased, alone.var_unbiased, **TOL64)
    robust = stats.split_stats(stats.robust_merge_stats(concat, reference.coordinate_median), [2, 3])
    assert [p.count.tolist() for p in robust] == [12, 75]
    # A split that cuts through a layer keeps per-channel counts.
    assert stats.split_stats(merged, [1, 2, 2])[1].count.tolist() == [12, 75]
    with pytest.raises(ValueError, match="parts must all hold the same n clients"):
        stats.concat_stats([small, stats.client_stats(torch.randn(2, 1, 2, 4))])
    with pytest.raises(ValueError, match="sizes must be positive ints"):
        stats.split_stats(merged, [5, 0])


def test_robust_merge_with_per_channel_counts_uses_the_median_count_of_each_channel():
    count = torch.tensor([[10, 7], [10, 7], [10**9, 7]])   # one client lies about channel 0
    g = stats.robust_merge_stats(stats.ClientStats(torch.zeros(3, 2), torch.ones(3, 2), count),
                                 reference.coordinate_median)
    assert g.count.tolist() == [30, 21]
    torch.testing.assert_close(g.var_unbiased, torch.tensor([30 / 29, 21 / 20]))


def _plain_robust_merge(rows: stats.ClientStats, defense) -> tuple[torch.Tensor, torch.Tensor]:
    """The textbook two-phase merge (DESIGN.md §3), without the detach of non-finite deviations."""
    mean = defense(rows.mean)
    return mean, defense(rows.var + (rows.mean - mean) ** 2).clamp_min(0)


@pytest.mark.parametrize("rule", ["mean", "median", "nnm+median"])
def test_robust_merge_is_differentiable_with_the_textbook_values_and_gradients(rule):
    defense = {"mean": reference.mean, "median": reference.coordinate_median,
               "nnm+median": lambda x: reference.coordinate_median(reference.nnm(x, 2))}[rule]
    gen = torch.Generator().manual_seed(3)
    mean = torch.randn(7, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    var = (torch.rand(7, 5, generator=gen, dtype=torch.float64) - 0.2).requires_grad_()   # some clamps
    rows = stats.ClientStats(mean, var, torch.full((7,), 9))
    g = stats.robust_merge_stats(rows, defense)
    want_mean, want_var = _plain_robust_merge(rows, defense)
    torch.testing.assert_close(g.mean, want_mean, **TOL64)
    torch.testing.assert_close(g.var, want_var, **TOL64)
    torch.testing.assert_close(g.var_unbiased, want_var * 63 / 62, **TOL64)
    got = torch.autograd.grad((g.mean ** 2).sum() + g.var_unbiased.sum(), [mean, var])
    want = torch.autograd.grad((want_mean ** 2).sum() + (want_var * 63 / 62).sum(), [mean, var])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **TOL64)


@pytest.mark.parametrize("fault", [float("nan"), float("inf"), -float("inf")], ids=["nan", "inf", "-inf"])
def test_robust_merge_backward_survives_non_finite_rows(fault):
    gen = torch.Generator().manual_seed(4)
    honest_mean = torch.randn(5, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    honest_var = torch.rand(5, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    bad = torch.full((2, 3), fault, dtype=torch.float64)
    rows = stats.ClientStats(torch.cat([honest_mean, bad]), torch.cat([honest_var, bad.abs()]), torch.full((7,), 4))
    defense = lambda x: reference.coordinate_median(reference.nnm(x, 2))   # noqa: E731
    g = stats.robust_merge_stats(rows, defense)
    assert torch.isfinite(g.mean).all() and torch.isfinite(g.var).all()
    with torch.no_grad():   # the same values as without autograd
        plain = stats.robust_merge_stats(stats.ClientStats(rows.mean.detach(), rows.var.detach(), rows.count), defense)
    torch.testing.assert_close(g.var, plain.var, rtol=0, atol=0)
    grads = torch.autograd.grad(g.mean.sum() + g.var.sum(), [honest_mean, honest_var])
    assert all(torch.isfinite(gr).all() for gr in grads)
    assert any(gr.abs().sum() > 0 for gr in grads)
    # The textbook formula's backward multiplies the fault rows' zero gradient by ±Inf.
    mean, var = _plain_robust_merge(rows, defense)
    plain_grads = torch.autograd.grad(mean.sum() + var.sum(), [honest_mean, honest_var])
    assert not all(torch.isfinite(gr).all() for gr in plain_grads)


def test_global_stats_takes_an_int_count_as_an_int64_tensor():
    g = stats.GlobalStats(torch.zeros(2), torch.ones(2), torch.ones(2), 7)
    assert g.count.dtype == torch.int64 and g.count.shape == () and int(g.count) == 7
    counts = torch.tensor([3, 4], dtype=torch.int32)
    per_channel = stats.GlobalStats(torch.zeros(2), torch.ones(2), torch.ones(2), counts)
    assert per_channel.count.dtype == torch.int64 and per_channel.count.tolist() == [3, 4]


@pytest.mark.parametrize("kwargs, match", [
    (dict(mean=torch.zeros(2, 1)), r"mean, var and var_unbiased must all have shape \[C\]"),
    (dict(var=torch.ones(3)), r"mean, var and var_unbiased must all have shape \[C\]"),
    (dict(var_unbiased=[1.0, 1.0]), "var_unbiased must be a torch.Tensor"),
    (dict(count=2.5), "count must be an int or an integer tensor"),
    (dict(count=torch.tensor(4.0)), "count must be an int or an integer tensor"),
    (dict(count=True), "count must be an int or an integer tensor"),
    (dict(count=torch.tensor([1, 2, 3])), r"count must have shape \[\] or \[C\]=\[2\]"),
    (dict(clamped=-1), "clamped must be an int >= 0"),
], ids=["2-d", "var-shape", "non-tensor", "float-count", "float-tensor-count", "bool-count", "count-shape",
        "negative-clamped"])
def test_global_stats_rejects_bad_fields(kwargs, match):
    fields = dict(mean=torch.zeros(2), var=torch.ones(2), var_unbiased=torch.ones(2), count=4)
    with pytest.raises(ValueError, match=match):
        stats.GlobalStats(**{**fields, **kwargs})
