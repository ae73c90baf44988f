"""byzbn.fl.fedavg: FedAvg rounds against DSGD (E = 1) and against plain-torch per-client references.

- with E = 1 and the mean, a FedAvg round is DSGD's step, for every scheme and both local engines;
- with E > 1, clients diverge within the round: the update and the server's statistics equal a
  reference that trains one nn.BatchNorm2d model per client (naive: the clients' own BN running
  statistics averaged; fbn: the running statistics as constants and the round's batches merged);
- the attack on the gradient channel attacks the model updates; client momentum is kept across
  rounds unless reset; FixBN's T* counts rounds; FedTAN synchronizes the first local step;
- resuming from a state dict continues bit for bit; the two local engines agree.
"""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from byzbn import stats as bnstats
from byzbn.attacks import AttackContext, make_attack
from byzbn.defenses import make_defense
from byzbn.fl import FedAvgFederation, Federation, make_scenario
from byzbn.nn.models import make_cnn, norm_layers
from byzbn.schemes import make_scheme
from federation_data import client_data




N_CLIENTS, F_BYZ = 6, 2
H = N_CLIENTS - F_BYZ
SHAPE, BATCH, LR, BETA = (1, 8, 8), 5, 0.1, 0.9
TOL64 = dict(rtol=1e-9, atol=1e-11)
SCHEMES = ["naive", "fbn", "fixbn", "fedtan", "hbn", "groupnorm"]


def _data(samples_per_client: int = 20):
    return client_data(H, SHAPE, samples_per_client)


def _scenario(scenario, target, attack, defense):
    return make_scenario(scenario, N_CLIENTS, F_BYZ, make_attack(attack),
                         make_defense(defense, F_BYZ, pre=None if defense == "mean" else "nnm"), target=target)


def _model(scheme, dtype, dropout):
    torch.manual_seed(0)
    return make_cnn(SHAPE, 10, 0.25, norm=scheme.make_norm, dropout=dropout).to(dtype)


def _fedavg(scheme_name, scenario="no-attack", target="stats", attack="sign-flip", defense="mean", rounds=4,
            local_steps=1, engine="loop", dtype=torch.float32, dropout=0.0, reset=False, **params) -> FedAvgFederation:
    x, y, parts = _data()
    scheme = make_scheme(scheme_name, rounds, **params)
    return FedAvgFederation(_model(scheme, dtype, dropout), scheme, _scenario(scenario, target, attack, defense),
                            x.to(dtype), y, parts, batch_size=BATCH, lr=LR, momentum=BETA, seed=3,
                            local_steps=local_steps, reset_client_momentum=reset, local_engine=engine)


def _dsgd(scheme_name, scenario="no-attack", target="stats", attack="sign-flip", defense="mean", steps=4,
          **params) -> Federation:
    x, y, parts = _data()
    scheme = make_scheme(scheme_name, steps, **params)
    return Federation(_model(scheme, torch.float32, 0.0), scheme, _scenario(scenario, target, attack, defense),
                      x, y, parts, batch_size=BATCH, lr=LR, momentum=BETA, seed=3)


def _assert_same_state(a, b, **tol):
    sa, sb = a.model.state_dict(), b.model.state_dict()
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], **(tol or dict(rtol=1e-4, atol=1e-5)), msg=lambda m: f"{key}: {m}")


E1_CASES = [(s, sc, t) for s in SCHEMES for sc, t in (("no-attack", "stats"), ("attack", "stats"), ("attack", "grads"))
            if not (s == "groupnorm" and t == "stats" and sc == "attack")]


@pytest.mark.parametrize("engine", ["loop", "vmap"])
@pytest.mark.parametrize("scheme,scenario,target", E1_CASES)
def test_one_local_step_with_the_mean_equals_dsgd(scheme, scenario, target, engine):
    # sign-flip with the mean: scale-equivariant, so attacking momentums (DSGD) or updates −lr·m (FedAvg) agree.
    dsgd, fedavg = _dsgd(scheme, scenario, target), _fedavg(scheme, scenario, target, engine=engine)
    for _ in range(4):
        assert math.isclose(dsgd.step(), fedavg.step(), rel_tol=1e-5)
    _assert_same_state(dsgd, fedavg)
    assert (fedavg.step_count, fedavg.comm_rounds, fedavg.stats_clamped) == \
        (dsgd.step_count, dsgd.comm_rounds, dsgd.stats_clamped)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_the_loop_and_vmap_engines_agree_over_rounds_of_several_local_steps(scheme):
    # float64: FedTAN's attacked variances amplify float32 rounding (kernel vs torch statistics).
    loop, vmap = (_fedavg(scheme, "attack+defense", "both", "alie", "median", local_steps=3, engine=e,
                          dtype=torch.float64) for e in ("loop", "vmap"))
    for _ in range(2):
        assert math.isclose(loop.step(), vmap.step(), rel_tol=1e-9)
    _assert_same_state(loop, vmap, **TOL64)
    torch.testing.assert_close(loop.momentum, vmap.momentum, **TOL64)
    assert loop.step_count == 6
    assert loop.comm_rounds == vmap.comm_rounds == 2 * loop.scheme.exchanges(0, len(loop.layers))


