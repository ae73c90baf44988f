"""--model: the built-in models, user models (registered, FILE.py:FUNCTION, package.module:FUNCTION), and
every scheme, pass and algorithm on them (tiny widths and 8x8 inputs: a few seconds in all)."""
from __future__ import annotations

import math
import sys

import pytest
import torch
from torch import nn

from byzbn.attacks import make_attack
from byzbn.defenses import make_defense
from byzbn.fl import FedAvgFederation, Federation, make_scenario
from byzbn.nn import (MODELS, HybridBatchNorm, build_model, federated_bn_layers, make_cnn, make_resnet18,
                      make_resnet20, model_builder, norm_layers, plain_model, register_model)
from byzbn.schemes import FEDTAN_EXCHANGES_PER_LAYER, SCHEMES, make_scheme
from federation_data import client_data

SHAPE = (1, 8, 8)
WIDTH = {"cnn": 0.125, "resnet20": 0.125, "resnet18": 0.0625}
BN_LAYERS = {"cnn": 4, "resnet20": 19, "resnet18": 20}

USER_MODEL = '''
from torch import nn


def build(input_shape, num_classes):
    c, h, w = input_shape
    return nn.Sequential(nn.Conv2d(c, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * h * w, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, num_classes))
'''


# ---------------------------------------------------------------------------------------------- built-ins
@pytest.mark.parametrize("name,params,bn", [("cnn", 1_310_922, 4), ("resnet20", 269_722, 19),
                                            ("resnet18", 11_173_962, 20)])
def test_builtin_models_have_the_published_sizes(name, params, bn):
    with torch.device("meta"):  # shapes only: no memory, no arithmetic
        model = plain_model(name, (3, 32, 32), 10, width=1.0)
    assert sum(p.numel() for p in model.parameters()) == params
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == bn


@pytest.mark.parametrize("name", ["cnn", "resnet20", "resnet18"])
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (1, 8, 8)])
def test_builtin_models_take_the_datasets_shape_and_return_log_probabilities(name, shape):
    model = build_model(name, shape, 7, WIDTH[name], "fbn").eval()
    out = model(torch.randn(3, *shape))
    assert out.shape == (3, 7)
    torch.testing.assert_close(out.exp().sum(dim=1), torch.ones(3))
    assert len(federated_bn_layers(model)) == BN_LAYERS[name]


def test_width_scales_the_resnets_channels():
    assert [m.num_features for m in norm_layers(build_model("resnet20", SHAPE, 10, 0.5, "fbn"))][::6] == [8, 8, 16, 32]
    narrow = make_resnet18(SHAPE, 10, width=0.25)
    assert narrow.fc.in_features == 128 and narrow.conv1.out_channels == 16
    # option A: no projection, so no parameters on the shortcuts
    assert not any("shortcut" in name for name, _ in make_resnet20(SHAPE, 10).named_parameters())


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_the_cnn_built_through_federate_equals_make_cnn_with_the_schemes_layer(scheme):
    torch.manual_seed(4)
    via_zoo = build_model("cnn", (1, 28, 28), 10, 0.25, make_scheme(scheme, 2)).state_dict()
    torch.manual_seed(4)
    direct = make_cnn((1, 28, 28), 10, 0.25, norm=make_scheme(scheme, 2).make_norm).state_dict()
    assert list(via_zoo) == list(direct) and all(torch.equal(via_zoo[k], direct[k]) for k in direct)


def test_models_validate_their_arguments():
    with pytest.raises(ValueError, match="H >= 4"):
        make_resnet20((1, 2, 2), 10)
    with pytest.raises(ValueError, match="num_classes=1"):
        make_resnet18(SHAPE, 1)
    with pytest.raises(ValueError, match="width=0"):
        make_resnet20(SHAPE, 10, width=0)


# ---------------------------------------------------------------------------------------------- user models
def test_register_model_files_a_builder_by_name_and_refuses_bad_names():
    @register_model("tiny-linear-bn")
    def tiny(input_shape, num_classes):
        return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), 4), nn.BatchNorm1d(4),
                             nn.Linear(4, num_classes))

    try:
        assert model_builder("tiny-linear-bn") is tiny
        assert len(federated_bn_layers(build_model("tiny-linear-bn", SHAPE, 3, 1.0, "naive"))) == 1
        with pytest.raises(ValueError, match="already registered"):
            register_model("tiny-linear-bn")(tiny)
        with pytest.raises(ValueError, match="must not contain ':'"):
            register_model("a:b")(tiny)
    finally:
        MODELS.pop("tiny-linear-bn")


def test_a_builder_from_a_file_or_a_module(tmp_path, monkeypatch):
    (tmp_path / "my_models.py").write_text(USER_MODEL)
    model_builder(f"{tmp_path / 'my_models.py'}:build")
    monkeypatch.syspath_prepend(str(tmp_path))
    model_builder("my_models:build")
    for spec in (f"{tmp_path / 'my_models.py'}:build", "my_models:build"):
        model = build_model(spec, SHAPE, 3, 1.0, "fbn")
        assert [type(m).__name__ for m in federated_bn_layers(model)] == ["FederatedBatchNorm"] * 2
        assert model.norm_layer_names == ("1", "5")
    monkeypatch.delitem(sys.modules, "my_models")


