"""byzbn.nn.federate: what it converts and keeps, what it refuses, the layer order, and exactness on any model.

Exactness (DESIGN.md §3) on ResNet-20 and on random user models (nested containers, a ModuleDict, residual
branches, BatchNorm1d after a Linear, registration order unlike the forward order):

- centralized: a DSGD step of the federated model equals a plain-torch step of the unconverted model (BN in
  training mode) on the union batch, running statistics included;
- FBN without attack (the mean merges the clients' statistics into the union's exactly, so one client
  holding the union batch is the same case): a step equals the unconverted model normalizing with its
  running statistics (BN in eval mode) and then updating them as BN's training mode does from each layer's
  input on the union batch.
"""
from __future__ import annotations

import copy
import random

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from byzbn.fl import Federation, make_scenario
from byzbn.nn import (BNPass, FederatedBatchNorm, HybridBatchNorm, federate, federated_bn_layers, make_resnet20,
                      norm_layers, run_bn_pass)
from byzbn.schemes import make_scheme
from federation_data import client_data

SHAPE = (1, 8, 8)


class Branchy(nn.Module):
    """A user's model: BN in a ModuleDict, a residual branch, a nested Sequential, after a Linear; the head
    is registered before the body, so registration order is not the forward order."""

    def __init__(self, seed: int = 0, in_shape=SHAPE, classes: int = 10):
        super().__init__()
        rng = random.Random(seed)
        c, h, w = in_shape
        hidden = rng.choice([3, 5])
        widths = [rng.choice([2, 3, 4]) for _ in range(rng.randint(1, 3))]
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(widths[-1] * h * w, hidden),
                                  nn.Sequential(nn.BatchNorm1d(hidden, eps=rng.choice([1e-5, 1e-3]))),
                                  nn.ReLU(), nn.Linear(hidden, classes))
        self.body = nn.ModuleDict()
        self.skips = nn.ModuleList()
        for k, out in enumerate(widths):
            self.body[f"block{k}"] = nn.Sequential(nn.Conv2d(c, out, 3, padding=1),
                                                   nn.BatchNorm2d(out, momentum=rng.choice([0.1, 0.3])), nn.ReLU())
            self.skips.append(nn.Sequential(nn.Conv2d(c, out, 1), nn.BatchNorm2d(out))
                              if c != out or rng.random() < 0.5 else nn.Identity())
            c = out

    def forward(self, x):
        for block, skip in zip(self.body.values(), self.skips):
            x = block(x) + skip(x)
        return self.head(x)


def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen))
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen))
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return model


def _bn_count(model):
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


# ---------------------------------------------------------------------------------------------- conversion
@pytest.mark.parametrize("scheme", ["naive", "fbn", "fixbn", "fedtan", "centralized", "hbn"])
def test_conversion_keeps_names_parameters_statistics_eps_and_momentum(scheme):
    plain = _randomize(Branchy(seed=3))
    before = copy.deepcopy(plain.state_dict())
    fed = federate(plain, scheme, example_input=torch.zeros(2, *SHAPE))
    extra = {"mix_logit"} if scheme == "hbn" else set()
    plain_params, fed_params = dict(plain.named_parameters()), dict(fed.named_parameters())
    assert {n for n in fed_params if n.rsplit(".", 1)[1] not in extra} == set(plain_params)
    for name, p in plain_params.items():
        assert torch.equal(fed_params[name], p) and fed_params[name] is not p
    plain_buffers = {n: b for n, b in plain.named_buffers() if not n.endswith("num_batches_tracked")}
    assert {n: b.tolist() for n, b in fed.named_buffers()} == {n: b.tolist() for n, b in plain_buffers.items()}
    kind = HybridBatchNorm if scheme == "hbn" else FederatedBatchNorm
    for name, old in plain.named_modules():
        if isinstance(old, nn.modules.batchnorm._BatchNorm):
            new = fed.get_submodule(name)
            assert type(new) is kind and (new.eps, new.momentum) == (old.eps, old.momentum)
    # the input is untouched: still plain BN, same values
    assert all(torch.equal(plain.state_dict()[k], v) for k, v in before.items())
    assert not any(isinstance(m, FederatedBatchNorm) for m in plain.modules())


def test_groupnorm_keeps_the_affine_parameters_and_eps():
    plain = _randomize(make_resnet20(SHAPE, 10, width=0.25))
    fed = federate(plain, make_scheme("groupnorm", 1, groups=2))
    layers = norm_layers(fed)
    assert len(layers) == 19 and all(isinstance(m, nn.GroupNorm) and m.num_groups == 2 for m in layers)
    assert federated_bn_layers(fed) == []
    for name, p in plain.named_parameters():
        assert torch.equal(fed.get_submodule(name.rsplit(".", 1)[0]).get_parameter(name.rsplit(".", 1)[1]), p)


