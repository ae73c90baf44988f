"""The BN pass (byzbn.nn.bn_passes) and what it returns, the fused backward's precision, FedTAN's merged statistics.

- a pass hands its layers one BNPass and a record, and puts back what they had on exit, also when the
  pass raises and when passes nest;
- KernelClientBatchNorm's backward (naive BN's hot path) is centred on x − μ: at means up to 1e4 with a
  spread of 1e-2 its gradients are as accurate as fp32 autograd's or better, measured against float64
  autograd of the same per-client BN (Σ dy·x − μ·Σ dy would cancel catastrophically there);
- FedTAN's merged statistics come back through the record (BNStats.merged), identical in every pass
  engine, and the server update takes the running statistics from them.
"""
from __future__ import annotations

from functools import partial

import pytest
import torch
from torch import nn

from byzbn import stats as bnstats
from byzbn.attacks import AttackContext, make_attack
from byzbn.defenses import make_defense
from byzbn.fl.dsgd import Federation
from byzbn.fl.passes import batched_pass, loop_pass, split_pass
from byzbn.fl.scenario import make_scenario
from byzbn.nn import (BNPass, BNStats, FederatedBatchNorm, HybridBatchNorm, KernelMoments, LayerOutput, run_bn_pass,
                      federated_bn_layers)
from byzbn.nn.models import make_cnn
from byzbn.schemes import StatsChannel, make_scheme, synchronize
from federation_data import client_data

TOL64 = dict(rtol=1e-10, atol=1e-12)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


class Boom(Exception):
    """Raised inside a pass by the tests: it must come out of the pass unchanged."""


def _layers(k: int = 3) -> list[FederatedBatchNorm]:
    return [FederatedBatchNorm(2).double() for _ in range(k)] + [HybridBatchNorm(2).double()]


# ---------------------------------------------------------------- (a) the pass context
def test_a_pass_sets_every_layer_and_restores_it_on_exit():
    layers = _layers()
    spec = BNPass(mode="global", clients=2, record=True)
    with run_bn_pass(layers, spec) as record:
        assert all(layer.current_pass is spec and layer.active_pass == (spec, record) for layer in layers)
    assert all(layer.active_pass is None for layer in layers)
    assert [layer.current_pass for layer in layers] == [BNPass()] * 3 + [BNPass(mode="hybrid")]  # default passes


def test_a_pass_restores_every_layer_when_its_body_raises():
    layers = _layers()
    with pytest.raises(Boom), run_bn_pass(layers, BNPass(mode="union", clients=2)):
        layers[0](torch.randn(4, 2, 3, dtype=torch.float64))  # some layers ran, others did not
        raise Boom
    assert all(layer.active_pass is None for layer in layers)


def test_a_pass_restores_every_layer_when_a_layer_raises_inside_it():
    layers = _layers()
    with pytest.raises(ValueError, match="clients=3"), run_bn_pass(layers, BNPass(clients=3, record=True)) as record:
        layers[0](torch.randn(6, 2, dtype=torch.float64))
        layers[1](torch.randn(4, 2, dtype=torch.float64))  # 4 rows do not split into 3 clients
    assert all(layer.active_pass is None for layer in layers)
    assert [o.count for o in record.outputs()] == [2]  # what ran before the failure is in the record


def test_nested_passes_restore_the_outer_pass_also_when_the_inner_one_raises():
    layers = _layers()
    outer, inner = BNPass(mode="global", clients=2, record=True), BNPass(mode="client", record=True)
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    with pytest.raises(Boom), run_bn_pass(layers[:3], outer) as outer_record:
        with pytest.raises(Boom), run_bn_pass(layers[1:], inner) as inner_record:
            assert [layer.current_pass for layer in layers] == [outer, inner, inner, inner]
            layers[1](x)
            raise Boom
        assert [layer.current_pass for layer in layers] == [outer, outer, outer, BNPass(mode="hybrid")]
        assert layers[3].active_pass is None
        # The inner pass's outputs went to the inner record only.
        assert inner_record.output(layers[1]) is not None and outer_record.output(layers[1]) is None
        layers[1](x)
        assert outer_record.output(layers[1]).mean.shape == (2, 2)  # back under the outer pass: 2 clients
        with run_bn_pass(layers, inner):  # a nested pass that exits normally restores the outer one too
            pass
        assert [layer.current_pass for layer in layers[:3]] == [outer] * 3 and layers[3].active_pass is None
        raise Boom
    assert all(layer.active_pass is None for layer in layers)


def test_a_rejected_spec_leaves_the_layers_as_they_were():
    layers = _layers()
    outer = BNPass(mode="global")
    with run_bn_pass(layers, outer):
        with pytest.raises(ValueError, match="spec must be a BNPass"), run_bn_pass(layers, {"mode": "client"}):
            pass
        assert all(layer.current_pass is outer for layer in layers)