def _reference_rounds(fed: FedAvgFederation, rounds: int, scheme: str, reset: bool = False, attack=None, defense=None):
    """Plain torch: one nn.BatchNorm2d model per client, E local steps of SGD with client momentum.

    naive: the clients train in train mode (own batch statistics) and the server averages their
    models' BN running statistics. fbn: they normalize with the server's running statistics (eval-mode
    BN) and the server merges each client's round (its E batches' activations) exactly.
    """
    E = fed.local_steps
    ref = make_cnn(SHAPE, 10, 0.25, norm=nn.BatchNorm2d, dropout=0.0).double()
    ref.load_state_dict(fed.model.state_dict(), strict=False)
    momentum = [[torch.zeros_like(p) for p in ref.parameters()] for _ in range(H)]
    for r in range(rounds):
        if reset:
            momentum = [[torch.zeros_like(p) for p in ref.parameters()] for _ in range(H)]
        clients, inputs = [], [[] for _ in range(H)]
        for i in range(H):
            local = copy.deepcopy(ref)
            local.train(scheme == "naive")
            params = list(local.parameters())
            hooks = [layer.register_forward_hook(
                lambda mod, args, out, k=k, i=i: inputs[i].append((k, args[0].detach())))
                for k, layer in enumerate(norm_layers(local))]
            for e in range(E):
                x, y = fed.client_batch(r * E + e)
                xi, yi = x.double().view(H, BATCH, *SHAPE)[i], y.view(H, BATCH)[i]
                grads = torch.autograd.grad(F.nll_loss(local(xi), yi), params)
                with torch.no_grad():
                    for p, m, g in zip(params, momentum[i], grads):
                        m.mul_(BETA).add_(g, alpha=1 - BETA)
                        p.sub_(m, alpha=LR)
            for hook in hooks:
                hook.remove()
            clients.append(local)
        theta = torch.cat([p.detach().reshape(-1) for p in ref.parameters()])
        deltas = torch.stack([torch.cat([p.detach().reshape(-1) for p in c.parameters()]) - theta for c in clients])
        update = deltas.mean(dim=0)
        if attack is not None:
            update = defense(torch.cat([deltas, attack(deltas, AttackContext(N_CLIENTS, F_BYZ, defense))]))
        with torch.no_grad():
            for p, u in zip(ref.parameters(), (theta + update).split([p.numel() for p in ref.parameters()])):
                p.copy_(u.view_as(p))
            for k, layer in enumerate(norm_layers(ref)):
                if scheme == "naive":
                    layer.running_mean.copy_(torch.stack([norm_layers(c)[k].running_mean for c in clients]).mean(0))
                    layer.running_var.copy_(torch.stack([norm_layers(c)[k].running_var for c in clients]).mean(0))
                else:
                    acts = torch.stack([torch.cat([a for kk, a in inputs[i] if kk == k]) for i in range(H)])
                    merged = bnstats.merge_stats(bnstats.client_stats(acts))  # the honest union of the round
                    total = H * acts[0].numel() // acts.shape[2]      # N = (n − f) · (E · count): the honest union
                    m = 1 - (1 - layer.momentum) ** E
                    layer.running_mean.mul_(1 - m).add_(m * merged.mean)
                    layer.running_var.mul_(1 - m).add_(m * merged.var * total / (total - 1))
    return ref


@pytest.mark.parametrize("engine", ["loop", "vmap"])
@pytest.mark.parametrize("scheme,reset", [("naive", False), ("naive", True), ("fbn", False)])
def test_rounds_of_several_local_steps_equal_per_client_plain_torch_training(scheme, reset, engine):
    fed = _fedavg(scheme, local_steps=3, engine=engine, dtype=torch.float64, reset=reset)
    ref = _reference_rounds(fed, 2, scheme, reset)
    for _ in range(2):
        fed.step()
    got, want = fed.model.state_dict(), ref.state_dict()
    for key in got:
        torch.testing.assert_close(got[key], want[key], **TOL64, msg=lambda m: f"{key}: {m}")


