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

from functools import partial

from byzbn import stats as bnstats
from byzbn.attacks import AttackContext, attack_stats, make_attack
from byzbn.defenses import make_defense
from byzbn.fl.client_grads import client_split_grads
from byzbn.fl.dsgd import Federation
from byzbn.fl.passes import batched_pass, loop_pass, split_pass
from byzbn.fl.scenario import make_scenario
from byzbn.nn import BNPass, FederatedBatchNorm, HybridBatchNorm, run_bn_pass
from byzbn.nn.models import make_cnn, norm_layers
from byzbn.schemes import StatsChannel, make_scheme, synchronize
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


def _channel(attack=None, defense="mean", f=F_BYZ, fields="both", n=None) -> StatsChannel:
    rule = make_defense(defense, f, pre=None if defense == "mean" else "nnm")
    n = H + f if n is None else n
    return StatsChannel(attack, fields, rule, AttackContext(n, f, defense=rule, channel="stats"))


def _sync_pass(channel: StatsChannel, backend: str = "torch", clients: int = H) -> BNPass:
    return BNPass(mode="sync", clients=clients, backend=backend, record=True, sync=partial(synchronize, channel))


def _grads(out, up, tensors):
    return torch.autograd.grad((out * up).sum(), tensors)


# ---------------------------------------------------------------- fedtan
@pytest.mark.parametrize("f", [0, F_BYZ])
@pytest.mark.parametrize("backend", ["kernel", "torch"])
def test_fedtan_layer_with_the_mean_is_bn_on_the_union_of_the_honest_batches(f, backend):
    layer, x = _layer(3), _batch(H, 4, 3)
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    with run_bn_pass([layer], _sync_pass(_channel(f=f), backend)) as record:
        out = layer(x1)
    ref = F.batch_norm(x2, None, None, layer.weight, layer.bias, True, 0.0, layer.eps)
    torch.testing.assert_close(out, ref, **TOL64)
    up = torch.randn_like(out)
    # The no-op rows of the f Byzantine clients are functions of the honest rows: exact gradients too.
    for a, b in zip(_grads(out, up, [x1, layer.weight, layer.bias]), _grads(ref, up, [x2, layer.weight, layer.bias])):
        torch.testing.assert_close(a, b, **TOL64)
    exact = bnstats.merge_stats(bnstats.client_stats(x.view(H, 4, 3, 3, 2)))
    merged = record.output(layer).merged
    torch.testing.assert_close(merged.mean, exact.mean, **TOL64)
    torch.testing.assert_close(merged.var, exact.var, **TOL64)
    assert int(merged.count) == int(exact.count) == H * 4 * 6 and not merged.mean.requires_grad  # the honest union
    assert merged is record.bn_stats(H).merged[0]


@pytest.mark.parametrize("attack,defense,fields", [("sign-flip", "median", "mean"), ("alie", "trimmed-mean", "both"),
                                                   ("optimal-alie", "median", "var"), ("alie", "mean", "both")])
def test_fedtan_layer_normalizes_with_the_robust_merge_of_the_attacked_layer_submission(attack, defense, fields):
    channel = _channel(make_attack(attack), defense, fields=fields)
    layer, x = _layer(3), _batch(H, 4, 3, seed=5)
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    with run_bn_pass([layer], _sync_pass(channel)) as record:
        out = layer(x1)
    # Reference: the attack's rows from the honest rows as constants, byzbn.stats' robust merge.
    var, mean = torch.var_mean(x2.view(H, 4, 3, 3, 2), dim=(1, 3, 4), correction=0)
    honest = bnstats.ClientStats(mean, var, torch.full((H,), 24, dtype=torch.int64))
    rows = attack_stats(bnstats.ClientStats(mean.detach(), var.detach(), honest.count), channel.attack,
                        channel.context, fields=fields)
    quiet = attack_stats(honest, None, channel.context)  # the no-op rows, with their gradients
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
    recorded = record.output(layer).merged
    torch.testing.assert_close(recorded.mean, merged.mean.detach(), **TOL64)
    assert recorded.clamped == merged.clamped


@pytest.mark.parametrize("attack", ["nan", "inf"])
def test_a_fault_attack_on_fedtan_is_filtered_forward_and_backward(attack):
    layer, x = _layer(3), _batch(H, 4, 3, seed=2).requires_grad_(True)
    with run_bn_pass([layer], _sync_pass(_channel(make_attack(attack), "median"))):
        out = layer(x)
    (gx,) = torch.autograd.grad(out.pow(2).sum(), [x])
    assert torch.isfinite(out).all() and torch.isfinite(gx).all()