def test_a_bnpass_is_immutable_and_replace_gives_a_validated_copy():
    spec = BNPass(mode="union", clients=4)
    with pytest.raises(AttributeError):
        spec.mode = "client"
    copy = spec.replace(clients=2, record=True)
    assert (copy.mode, copy.clients, copy.record) == ("union", 2, True) and spec.clients == 4
    with pytest.raises(ValueError, match="needs the scheme's sync callable"):
        spec.replace(mode="sync")


def test_the_record_lists_outputs_in_the_order_the_layers_were_given():
    layers = _layers(2)[:2]
    x = torch.randn(6, 2, 2, dtype=torch.float64)
    with run_bn_pass(layers, BNPass(mode="client", clients=3, record=True)) as record:
        layers[1](x)  # run in the reverse order
        layers[0](x * 2 + 1)
    first, second = record.outputs()
    assert first is record.output(layers[0]) and second is record.output(layers[1])
    ref = bnstats.client_stats(x.view(3, 2, 2, 2))
    torch.testing.assert_close(second.mean, ref.mean, **TOL64)
    torch.testing.assert_close(first.mean, 2 * ref.mean + 1, **TOL64)
    assert record.output(FederatedBatchNorm(2)) is None


def test_a_pass_without_statistics_returns_no_bn_stats():
    layers = _layers(2)[:2]
    x = torch.randn(6, 2, 2, dtype=torch.float64)
    with run_bn_pass(layers, BNPass(mode="global", clients=3)) as record:  # FixBN after T*: nothing recorded
        for layer in layers:
            layer(x)
    assert record.bn_stats(3) is None and all(o.mean is None and o.count == 4 for o in record.outputs())
    with run_bn_pass(layers, BNPass(mode="global", clients=3, record=True)) as record:
        pass
    assert record.bn_stats(3) is None  # no layer ran