def test_maintained_and_reset_client_momentum_differ_from_the_second_round():
    kept, reset = _fedavg("naive", local_steps=2), _fedavg("naive", local_steps=2, reset=True)
    kept.step(), reset.step()
    _assert_same_state(kept, reset, rtol=0, atol=0)  # the first round starts from zero momentum either way
    kept.step(), reset.step()
    assert not torch.equal(kept.params[0], reset.params[0])


def test_an_attack_on_the_gradient_channel_attacks_the_model_updates():
    attack, defense = make_attack("alie"), make_defense("median", F_BYZ, pre="nnm")
    fed = _fedavg("naive", "attack+defense", "grads", "alie", "median", local_steps=2, dtype=torch.float64)
    ref = _reference_rounds(fed, 1, "naive", attack=attack, defense=defense)
    fed.step()
    for got, want in zip(fed.params, ref.parameters()):
        torch.testing.assert_close(got, want, **TOL64)


def test_fixbn_freezes_at_t_star_counted_in_rounds():
    fed = _fedavg("fixbn", "attack", attack="alie", rounds=4, local_steps=2, freeze=0.5)
    assert fed.scheme.freeze_step == 2
    snapshots = []
    for r in range(4):
        specs = [fed.scheme.local_bn_pass(r, e, fed.stats_channel(r, fed.client_batch(2 * r))) for e in range(2)]
        assert [s.mode for s in specs] == ["client" if r < 2 else "global"] * 2
        fed.step()
        snapshots.append([layer.running_var.clone() for layer in fed.layers])
        assert all(layer.active_pass is None for layer in fed.layers)
    assert not torch.equal(snapshots[0][0], snapshots[1][0])
    assert all(torch.equal(a, b) for later in snapshots[2:] for a, b in zip(snapshots[1], later))
    assert fed.step_count == 8 and fed.comm_rounds == 4


def test_fedtan_synchronizes_the_first_local_step_of_each_round():
    fed = _fedavg("fedtan", "attack+defense", "stats", "alie", "median", local_steps=3)
    modes, synced = [], []
    local_bn_pass, server_round = fed.scheme.local_bn_pass, fed.scheme.server_round

    def logged(r, e, channel):
        spec = local_bn_pass(r, e, channel)
        modes.append((r, e, spec.mode))
        return spec

    def kept(layers, steps, channel, r):
        synced.extend(steps[0].merged)
        return server_round(layers, steps, channel, r)

    fed.scheme.local_bn_pass, fed.scheme.server_round = logged, kept
    before = [(layer.running_mean.clone(), layer.running_var.clone()) for layer in fed.layers]
    fed.step()
    assert [(r, e, m) for r, e, m in modes if e == 0] == [(0, 0, "sync")]
    assert {m for _, e, m in modes if e > 0} == {"client"}
    assert len(synced) == len(fed.layers)
    m = 1 - 0.9 ** 3  # the synchronized statistics, three local steps' worth
    for layer, (rm, rv), merged in zip(fed.layers, before, synced):
        torch.testing.assert_close(layer.running_mean, (1 - m) * rm + m * merged.mean)
        torch.testing.assert_close(layer.running_var, (1 - m) * rv + m * merged.var_unbiased)
    assert fed.comm_rounds == 3 * 4 + 1


def test_resuming_a_fedavg_run_from_its_state_dict_continues_bit_for_bit():
    straight = _fedavg("fbn", "attack+defense", "both", "alie", "median", local_steps=2, dropout=0.25)
    for _ in range(4):
        straight.step()
    first = _fedavg("fbn", "attack+defense", "both", "alie", "median", local_steps=2, dropout=0.25)
    for _ in range(2):
        first.step()
    resumed = _fedavg("fbn", "attack+defense", "both", "alie", "median", local_steps=2, dropout=0.25)
    resumed.load_state_dict(copy.deepcopy(first.state_dict()))
    for _ in range(2):
        resumed.step()
    _assert_same_state(straight, resumed, rtol=0, atol=0)
    assert torch.equal(straight.momentum, resumed.momentum) and resumed.step_count == 8


def test_validation():
    x, y, parts = _data()
    central = make_scheme("centralized", 3)
    with pytest.raises(ValueError, match="one-machine reference"):
        FedAvgFederation(_model(central, torch.float32, 0.0), central, _scenario("no-attack", "stats", "alie", "mean"),
                         x, y, parts, batch_size=BATCH, lr=LR)
    with pytest.raises(ValueError, match="local_steps=0 is out of range"):
        _fedavg("fbn", local_steps=0)
    with pytest.raises(ValueError, match="local_engine must be one of"):
        _fedavg("fbn", engine="threads")
    with pytest.raises(ValueError, match="engine must be one of"):
        _fedavg("fbn").step("batched")