def test_synchronize_without_byzantine_rows_is_the_stats_robust_merge_differentiably():
    # synchronize replaced schemes_extra.differentiable_robust_merge: byzbn.stats.robust_merge_stats is
    # itself differentiable now, and a channel with f = 0 submits the honest rows as they are.
    gen = torch.Generator().manual_seed(3)
    rows = bnstats.ClientStats(torch.randn(7, 5, generator=gen, dtype=torch.float64),
                               torch.rand(7, 5, generator=gen, dtype=torch.float64) - 0.2,
                               torch.full((7,), 9, dtype=torch.int64))
    rows.var[:, -1] -= 2.0  # a channel whose merged variance is negative: clamped
    for rule in (make_defense("median", 3, pre="nnm"), make_defense("mean", 3, pre=None)):
        channel = StatsChannel(None, "both", rule, AttackContext(7, 0, defense=rule))
        mean, var = rows.mean.clone().requires_grad_(True), rows.var.clone().requires_grad_(True)
        got = synchronize(channel, bnstats.ClientStats(mean, var, rows.count))
        want = bnstats.robust_merge_stats(rows, rule)
        for name in ("mean", "var", "var_unbiased"):
            torch.testing.assert_close(getattr(got, name), getattr(want, name), **TOL64)
        assert (int(got.count), got.clamped) == (int(want.count), want.clamped) and got.clamped > 0
        g_mean, g_var = torch.autograd.grad(got.mean.sum() + got.var.sum(), [mean, var])
        assert torch.isfinite(g_mean).all() and torch.isfinite(g_var).all() and g_var.abs().sum() > 0
        if rule.name == "mean":
            # The two-phase merge with the mean, differentiated: d μ̂/d μ_j = 1/n; on a channel whose
            # variance is kept, d v̂/d v_j = 1/n and d v̂/d μ_j = 2(μ_j − μ̂)/n; a clamped one is constant.
            kept = want.var > 0
            deviation = 2 * (rows.mean - want.mean) / 7
            torch.testing.assert_close(g_mean, 1 / 7 + torch.where(kept, deviation, torch.zeros_like(deviation)),
                                       **TOL64)
            torch.testing.assert_close(g_var, kept.expand(7, -1).to(g_var.dtype) / 7, **TOL64)


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


def _step_pass(fed: Federation, step: int):
    """(x, y, the step's channel, the scheme's BNPass) of DSGD step `step`, as Federation.step builds them."""
    x, y = fed.client_batch(step)
    channel = fed.stats_channel(step, (x, y))
    return x, y, channel, fed.scheme.bn_pass(step, channel)


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
    x, y, _, spec = _step_pass(fed, 0)
    synced = batched_pass(fed.model, x, y, spec, H).bn.merged  # what step 0's pass returns (sign-flip: no noise)
    assert synced is not None and len(synced) == len(fed.layers)
    fed.step()
    for layer, (rm, rv), merged in zip(fed.layers, before, synced):
        count = merged.count.to(merged.var.dtype)
        torch.testing.assert_close(layer.running_mean, 0.9 * rm + 0.1 * merged.mean)
        torch.testing.assert_close(layer.running_var, 0.9 * rv + 0.1 * merged.var * count / (count - 1))


def test_split_gradients_of_fedtan_average_to_the_federation_gradient():
    fed = _federation("fedtan", "attack", "grads", attack="sign-flip", dtype=torch.float64)
    x, y, _, spec = _step_pass(fed, 0)
    split = split_pass(fed.model, x, y, spec, H, backend="torch")
    whole = batched_pass(fed.model, x, y, spec, H)
    flat = torch.cat([g.reshape(-1) for g in whole.mean_grads])
    torch.testing.assert_close(split.client_grads.mean(dim=0), flat, **TOL64)
    assert not torch.allclose(split.client_grads[0], split.client_grads[1])


# ---------------------------------------------------------------- split gradients
@pytest.mark.parametrize("scheme", ["naive", "fbn", "groupnorm"])
def test_split_gradients_of_uncoupled_clients_are_their_own_gradients(scheme):
    fed = _federation(scheme, "attack", "grads", dtype=torch.float64)
    if scheme == "groupnorm":
        with pytest.raises(ValueError, match="got a GroupNorm"):
            client_split_grads(fed.model, fed.params, lambda: fed.model(torch.zeros(2, *SHAPE)).sum(), 2, BNPass())
        return
    x, y, _, spec = _step_pass(fed, 1)
    loop = loop_pass(fed.model, x, y, spec, H)
    split = split_pass(fed.model, x, y, spec, H)
    torch.testing.assert_close(split.client_grads, loop.client_grads, rtol=1e-9, atol=1e-11)
    # x̂ was kept for the split only inside its pass: nothing the pass set survives it.
    assert all(layer.active_pass is None and not layer.current_pass.keep_normalized for layer in fed.layers)
    _, _, record = client_split_grads(fed.model, fed.params, lambda: F.cross_entropy(fed.model(x), y), H,
                                      spec.replace(clients=H))
    assert all(o.normalized is not None for o in record.outputs()) and len(record.outputs()) == len(fed.layers)


