"""label-flip: data poisoning. The Byzantine clients hold data, train on labels C − 1 − y, and
submit what that training genuinely gives: their momentums (FedAvg: updates) on the gradient channel,
their genuine BN statistics on the statistics channel. Checked against plain-torch references."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from byzbn.attacks import AttackContext, make_attack, poisons_data
from byzbn.defenses import make_defense
from byzbn.fl import FedAvgFederation, Federation, make_scenario, seeds
from byzbn.fl.client import client_batch_indices
from byzbn.nn.models import make_cnn, norm_layers
from byzbn.schemes import make_scheme
from federation_data import client_data

N, F_BYZ = 5, 2
H = N - F_BYZ
SHAPE, BATCH, LR, BETA = (1, 8, 8), 4, 0.1, 0.9


def test_poison_flips_labels_and_the_attack_needs_the_clients_own_rows():
    attack = make_attack("label-flip")
    assert poisons_data(attack) and not poisons_data(make_attack("sign-flip"))
    y = torch.tensor([0, 3, 9, 5])
    assert torch.equal(attack.poison(y, 10), torch.tensor([9, 6, 0, 4]))
    assert torch.equal(y, torch.tensor([0, 3, 9, 5]))  # not mutated
    with pytest.raises(ValueError, match="labels must lie in"):
        attack.poison(torch.tensor([10]), 10)
    honest = torch.randn(H, 7)
    with pytest.raises(ValueError, match="needs the rows they computed"):
        attack(honest, AttackContext(N, F_BYZ))
    own = torch.randn(F_BYZ, 7)
    assert torch.equal(attack(honest, AttackContext(N, F_BYZ, own_rows=own)), own)


def _federation(scheme_name, target, algorithm="dsgd", scenario="attack", defense="mean", dtype=torch.float64):
    x, y, parts = client_data(N, SHAPE, 12)
    scheme = make_scheme(scheme_name, 4)
    torch.manual_seed(0)
    model = make_cnn(SHAPE, 10, 0.25, norm=scheme.make_norm, dropout=0.0).to(dtype)
    sc = make_scenario(scenario, N, F_BYZ, make_attack("label-flip"),
                       make_defense(defense, F_BYZ, pre=None if defense == "mean" else "nnm"), target=target)
    common = dict(batch_size=BATCH, lr=LR, momentum=BETA, seed=2)
    if algorithm == "fedavg":
        return FedAvgFederation(model, scheme, sc, x.to(dtype), y, parts, local_steps=1, **common)
    return Federation(model, scheme, sc, x.to(dtype), y, parts, **common)


def _reference(fed):
    """A plain-BN copy of the model and each of the n clients' (x, y) at step 0, Byzantine labels flipped."""
    ref = make_cnn(SHAPE, 10, 0.25, norm=nn.BatchNorm2d, dropout=0.0).double()
    ref.load_state_dict(fed.model.state_dict(), strict=False)
    x, y = fed.client_batch(0)
    return ref, list(zip(x.chunk(N), y.chunk(N)))


def test_the_byzantine_clients_batches_come_from_their_own_shares_with_flipped_labels():
    fed = _federation("naive", "grads")
    assert fed.clients == N and fed.client_indices.shape[0] == N
    x, y = fed.client_batch(0)
    assert x.shape[0] == N * BATCH
    for i, (xi, yi) in enumerate(zip(x.chunk(N), y.chunk(N))):
        idx = client_batch_indices(fed.client_indices[i], BATCH, seeds.generator(2, 0, seeds.BATCH_STREAM, i))
        assert torch.equal(xi, fed.x_train[idx])                       # from client i's own share
        assert torch.equal(yi, 9 - fed.y_train[idx] if i >= H else fed.y_train[idx])
    quiet = _federation("naive", "grads", scenario="no-attack")
    assert quiet.clients == H  # without the attack the Byzantine clients train nothing
    assert torch.equal(quiet.client_batch(0)[1], y[: H * BATCH])  # the same honest batches in every scenario


@pytest.mark.parametrize("algorithm", ["dsgd", "fedavg"])
def test_on_the_gradient_channel_the_byzantine_rows_are_their_poisoned_gradients(algorithm):
    fed = _federation("naive", "grads", algorithm)
    ref, batches = _reference(fed)
    params = list(ref.parameters())
    grads = []
    for xi, yi in batches:
        ref.train()
        grads.append(torch.autograd.grad(F.nll_loss(ref(xi), yi), params))
    mean = [sum(g[k] for g in grads) / N for k in range(len(params))]  # the mean of all n rows
    fed.step()
    with torch.no_grad():
        want = [p - LR * (1 - BETA) * m for p, m in zip(params, mean)]
    for got, w in zip(fed.params, want):
        torch.testing.assert_close(got, w, rtol=1e-9, atol=1e-11)


def test_on_the_statistics_channel_the_byzantine_rows_are_their_genuine_statistics():
    fed = _federation("naive", "stats")
    ref, batches = _reference(fed)
    ref.train()
    inputs: dict = {}
    hooks = [layer.register_forward_hook(lambda mod, args, out, i=i: inputs.setdefault(i, []).append(args[0]))
             for i, layer in enumerate(norm_layers(ref))]
    with torch.no_grad():
        for xi, _ in batches:
            ref(xi)
    for hook in hooks:
        hook.remove()
    before = [layer.running_mean.clone() for layer in fed.layers]
    fed.step()
    for k, (layer, rm) in enumerate(zip(fed.layers, before)):
        client_means = torch.stack([a.mean(dim=(0, 2, 3)) for a in inputs[k]])  # all n clients, genuine
        want = 0.9 * rm + 0.1 * client_means.mean(dim=0)
        torch.testing.assert_close(layer.running_mean, want, rtol=1e-9, atol=1e-11)


def test_label_flip_moves_the_undefended_model_and_its_rows_differ_from_the_honest_mean():
    attacked, quiet = _federation("fbn", "grads"), _federation("fbn", "grads", scenario="no-attack")
    attacked.step(), quiet.step()
    assert any(not torch.allclose(a, b) for a, b in zip(attacked.params, quiet.params))


def test_schemes_that_couple_clients_refuse_poisoned_data():
    with pytest.raises(ValueError, match="poisons the Byzantine clients. data"):
        _federation("fedtan", "grads")