# ---------------------------------------------------------------- (b) the fused backward's precision
def _per_client_bn(xs: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """Per-client BN of xs [n, B, C, *] in plain torch ops: autograd differentiates it in xs's dtype."""
    dims = (1,) + tuple(range(3, xs.dim()))
    var, mean = torch.var_mean(xs, dim=dims, correction=0, keepdim=True)
    shape = (1, 1, -1) + (1,) * (xs.dim() - 3)
    return (xs - mean) * torch.rsqrt(var + eps) * weight.view(shape) + bias.view(shape)


def _grads(fn, xs, weight, bias, up):
    xs, weight, bias = (t.detach().clone().requires_grad_(True) for t in (xs, weight, bias))
    return torch.autograd.grad((fn(xs, weight, bias) * up).sum(), [xs, weight, bias])


def _relative_errors(grads, reference) -> list[float]:
    return [float((g.double() - r).norm() / r.norm()) for g, r in zip(grads, reference)]


def _offset_batch(offset: float, spread: float, symmetric: bool, device: str, seed: int = 0,
                  n: int = 3, b: int = 8, c: int = 4, spatial=(5, 5)) -> torch.Tensor:
    """fp32 client batches [n, b, C, *spatial] around offset·(1 + U[0, 0.1)) per client and channel.

    symmetric: each client's batch holds centre ± d pairs around an fp32 centre, so that its mean is
    exactly representable: the only error left is the arithmetic's, not the mean's rounding (an fp32
    mean of 1e4 is off by up to 5e-4, which no fp32 backward can undo).
    """
    gen = torch.Generator().manual_seed(seed)
    centre = offset * (1 + 0.1 * torch.rand(n, 1, c, 1, 1, generator=gen))
    if symmetric:
        half = spread * torch.randn(n, b // 2, c, *spatial, generator=gen)
        xs = torch.cat([centre + half, centre - half], dim=1)
        assert torch.equal(xs.double().mean(dim=(1, 3, 4), keepdim=True), centre.double())
    else:
        xs = (centre.double() + spread * torch.randn(n, b, c, *spatial, generator=gen, dtype=torch.float64)).float()
    return xs.to(device)


def _fused_layer_grads(xs: torch.Tensor, weight, bias, up, eps: float):
    """Gradients through a FederatedBatchNorm in a client pass with the kernel: KernelClientBatchNorm."""
    layer = FederatedBatchNorm(xs.shape[2], eps=eps).to(xs.device)
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)
    x = xs.reshape(-1, *xs.shape[2:]).clone().requires_grad_(True)
    with run_bn_pass([layer], BNPass(mode="client", clients=xs.shape[0], backend="kernel")):
        out = layer(x)
    gx, gw, gb = torch.autograd.grad((out.view_as(xs) * up).sum(), [x, layer.weight, layer.bias])
    return gx.view_as(xs), gw, gb


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("offset", [0.0, 1e2, 1e3, 1e4])
def test_fused_backward_is_accurate_at_large_means_with_a_small_spread(device, offset):
    eps, spread = 1e-5, 1e-2
    gen = torch.Generator().manual_seed(1)
    weight, bias = torch.rand(4, generator=gen) + 0.5, torch.randn(4, generator=gen)
    for symmetric in (True, False):
        xs = _offset_batch(offset, spread, symmetric, device)
        up = torch.randn(xs.shape, generator=gen).to(device)
        w, b = weight.to(device), bias.to(device)
        reference = _grads(partial(_per_client_bn, eps=eps), xs.double(), w.double(), b.double(), up.double())
        fp32 = _relative_errors(_grads(partial(_per_client_bn, eps=eps), xs, w, b, up), reference)
        fused = _relative_errors(_fused_layer_grads(xs, w, b, up, eps), reference)
        # At the level of plain fp32 autograd or better, gradient by gradient (dx, dw, db).
        for got, plain in zip(fused, fp32):
            assert got <= 1.5 * plain + 1e-6, (symmetric, fused, fp32)
        if symmetric:
            # With an exact mean the centred backward is exact to fp32 rounding. Measured: <= 2e-7 at every
            # offset, where Σ dy·x − μ·Σ dy reached 1e-2 (dx) and 2e-1 (dw) at 1e4, and fp32 autograd 9e-3 (dx).
            assert max(fused) < 1e-5, fused


@pytest.mark.parametrize("offset", [1e2, 1e4])
def test_kernel_moments_backward_is_accurate_at_large_means(offset):
    xs = _offset_batch(offset, 1e-2, True, "cpu")
    gen = torch.Generator().manual_seed(2)
    w_mean, w_var = torch.randn(3, 4, generator=gen), torch.randn(3, 4, generator=gen) * 1e4

    def loss(x, moments):
        mean, var = moments(x)
        return (mean * w_mean.to(x.dtype)).sum() + (var * w_var.to(x.dtype)).sum()

    x64 = xs.double().requires_grad_(True)
    (reference,) = torch.autograd.grad(loss(x64, lambda x: torch.var_mean(x, dim=(1, 3, 4), correction=0)[::-1]),
                                       [x64])
    x32 = xs.clone().requires_grad_(True)
    (got,) = torch.autograd.grad(loss(x32, KernelMoments.apply), [x32])
    assert float((got.double() - reference).norm() / reference.norm()) < 1e-5


# ---------------------------------------------------------------- (c) FedTAN's merged statistics
N_CLIENTS, F_BYZ = 6, 2
H = N_CLIENTS - F_BYZ
SHAPE, BATCH = (1, 8, 8), 5


def _channel(attack=None, defense="median") -> StatsChannel:
    rule = make_defense(defense, F_BYZ, pre=None if defense == "mean" else "nnm")
    attack = None if attack is None else make_attack(attack)
    return StatsChannel(attack, "both", rule, AttackContext(N_CLIENTS, F_BYZ, defense=rule, channel="stats"))


def test_a_synchronized_pass_returns_each_layers_merged_statistics():
    channel = _channel("sign-flip")
    gen = torch.Generator().manual_seed(4)
    layers = [FederatedBatchNorm(3).double(), FederatedBatchNorm(3).double()]
    conv = nn.Conv2d(3, 3, 1).double()
    x = torch.randn(H * 4, 3, 3, 2, generator=gen, dtype=torch.float64) * 2 + 5
    spec = BNPass(mode="sync", clients=H, backend="torch", record=True, sync=partial(synchronize, channel))
    with run_bn_pass(layers, spec) as record:
        hidden = layers[0](x)
        layers[1](conv(hidden))
    bn = record.bn_stats(H)
    assert len(bn.clients) == 2 and len(bn.merged) == 2
    inputs = [x, conv(hidden).detach()]
    for k, (rows, merged) in enumerate(zip(bn.clients, bn.merged)):
        honest = bnstats.client_stats(inputs[k].view(H, 4, 3, 3, 2))
        torch.testing.assert_close(rows.mean, honest.mean, **TOL64)
        want = synchronize(channel, honest)
        for name in ("mean", "var", "var_unbiased"):
            torch.testing.assert_close(getattr(merged, name), getattr(want, name), **TOL64)
            assert not getattr(merged, name).requires_grad
        assert torch.equal(merged.count, want.count) and merged.clamped == want.clamped
    with run_bn_pass(layers, BNPass(mode="client", clients=H, record=True)) as record:
        layers[1](layers[0](x))
    assert record.bn_stats(H).merged is None  # only a synchronized pass merges in the forward


def _federation(scenario="attack+defense", target="stats", dtype=torch.float64) -> Federation:
    x, y, parts = client_data(H, SHAPE, 20)
    scheme = make_scheme("fedtan", 4)
    torch.manual_seed(0)
    model = make_cnn(SHAPE, 10, 0.25, norm=scheme.make_norm, dropout=0.0).to(dtype)
    sc = make_scenario(scenario, N_CLIENTS, F_BYZ, make_attack("sign-flip"), make_defense("median", F_BYZ, pre="nnm"),
                       target=target)
    return Federation(model, scheme, sc, x.to(dtype), y, parts, batch_size=BATCH, lr=0.1, momentum=0.9, seed=3)


def test_every_pass_engine_returns_the_same_merged_statistics():
    fed = _federation()
    x, y = fed.client_batch(0)
    spec = fed.scheme.bn_pass(0, fed.stats_channel(0, (x, y)))
    results = [batched_pass(fed.model, x, y, spec, H), split_pass(fed.model, x, y, spec, H, backend="torch"),
               loop_pass(fed.model, x, y, spec, H, chunks=1, clients_per_chunk=H)]
    merged = [r.bn.merged for r in results]
    assert all(m is not None and len(m) == len(fed.layers) for m in merged)
    for other in merged[1:]:
        for a, b in zip(merged[0], other):
            torch.testing.assert_close(a.mean, b.mean, rtol=1e-9, atol=1e-11)
            torch.testing.assert_close(a.var_unbiased, b.var_unbiased, rtol=1e-9, atol=1e-11)
            assert torch.equal(a.count, b.count) and a.clamped == b.clamped


def _fake_merged(layers, seed: int = 5) -> list[bnstats.GlobalStats]:
    """Merged statistics unrelated to any client row: the update can only have them from BNStats.merged."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for k, layer in enumerate(layers):
        c = layer.num_features
        mean = torch.randn(c, generator=gen, dtype=torch.float64)
        var = torch.rand(c, generator=gen, dtype=torch.float64) + 1
        out.append(bnstats.GlobalStats(mean, var, 2 * var, torch.tensor(2), clamped=k))
    return out


@pytest.mark.parametrize("local_steps", [1, 2])
def test_fedtan_server_update_takes_the_running_statistics_from_the_merged_statistics(local_steps):
    fed = _federation()
    layers = fed.layers
    x, y = fed.client_batch(0)
    channel = fed.stats_channel(0, (x, y))
    honest = batched_pass(fed.model, x, y, fed.scheme.bn_pass(0, channel), H).bn
    fake = _fake_merged(layers)
    before = [(layer.running_mean.clone(), layer.running_var.clone()) for layer in layers]
    steps = [BNStats(honest.clients, fake)] + [BNStats(honest.clients)] * (local_steps - 1)
    clamped = fed.scheme.server_round(layers, steps, channel, 0)
    assert clamped == sum(range(len(layers)))  # the merged statistics' clamp counts
    keep = 0.9 ** local_steps  # one BN update's momentum per local step of the round
    for layer, (rm, rv), m in zip(layers, before, fake):
        torch.testing.assert_close(layer.running_mean, keep * rm + (1 - keep) * m.mean, **TOL64)
        torch.testing.assert_close(layer.running_var, keep * rv + (1 - keep) * m.var_unbiased, **TOL64)
    with pytest.raises(ValueError, match="needs the merged statistics"):
        fed.scheme.server_update(layers, BNStats(honest.clients), channel, 0)


def test_fedtan_step_updates_the_running_statistics_from_what_the_pass_returned():
    fed = _federation()
    x, y = fed.client_batch(0)
    synced = batched_pass(fed.model, x, y, fed.scheme.bn_pass(0, fed.stats_channel(0, (x, y))), H).bn.merged
    before = [(layer.running_mean.clone(), layer.running_var.clone()) for layer in fed.layers]
    fed.step()
    for layer, (rm, rv), m in zip(fed.layers, before, synced):
        torch.testing.assert_close(layer.running_mean, 0.9 * rm + 0.1 * m.mean, **TOL64)
        torch.testing.assert_close(layer.running_var, 0.9 * rv + 0.1 * m.var_unbiased, **TOL64)
    assert federated_bn_layers(fed.model) == fed.layers and all(layer.active_pass is None for layer in fed.layers)


def test_layer_output_client_stats_carry_the_count_per_client():
    out = LayerOutput(torch.zeros(3, 2), torch.ones(3, 2), 7)
    stats = out.client_stats(3)
    assert torch.equal(stats.count, torch.full((3,), 7, dtype=torch.int64)) and stats.mean.shape == (3, 2)