def test_split_gradients_validate():
    model = nn.Sequential(nn.Linear(3, 2))
    with pytest.raises(ValueError, match="clients must be"):
        client_split_grads(model, list(model.parameters()), lambda: model(torch.zeros(2, 3)).sum(), 0, BNPass())
    other = nn.Linear(2, 2)
    with pytest.raises(ValueError, match=r"params\[0\] is not a parameter"):
        client_split_grads(model, [other.weight], lambda: model(torch.zeros(2, 3)).sum(), 2, BNPass(clients=2))


# ---------------------------------------------------------------- hbn
@pytest.mark.parametrize("limit,mode", [(50.0, "client"), (-50.0, "global")])
def test_hbn_mix_limits_are_naive_and_fbn_normalizations(limit, mode):
    hybrid, plain, x = _layer(3, HybridBatchNorm), _layer(3), _batch(4, 5, 3)
    with torch.no_grad():
        hybrid.mix_logit.fill_(limit)  # a = sigmoid(±50) is 1 or 0 in float64
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    with run_bn_pass([hybrid], BNPass(mode="hybrid", clients=4)):
        out = hybrid(x1)
    with run_bn_pass([plain], BNPass(mode=mode, clients=4, backend="torch")):
        ref = plain(x2)
    torch.testing.assert_close(out, ref, **TOL64)
    up = torch.randn_like(out)
    for a, b in zip(_grads(out, up, [x1, hybrid.weight, hybrid.bias]), _grads(ref, up, [x2, plain.weight, plain.bias])):
        torch.testing.assert_close(a, b, **TOL64)


def test_hbn_starts_halfway_learns_its_mix_and_evaluates_with_the_global_statistics():
    layer, x = _layer(3, HybridBatchNorm), _batch(4, 5, 3)
    assert torch.equal(torch.sigmoid(layer.mix_logit), torch.full((3,), 0.5, dtype=torch.float64))
    var, mean = torch.var_mean(x.view(4, 5, 3, 3, 2), dim=(1, 3, 4), correction=0)
    mix_mean = 0.5 * layer.running_mean + 0.5 * mean
    mix_var = 0.5 * layer.running_var + 0.5 * var
    ref = ((x.view(4, 5, 3, 3, 2) - mix_mean.view(4, 1, 3, 1, 1)) / torch.sqrt(mix_var.view(4, 1, 3, 1, 1) + layer.eps)
           * layer.weight.view(1, 1, 3, 1, 1) + layer.bias.view(1, 1, 3, 1, 1)).view_as(x)
    with run_bn_pass([layer], BNPass(mode="hybrid", clients=4)):
        out = layer(x)
    torch.testing.assert_close(out, ref, **TOL64)
    (g,) = torch.autograd.grad(out.pow(2).sum(), [layer.mix_logit])
    assert (g != 0).all()
    layer.eval()
    torch.testing.assert_close(layer(x), F.batch_norm(x, layer.running_mean, layer.running_var, layer.weight,
                                                      layer.bias, False, 0.0, layer.eps), **TOL64)
    plain = FederatedBatchNorm(3)
    with pytest.raises(ValueError, match="needs a HybridBatchNorm"), run_bn_pass([plain], BNPass(mode="hybrid")):
        plain(x.float())


def test_hbn_outside_a_pass_is_its_hybrid_normalization():
    # A HybridBatchNorm's default pass is the hybrid one: used as a plain module it mixes, a FederatedBatchNorm
    # normalizes with its batch statistics.
    layer, x = _layer(3, HybridBatchNorm), _batch(1, 6, 3)
    assert layer.current_pass == BNPass(mode="hybrid") and FederatedBatchNorm(3).current_pass == BNPass()
    with run_bn_pass([layer], BNPass(mode="hybrid")):
        inside = layer(x)
    torch.testing.assert_close(layer(x), inside, rtol=0, atol=0)


def test_hbn_server_statistics_are_fbns_merge():
    hbn, fbn = _federation("hbn", "attack+defense", attack="alie", defense="median"), \
        _federation("fbn", "attack+defense", attack="alie", defense="median")
    x, y = hbn.client_batch(0)
    with run_bn_pass(hbn.layers, BNPass(mode="hybrid", clients=H, record=True)) as record:
        hbn.model(x)
    honest = record.bn_stats(H)
    for fed in (hbn, fbn):
        fed.scheme.server_update(fed.layers, honest, fed.stats_channel(0, (x, y)), 0)
    for a, b in zip(hbn.layers, fbn.layers):
        torch.testing.assert_close(a.running_mean, b.running_mean, rtol=0, atol=0)
        torch.testing.assert_close(a.running_var, b.running_var, rtol=0, atol=0)
    names = [name for name, _ in hbn.model.named_parameters()]
    assert sum(name.endswith("mix_logit") for name in names) == len(hbn.layers)  # learnable, one per layer


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