def test_sync_batchnorm_and_batchnorm1d_on_sequences_are_converted():
    model = nn.Sequential(nn.Conv1d(2, 3, 1), nn.SyncBatchNorm(3), nn.Flatten(), nn.Linear(12, 4), nn.BatchNorm1d(4))
    fed = federate(model, "naive", example_input=torch.zeros(2, 2, 4))
    assert [type(m) for m in federated_bn_layers(fed)] == [FederatedBatchNorm, FederatedBatchNorm]
    assert fed.norm_layer_names == ("1", "4") and fed.federated_scheme == "naive"


def test_layers_are_listed_in_forward_order_not_registration_order():
    plain = Branchy(seed=1)
    registered = [n for n, m in plain.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert registered[0].startswith("head")
    fed = federate(plain, "fbn", example_input=torch.zeros(2, *SHAPE))
    assert fed.norm_layer_names[-1] == "head.2.0" and sorted(fed.norm_layer_names) == sorted(registered)
    assert [fed.get_submodule(n) for n in fed.norm_layer_names] == federated_bn_layers(fed)


class _Shared(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.BatchNorm2d(1)
        self.b = self.a

    def forward(self, x):
        return self.a(x)


class _Twice(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(1)

    def forward(self, x):
        return self.bn(self.bn(x))


class _Unused(nn.Module):
    def __init__(self):
        super().__init__()
        self.used, self.spare = nn.BatchNorm2d(1), nn.BatchNorm2d(1)

    def forward(self, x):
        return self.used(x)


class _MyBN(nn.BatchNorm2d):
    pass


@pytest.mark.parametrize("model,scheme,match", [
    (nn.Sequential(nn.BatchNorm2d(1, track_running_stats=False)), "fbn", "'0' .*track_running_stats=False"),
    (nn.Sequential(nn.BatchNorm2d(1, momentum=None)), "fbn", "'0' .*momentum=None"),
    (nn.Sequential(nn.Sequential(nn.BatchNorm2d(1, affine=False))), "naive", "'0.0' .*affine=False"),
    (nn.Sequential(nn.BatchNorm2d(2, affine=False)), "groupnorm", "'0' .*affine=False"),
    (nn.Sequential(nn.LazyBatchNorm2d()), "fbn", "'0' .*lazy"),
    (nn.Sequential(nn.BatchNorm3d(1)), "fbn", "'0' .*BatchNorm3d"),
    (nn.Sequential(_MyBN(1)), "fbn", "'0' .*subclasses"),
    (_Shared(), "fbn", "'b' is the same BN layer as 'a'"),
    (nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), "fbn", "Sequential has no BatchNorm layer: scheme 'fbn'"),
    (nn.BatchNorm2d(1), "fbn", "the model is itself a BN layer"),
])
def test_what_cannot_be_converted_faithfully_is_a_one_line_error(model, scheme, match):
    with pytest.raises(ValueError, match=match) as info:
        federate(model, scheme)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("model,match", [(_Twice(), r"\['bn'\] run more than once"),
                                         (_Unused(), r"\['spare'\] do not run")])
def test_a_layer_the_forward_skips_or_repeats_is_an_error(model, match):
    with pytest.raises(ValueError, match=match):
        federate(model, "fbn", example_input=torch.zeros(2, 1, 2, 2))


def test_federating_twice_or_an_unknown_scheme_or_a_non_module_is_an_error():
    fed = federate(nn.Sequential(nn.BatchNorm1d(2)), "fbn")
    with pytest.raises(ValueError, match="already federated"):
        federate(fed, "naive")
    with pytest.raises(ValueError, match="already federated"):
        federate(federate(nn.Sequential(nn.BatchNorm2d(2)), "groupnorm"), "groupnorm")
    with pytest.raises(ValueError, match="unknown scheme 'nope'"):
        federate(nn.Sequential(nn.BatchNorm1d(2)), "nope")
    with pytest.raises(ValueError, match="must be an nn.Module"):
        federate("model", "fbn")
    with pytest.raises(ValueError, match="scheme must be a scheme name"):
        federate(nn.Sequential(nn.BatchNorm1d(2)), object())
    # groupnorm has no statistics: a model without BN trains under it unchanged
    assert norm_layers(federate(nn.Sequential(nn.Linear(2, 2)), "groupnorm")) == []


@pytest.mark.parametrize("shape", [(12, 5), (12, 5, 7)])
@pytest.mark.parametrize("mode", ["client", "union"])
def test_federated_bn_on_linear_and_sequence_activations_equals_bn(shape, mode):
    """BatchNorm1d's inputs [N, C] and [N, C, L]: per-client (kernel) and union statistics with gradients."""
    fed = _randomize(nn.BatchNorm1d(5).double())
    layer = federate(nn.Sequential(fed), "naive")[0]
    x = torch.randn(*shape, dtype=torch.float64) * 2 + 1
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    with run_bn_pass([layer], BNPass(mode=mode, clients=3, backend="kernel")):
        out = layer(x1)
    parts = x2.chunk(3) if mode == "client" else [x2]
    ref = torch.cat([F.batch_norm(p, None, None, layer.weight, layer.bias, True, 0.0, layer.eps) for p in parts])
    torch.testing.assert_close(out, ref)
    up = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad((out * up).sum(), [x1, layer.weight]),
                    torch.autograd.grad((ref * up).sum(), [x2, layer.weight])):
        torch.testing.assert_close(a, b)


# ---------------------------------------------------------------------------------------------- exactness
def _federation(plain: nn.Module, scheme_name: str, clients: int, steps: int = 2) -> Federation:
    x, y, parts = client_data(clients, SHAPE, 12, seed=1)
    scheme = make_scheme(scheme_name, steps)
    model = federate(plain, scheme, example_input=torch.zeros(2, *SHAPE)).double()
    return Federation(model, scheme, make_scenario("no-attack", clients, 0, None, None), x.double(), y, parts,
                      batch_size=4, lr=0.1, momentum=0.9, seed=5)


def _sgd_step(model, loss, momentum):
    params = list(model.parameters())
    grads = torch.autograd.grad(loss, params)
    with torch.no_grad():
        for p, m, g in zip(params, momentum, grads):
            m.mul_(0.9).add_(g, alpha=0.1)
            p.sub_(m, alpha=0.1)


def _assert_same_state(fed: Federation, ref: nn.Module):
    want = ref.state_dict()
    for key, value in fed.model.state_dict().items():
        torch.testing.assert_close(value, want[key], rtol=1e-9, atol=1e-10, msg=lambda m: f"{key}: {m}")


def _centralized_matches(plain: nn.Module):
    fed = _federation(plain, "centralized", clients=3)
    ref = copy.deepcopy(plain).double().train()
    momentum = [torch.zeros_like(p) for p in ref.parameters()]
    for t in range(2):
        x, y = fed.client_batch(t)
        _sgd_step(ref, F.cross_entropy(ref(x), y), momentum)
        fed.step()
    _assert_same_state(fed, ref)


def _fbn_matches(plain: nn.Module):
    fed = _federation(plain, "fbn", clients=2)
    ref = copy.deepcopy(plain).double().eval()  # BN normalizes with its running statistics
    momentum = [torch.zeros_like(p) for p in ref.parameters()]
    layers = [m for m in ref.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for t in range(2):
        updated = {}

        def bn_update(layer, args):  # what BN's training mode does to the buffers, from this input
            mean, var = layer.running_mean.clone(), layer.running_var.clone()
            F.batch_norm(args[0].detach(), mean, var, None, None, True, layer.momentum, layer.eps)
            updated[layer] = (mean, var)

        hooks = [layer.register_forward_pre_hook(bn_update) for layer in layers]
        x, y = fed.client_batch(t)
        _sgd_step(ref, F.cross_entropy(ref(x), y), momentum)
        for hook in hooks:
            hook.remove()
        with torch.no_grad():
            for layer, (mean, var) in updated.items():
                layer.running_mean.copy_(mean)
                layer.running_var.copy_(var)
        fed.step()
    _assert_same_state(fed, ref)


def test_resnet20_centralized_step_equals_plain_torch_on_the_union_batch():
    torch.manual_seed(0)
    _centralized_matches(make_resnet20(SHAPE, 10, width=0.125))


def test_resnet20_fbn_equals_plain_bn_with_running_statistics():
    torch.manual_seed(0)
    _fbn_matches(_randomize(make_resnet20(SHAPE, 10, width=0.125)))


@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_a_random_user_model_is_exact_under_centralized_and_fbn(seed):
    torch.manual_seed(seed)
    plain = _randomize(Branchy(seed=seed), seed)
    _centralized_matches(plain)
    _fbn_matches(plain)