@pytest.mark.parametrize("spec,match", [
    ("nope", r"unknown model 'nope': valid models are \['cnn', 'resnet18', 'resnet20'"),
    ("missing_file.py:build", "missing_file.py: no such file"),
    ("no_such_module_xyz:build", "importing no_such_module_xyz failed"),
    ("math:nothing", "math has no 'nothing'"),
    ("math:pi", "must be a function"),
    ("", "model must be"),
])
def test_a_bad_model_spec_is_a_one_line_error(spec, match):
    with pytest.raises(ValueError, match=match):
        model_builder(spec)


def test_a_builder_must_return_a_module(tmp_path):
    (tmp_path / "bad.py").write_text("def build(input_shape, num_classes):\n    return 3\n")
    with pytest.raises(ValueError, match="must build an nn.Module, got int"):
        plain_model(f"{tmp_path / 'bad.py'}:build", SHAPE, 10)


# ---------------------------------------------------------------------------------------------- training
def _run(model_name: str, scheme_name: str, algorithm: str = "dsgd", scenario: str = "attack",
         target: str = "stats", attack: str = "sign-flip", per_client_grads: str = "auto", steps: int = 2,
         dtype=torch.float32, width=None):
    n, f = 4, 1
    x, y, parts = client_data(n - f, SHAPE, 8, seed=2)
    fedavg = algorithm == "fedavg" and SCHEMES[scheme_name].attackable
    scheme = make_scheme(scheme_name, steps)
    torch.manual_seed(0)
    model = build_model(model_name, SHAPE, 10, width or WIDTH[model_name], scheme).to(dtype)
    scenario = make_scenario(scenario if scheme.attackable else "no-attack", n, f, make_attack(attack),
                             make_defense("median", f), target=target, fields="both")
    common = dict(batch_size=4, lr=0.05, momentum=0.9, seed=1)
    if fedavg:
        return FedAvgFederation(model, scheme, scenario, x.to(dtype), y, parts, local_steps=2, **common)
    return Federation(model, scheme, scenario, x.to(dtype), y, parts, per_client_grads=per_client_grads, **common)


@pytest.mark.parametrize("algorithm", ["dsgd", "fedavg"])
@pytest.mark.parametrize("model_name", ["cnn", "resnet20", "resnet18"])
@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_every_scheme_trains_every_builtin_model(scheme, model_name, algorithm):
    fed = _run(model_name, scheme, algorithm, target="grads" if scheme == "groupnorm" else "stats")
    before = [p.detach().clone() for p in fed.model.parameters()]
    running = [layer.running_mean.clone() for layer in fed.layers]
    losses = [fed.step() for _ in range(2)]
    assert all(math.isfinite(loss) for loss in losses)
    assert any(not torch.equal(a, p) for a, p in zip(before, fed.model.parameters()))
    assert len(fed.layers) == (0 if scheme == "groupnorm" else BN_LAYERS[model_name])
    if fed.layers:  # every layer's server statistics moved (fixbn: before T*; under fedavg one round)
        assert all(not torch.equal(r, layer.running_mean) for r, layer in zip(running, fed.layers))
    if scheme == "fedtan" and algorithm == "dsgd":  # 3 exchanges per BN layer plus the gradient exchange
        assert fed.comm_rounds == 2 * (FEDTAN_EXCHANGES_PER_LAYER * BN_LAYERS[model_name] + 1)
    if scheme == "hbn":
        assert all(not torch.equal(m.mix_logit, torch.zeros_like(m.mix_logit))
                   for m in fed.model.modules() if isinstance(m, HybridBatchNorm))


@pytest.mark.parametrize("model_name", ["resnet20", "user"])
@pytest.mark.parametrize("scheme", ["naive", "fbn", "fedtan"])
def test_per_client_gradients_by_vmap_and_by_the_loop_agree(model_name, scheme, tmp_path):
    name = model_name
    if model_name == "user":
        (tmp_path / "user_model.py").write_text(USER_MODEL)
        name = f"{tmp_path / 'user_model.py'}:build"
    runs = [_run(name, scheme, target="both", attack="alie", per_client_grads=p, dtype=torch.float64, width=1.0
                 if model_name == "user" else None) for p in ("vmap", "loop")]
    for fed in runs:
        fed.step()
        assert fed.per_client
    torch.testing.assert_close(runs[0].momentum, runs[1].momentum, rtol=1e-9, atol=1e-10)
    for a, b in zip(runs[0].model.state_dict().values(), runs[1].model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_fixbn_freezes_every_layer_of_a_resnet_after_its_freeze_step():
    fed = _run("resnet20", "fixbn", steps=2)  # freeze 0.5: T* = step 1
    fed.step()
    frozen = [layer.running_var.clone() for layer in fed.layers]
    fed.step()
    assert all(torch.equal(a, layer.running_var) for a, layer in zip(frozen, fed.layers))


@pytest.mark.parametrize("scheme", ["naive", "fbn"])
def test_bn_adaptive_attacks_every_layer_of_a_resnet(scheme):
    fed = _run("resnet20", scheme, attack="bn-adaptive", steps=1)
    # ResNet-20 at width 0.125: the stem and stage 1 have 2 channels, stage 2 4, stage 3 8
    assert [layer.num_features for layer in fed.layers] == [2] * 7 + [4] * 6 + [8] * 6
    assert math.isfinite(fed.step())
