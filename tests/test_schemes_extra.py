"""FedTAN, Hybrid BN, GroupNorm, FixBN's freeze, and the split per-client gradients, against references.

- fedtan with the mean and no attack normalizes exactly like BN on the union of the honest batches
  (layer outputs, gradients, and whole DSGD steps against plain nn.BatchNorm2d); with an attack and a
  defense, each layer normalizes with the robust merge of that layer's attacked submission;
- hbn with a → 1 is naive BN's per-client normalization, with a → 0 FBN's global statistics;
- fixbn stops updating the statistics at T* and trains with the frozen ones after it;
- client_split_grads gives each client's own gradient when the scheme does not couple the clients,
  and rows whose mean is the federation's gradient when it does.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from byzbn import stats as bnstats
from byzbn.attacks import attack_stats, make_attack
from byzbn.client_grads import client_split_grads
from byzbn.defenses import make_defense
from byzbn.federation import Federation, make_scenario
from byzbn.models import make_cnn, norm_layers
from byzbn.norm import FederatedBatchNorm, HybridBatchNorm, configure
from byzbn.schemes import StatsChannel, make_scheme
from byzbn.schemes_extra import differentiable_robust_merge, synchronize
from federation_data import client_data




N_CLIENTS, F_BYZ = 6, 2
H = N_CLIENTS - F_BYZ
SHAPE, BATCH = (1, 8, 8), 5
TOL64 = dict(rtol=1e-10, atol=1e-12)


def _layer(c: int, cls=FederatedBatchNorm, seed: int = 0) -> FederatedBatchNorm:
    gen = torch.Generator().manual_seed(seed)
    layer = cls(c).double()
    with torch.no_grad():
        layer.weight.copy_(torch.rand(c, generator=gen, dtype=torch.float64) + 0.5)
        layer.bias.copy_(torch.randn(c, generator=gen, dtype=torch.float64))
        layer.running_mean.copy_(torch.randn(c, generator=gen, dtype=torch.float64))
        layer.running_var.copy_(torch.rand(c, generator=gen, dtype=torch.float64) + 0.5)
    return layer


def _batch(clients: int, b: int, c: int, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    offsets = 3 * torch.randn(clients, 1, c, 1, 1, generator=gen, dtype=torch.float64)
    return (torch.randn(clients, b, c, 3, 2, generator=gen, dtype=torch.float64) * 2 + offsets).reshape(-1, c, 3, 2)


def _channel(attack=None, defense="mean", f=F_BYZ, fields="both") -> StatsChannel:
    rule = make_defense(defense, f, pre=None if defense == "mean" else "nnm")
    return StatsChannel(H + f, f, attack, fields, rule)


def _sync_layer(channel: StatsChannel, c: int = 3) -> FederatedBatchNorm:
    layer = _layer(c)
    configure([layer], mode="sync", clients=H, sync=lambda s: synchronize(channel, s), stats_backend="torch")
    return layer


def _grads(out, up, tensors):
    return torch.autograd.grad((out * up).sum(), tensors)


# ---------------------------------------------------------------- fedtan
@pytest.mark.parametrize("f", [0, F_BYZ])
@pytest.mark.parametrize("backend", ["kernel", "torch"])
def test_fedtan_layer_with_the_mean_is_bn_on_the_union_of_the_honest_batches(f, backend):
    layer, x = _sync_layer(_channel(f=f)), _batch(H, 4, 3)
    configure([layer], stats_backend=backend)
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out = layer(x1)
    ref = F.batch_norm(x2, None, None, layer.weight, layer.bias, True, 0.0, layer.eps)
    torch.testing.assert_close(out, ref, **TOL64)
    up = torch.randn_like(out)
    # The no-op rows of the f Byzantine clients are functions of the honest rows: exact gradients too.
    for a, b in zip(_grads(out, up, [x1, layer.weight, layer.bias]), _grads(ref, up, [x2, layer.weight, layer.bias])):
        torch.testing.assert_close(a, b, **TOL64)
    exact = bnstats.merge_stats(bnstats.client_stats(x.view(H, 4, 3, 3, 2)))
    torch.testing.assert_close(layer.sync_stats.mean, exact.mean, **TOL64)
    torch.testing.assert_close(layer.sync_stats.var, exact.var, **TOL64)
    assert layer.sync_stats.count == (H + f) * 4 * 6 and not layer.sync_stats.mean.requires_grad


@pytest.mark.parametrize("attack,defense,fields", [("sign-flip", "median", "mean"), ("alie", "trimmed-mean", "both"),
                                                   ("optimal-alie", "median", "var"), ("alie", "mean", "both")])
def test_fedtan_layer_normalizes_with_the_robust_merge_of_the_attacked_layer_submission(attack, defense, fields):
    channel = _channel(make_attack(attack), defense, fields=fields)
    layer, x = _sync_layer(channel), _batch(H, 4, 3, seed=5)
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out = layer(x1)
    # Reference: the attack's rows from the honest rows as constants, byzbn.stats' robust merge.
    var, mean = torch.var_mean(x2.view(H, 4, 3, 3, 2), dim=(1, 3, 4), correction=0)
    honest = bnstats.ClientStats(mean, var, torch.full((H,), 24, dtype=torch.int64))
    rows = attack_stats(bnstats.ClientStats(mean.detach(), var.detach(), honest.count), channel.attack,
                        N_CLIENTS, F_BYZ, fields=fields, defense=channel.aggregator)
    quiet = attack_stats(honest, None, N_CLIENTS, F_BYZ)  # the no-op rows, with their gradients
    targeted = {"mean", "var"} if fields == "both" else {fields}
    rows = bnstats.ClientStats(torch.cat([mean, (rows if "mean" in targeted else quiet).mean[H:]]),
                               torch.cat([var, (rows if "var" in targeted else quiet).var[H:]]), rows.count)
    merged = bnstats.robust_merge_stats(rows, channel.aggregator)
    ref = (x2 - merged.mean.view(1, 3, 1, 1)) / torch.sqrt(merged.var.view(1, 3, 1, 1) + layer.eps) \
        * layer.weight.view(1, 3, 1, 1) + layer.bias.view(1, 3, 1, 1)
    torch.testing.assert_close(out, ref, **TOL64)
    up = torch.randn_like(out)
    for a, b in zip(_grads(out, up, [x1, layer.weight]), _grads(ref, up, [x2, layer.weight])):
        torch.testing.assert_close(a, b, **TOL64)
    torch.testing.assert_close(layer.sync_stats.mean, merged.mean.detach(), **TOL64)
    assert layer.sync_stats.clamped == merged.clamped


@pytest.mark.parametrize("attack", ["nan", "inf"])
def test_a_fault_attack_on_fedtan_is_filtered_forward_and_backward(attack):
    layer, x = _sync_layer(_channel(make_attack(attack), "median")), _batch(H, 4, 3, seed=2).requires_grad_(True)
    out = layer(x)
    (gx,) = torch.autograd.grad(out.pow(2).sum(), [x])
    assert torch.isfinite(out).all() and torch.isfinite(gx).all()


def test_differentiable_robust_merge_equals_the_stats_robust_merge():
    gen = torch.Generator().manual_seed(3)
    rows = bnstats.ClientStats(torch.randn(7, 5, generator=gen, dtype=torch.float64),
                               torch.rand(7, 5, generator=gen, dtype=torch.float64) - 0.2,  # some clamps
                               torch.full((7,), 9, dtype=torch.int64))
    for rule in (make_defense("median", 3, pre="nnm"), make_defense("mean", 3, pre=None)):
        got, want = differentiable_robust_merge(rows, rule), bnstats.robust_merge_stats(rows, rule)
        for name in ("mean", "var", "var_unbiased"):
            torch.testing.assert_close(getattr(got, name), getattr(want, name), **TOL64)
        assert (got.count, got.clamped) == (want.count, want.clamped)


def _data(samples_per_client: int = 20):
    return client_data(H, SHAPE, samples_per_client)


def _federation(scheme_name, scenario="no-attack", target="stats", attack="alie", defense="mean", steps=4,
                dtype=torch.float32, **params) -> Federation:
    x, y, parts = _data()
    scheme = make_scheme(scheme_name, steps, **params)
    torch.manual_seed(0)
    model = make_cnn(SHAPE, 10, 0.25, norm=scheme.make_norm, dropout=0.0).to(dtype)
    sc = make_scenario(scenario, N_CLIENTS, F_BYZ, make_attack(attack),
                       make_defense(defense, F_BYZ, pre=None if defense == "mean" else "nnm"), target=target)
    return Federation(model, scheme, sc, x.to(dtype), y, parts, batch_size=BATCH, lr=0.1, momentum=0.9, seed=3)


def test_fedtan_training_without_attack_is_plain_batchnorm_on_the_union():
    fed = _federation("fedtan", dtype=torch.float64)
    torch.manual_seed(0)
    ref = make_cnn(SHAPE, 10, 0.25, norm=nn.BatchNorm2d, dropout=0.0).double()
    ref.load_state_dict(fed.model.state_dict(), strict=False)
    params = list(ref.parameters())
    momentum = [torch.zeros_like(p) for p in params]
    for t in range(3):
        x, y = fed.client_batch(t)
        ref.train()
        loss = F.nll_loss(ref(x), y)
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, m, g in zip(params, momentum, grads):
                m.mul_(0.9).add_(g, alpha=0.1)
                p.sub_(m, alpha=0.1)
        assert abs(fed.step() - float(loss.detach())) < 1e-10
    got, want = fed.model.state_dict(), ref.state_dict()
    for key in got:
        if "running_var" in key:  # unbiased with FBN's N = n·count where BatchNorm2d has h·count
            continue
        torch.testing.assert_close(got[key], want[key], **TOL64, msg=lambda m: f"{key}: {m}")
    assert fed.comm_rounds == 3 * (3 * 4 + 1)  # 3 exchanges per BN layer (4 of them) + the gradients


def test_fedtan_running_statistics_follow_the_synchronized_statistics():
    fed = _federation("fedtan", "attack+defense", attack="sign-flip", defense="median")
    before = [(layer.running_mean.clone(), layer.running_var.clone()) for layer in fed.layers]
    fed.step()
    for layer, (rm, rv) in zip(fed.layers, before):
        merged = layer.sync_stats
        torch.testing.assert_close(layer.running_mean, 0.9 * rm + 0.1 * merged.mean)
        torch.testing.assert_close(layer.running_var, 0.9 * rv + 0.1 * merged.var * merged.count / (merged.count - 1))


def test_split_gradients_of_fedtan_average_to_the_federation_gradient():
    fed = _federation("fedtan", "attack", "grads", attack="sign-flip", dtype=torch.float64)
    x, y = fed.client_batch(0)
    fed.scheme.prepare(fed.layers, 0)
    split = fed.split_pass(x, y, stats_backend="torch")
    fed.per_client = False
    whole = fed.batched_pass(x, y)
    flat = torch.cat([g.reshape(-1) for g in whole.mean_grads])
    torch.testing.assert_close(split.client_grads.mean(dim=0), flat, **TOL64)
    assert not torch.allclose(split.client_grads[0], split.client_grads[1])


# ---------------------------------------------------------------- split gradients
@pytest.mark.parametrize("scheme", ["naive", "fbn", "groupnorm"])
def test_split_gradients_of_uncoupled_clients_are_their_own_gradients(scheme):
    fed = _federation(scheme, "attack", "grads", dtype=torch.float64)
    if scheme == "groupnorm":
        with pytest.raises(ValueError, match="got a GroupNorm"):
            client_split_grads(fed.model, fed.params, lambda: fed.model(torch.zeros(2, *SHAPE)).sum(), 2)
        return
    x, y = fed.client_batch(1)
    fed.scheme.prepare(fed.layers, 1)
    loop = fed.loop_pass(x, y)
    split = fed.split_pass(x, y)
    torch.testing.assert_close(split.client_grads, loop.client_grads, rtol=1e-9, atol=1e-11)
    assert all(layer.normalized is None and not layer.keep_normalized for layer in fed.layers)


def test_split_gradients_validate():
    model = nn.Sequential(nn.Linear(3, 2))
    with pytest.raises(ValueError, match="clients must be"):
        client_split_grads(model, list(model.parameters()), lambda: model(torch.zeros(2, 3)).sum(), 0)
    other = nn.Linear(2, 2)
    with pytest.raises(ValueError, match=r"params\[0\] is not a parameter"):
        client_split_grads(model, [other.weight], lambda: model(torch.zeros(2, 3)).sum(), 2)


# ---------------------------------------------------------------- hbn
@pytest.mark.parametrize("limit,mode", [(50.0, "client"), (-50.0, "global")])
def test_hbn_mix_limits_are_naive_and_fbn_normalizations(limit, mode):
    hybrid, plain, x = _layer(3, HybridBatchNorm), _layer(3), _batch(4, 5, 3)
    with torch.no_grad():
        hybrid.mix_logit.fill_(limit)  # a = sigmoid(±50) is 1 or 0 in float64
    configure([hybrid], mode="hybrid", clients=4)
    configure([plain], mode=mode, clients=4, stats_backend="torch")
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out, ref = hybrid(x1), plain(x2)
    torch.testing.assert_close(out, ref, **TOL64)
    up = torch.randn_like(out)
    for a, b in zip(_grads(out, up, [x1, hybrid.weight, hybrid.bias]), _grads(ref, up, [x2, plain.weight, plain.bias])):
        torch.testing.assert_close(a, b, **TOL64)


def test_hbn_starts_halfway_learns_its_mix_and_evaluates_with_the_global_statistics():
    layer, x = _layer(3, HybridBatchNorm), _batch(4, 5, 3)
    assert torch.equal(torch.sigmoid(layer.mix_logit), torch.full((3,), 0.5, dtype=torch.float64))
    configure([layer], mode="hybrid", clients=4)
    var, mean = torch.var_mean(x.view(4, 5, 3, 3, 2), dim=(1, 3, 4), correction=0)
    mix_mean = 0.5 * layer.running_mean + 0.5 * mean
    mix_var = 0.5 * layer.running_var + 0.5 * var
    ref = ((x.view(4, 5, 3, 3, 2) - mix_mean.view(4, 1, 3, 1, 1)) / torch.sqrt(mix_var.view(4, 1, 3, 1, 1) + layer.eps)
           * layer.weight.view(1, 1, 3, 1, 1) + layer.bias.view(1, 1, 3, 1, 1)).view_as(x)
    out = layer(x)
    torch.testing.assert_close(out, ref, **TOL64)
    (g,) = torch.autograd.grad(out.pow(2).sum(), [layer.mix_logit])
    assert (g != 0).all()
    layer.eval()
    torch.testing.assert_close(layer(x), F.batch_norm(x, layer.running_mean, layer.running_var, layer.weight,
                                                      layer.bias, False, 0.0, layer.eps), **TOL64)
    plain = FederatedBatchNorm(3)
    configure([plain], mode="hybrid")
    with pytest.raises(ValueError, match="needs a HybridBatchNorm"):
        plain(x.float())


def test_hbn_server_statistics_are_fbns_merge():
    hbn, fbn = _federation("hbn", "attack+defense", attack="alie", defense="median"), \
        _federation("fbn", "attack+defense", attack="alie", defense="median")
    x, _ = hbn.client_batch(0)
    sink: list = []
    configure(hbn.layers, mode="hybrid", clients=H, record=True, sink=sink)
    hbn.model(x)
    honest = hbn._collect(sink, H)
    for fed in (hbn, fbn):
        fed.scheme.server_update(fed.layers, honest, fed.scenario.stats_channel(), 0)
    for a, b in zip(hbn.layers, fbn.layers):
        torch.testing.assert_close(a.running_mean, b.running_mean, rtol=0, atol=0)
        torch.testing.assert_close(a.running_var, b.running_var, rtol=0, atol=0)
    assert sum(name.endswith("mix_logit") for name in hbn.names) == len(hbn.layers)  # learnable, one per layer


# ---------------------------------------------------------------- groupnorm
def test_groupnorm_scheme_uses_groupnorm_and_exchanges_no_statistics():
    scheme = make_scheme("groupnorm", 3)
    norm = scheme.make_norm(8)
    assert isinstance(norm, nn.GroupNorm) and norm.num_groups == 2 and not scheme.has_stats
    assert not scheme.submits_stats(0) and make_scheme("groupnorm", 3, groups=4).make_norm(8).num_groups == 4
    with pytest.raises(ValueError, match="groups=3 does not divide a normalization layer's 8 channels"):
        make_scheme("groupnorm", 3, groups=3).make_norm(8)
    with pytest.raises(ValueError, match="groups=0 is out of range"):
        make_scheme("groupnorm", 3, groups=0)
    fed = _federation("groupnorm", "attack+defense", "grads", defense="median")
    assert fed.layers == [] and all(isinstance(m, nn.GroupNorm) for m in norm_layers(fed.model))
    for _ in range(2):
        fed.step()
    assert fed.stats_clamped == 0 and fed.comm_rounds == 2 and fed.non_finite() is None


# ---------------------------------------------------------------- fixbn
def test_fixbn_trains_with_the_frozen_statistics_after_t_star():
    fed = _federation("fixbn", "attack", attack="sign-flip", steps=4, freeze=0.5)
    for _ in range(2):
        fed.step()
    frozen = [(layer.running_mean.clone(), layer.running_var.clone()) for layer in fed.layers]
    seen: list = []

    def keep(mod, args, out):
        seen.append((fed.layers.index(mod), args[0].detach(), out.detach(), mod.weight.detach().clone(),
                     mod.bias.detach().clone()))

    hooks = [layer.register_forward_hook(keep) for layer in fed.layers]
    for _ in range(2):
        fed.step()
    for hook in hooks:
        hook.remove()
    assert len(seen) == 2 * len(fed.layers)
    for k, x, out, weight, bias in seen:
        ref = F.batch_norm(x, frozen[k][0], frozen[k][1], weight, bias, False, 0.0, fed.layers[k].eps)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for layer, (rm, rv) in zip(fed.layers, frozen):
        assert torch.equal(layer.running_mean, rm) and torch.equal(layer.running_var, rv)
