"""The FBN paper's CNN: shapes, log-softmax output, width scaling, the norm factory and norm_layers."""
import pytest
import torch
from torch import nn

from byzbn.nn.models import make_cnn, norm_layers

INPUT_SHAPES = [((1, 28, 28), 7), ((1, 8, 8), 2), ((3, 32, 32), 8)]  # (C, H, W), side after two pools


def _expected_parameter_count(channels, side, num_classes, width):
    narrow, wide = max(1, round(64 * width)), max(1, round(128 * width))
    hidden = max(1, round(128 * width))
    convs = [(channels, narrow), (narrow, narrow), (narrow, wide), (wide, wide)]
    conv_params = sum(9 * c_in * c_out + c_out for c_in, c_out in convs)
    bn_params = 2 * (2 * narrow + 2 * wide)
    linear_params = (wide * side * side + 1) * hidden + (hidden + 1) * num_classes
    return conv_params + bn_params + linear_params


@pytest.mark.parametrize("input_shape,side", INPUT_SHAPES)
@pytest.mark.parametrize("width", [0.25, 1.0])
def test_output_is_log_probabilities_for_every_input_size(input_shape, side, width):
    torch.manual_seed(0)
    model = make_cnn(input_shape, 10, width=width)
    x = torch.randn(6, *input_shape)
    for mode in (model.train, model.eval):
        mode()
        out = model(x)
        assert out.shape == (6, 10) and out.dtype == torch.float32
        torch.testing.assert_close(out.double().exp().sum(dim=1), torch.ones(6, dtype=torch.float64),
                                   atol=1e-5, rtol=0)
        assert torch.all(out <= 0)
    # The flattened size is what fc1 expects: the conv stack ends at side x side.
    assert model.classifier.fc1.in_features == max(1, round(128 * width)) * side * side


@pytest.mark.parametrize("input_shape,side", INPUT_SHAPES)
@pytest.mark.parametrize("width", [0.01, 0.25, 0.5, 1.0, 1.5])
def test_parameter_count_follows_width(input_shape, side, width):
    model = make_cnn(input_shape, 7, width=width)
    count = sum(p.numel() for p in model.parameters())
    assert count == _expected_parameter_count(input_shape[0], side, 7, width)


def test_width_one_is_the_paper_model():
    model = make_cnn((3, 32, 32), 10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(3, 64), (64, 64), (64, 128), (128, 128)]
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) and c.stride == (1, 1) for c in convs)
    kinds = [type(m).__name__ for m in model.features]
    assert kinds == ["Conv2d", "ReLU", "BatchNorm2d", "Conv2d", "ReLU", "BatchNorm2d", "MaxPool2d", "Dropout",
                     "Conv2d", "ReLU", "BatchNorm2d", "Conv2d", "ReLU", "BatchNorm2d", "MaxPool2d", "Dropout"]
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == [0.25, 0.25]
    assert (model.classifier.fc1.in_features, model.classifier.fc1.out_features) == (128 * 8 * 8, 128)
    assert (model.classifier.fc2.in_features, model.classifier.fc2.out_features) == (128, 10)


def test_norm_factory_is_called_once_per_layer_with_its_channels_in_forward_order():
    calls, built = [], []

    def factory(num_channels):
        calls.append(num_channels)
        layer = nn.GroupNorm(1, num_channels)
        built.append(layer)
        return layer

    model = make_cnn((1, 28, 28), 10, width=0.5, norm=factory)
    assert calls == [32, 32, 64, 64]
    layers = norm_layers(model)
    assert len(layers) == 4 and all(a is b for a, b in zip(layers, built))


def test_norm_layers_follow_the_forward_order_and_see_4d_activations():
    model = make_cnn((1, 8, 8), 3, width=0.25)
    seen = []
    hooks = [layer.register_forward_pre_hook(lambda m, args, i=i: seen.append((i, tuple(args[0].shape))))
             for i, layer in enumerate(norm_layers(model))]
    model(torch.randn(5, 1, 8, 8))
    for hook in hooks:
        hook.remove()
    assert seen == [(0, (5, 16, 8, 8)), (1, (5, 16, 8, 8)), (2, (5, 32, 4, 4)), (3, (5, 32, 4, 4))]
    assert all(isinstance(layer, nn.BatchNorm2d) for layer in norm_layers(model))


def test_norm_layers_returns_a_layer_swapped_in_after_construction():
    model = make_cnn((1, 8, 8), 3, width=0.25)
    replacement = nn.GroupNorm(2, 16)
    model.features.norm2 = replacement
    assert norm_layers(model)[1] is replacement


def test_norm_layers_rejects_other_models():
    with pytest.raises(ValueError, match="built by make_cnn"):
        norm_layers(nn.Sequential(nn.BatchNorm2d(3)))


def test_dropout_zero_makes_training_forward_deterministic():
    torch.manual_seed(0)
    model = make_cnn((1, 8, 8), 4, width=0.25, dropout=0.0, norm=lambda c: nn.GroupNorm(1, c)).train()
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(model(x), model(x))


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = make_cnn((1, 28, 28), 10, width=0.25)
    loss = nn.functional.nll_loss(model(torch.randn(8, 1, 28, 28)), torch.arange(8))
    loss.backward()
    assert all(p.grad is not None and torch.any(p.grad != 0) for p in model.parameters())


@pytest.mark.parametrize("kwargs,match", [
    (dict(width=0), "width=0 is out of range"),
    (dict(width=-1.0), "width=-1.0 is out of range"),
    (dict(width=float("nan")), "width=nan is out of range"),
    (dict(width=float("inf")), "width=inf is out of range"),
    (dict(dropout=1.0), r"dropout=1.0 is out of range: valid \[0, 1\)"),
    (dict(dropout=-0.1), "dropout=-0.1 is out of range"),
    (dict(num_classes=1), "num_classes=1 is out of range"),
    (dict(input_shape=(1, 3, 28)), "H >= 4, W >= 4"),
    (dict(input_shape=(0, 28, 28)), "valid C >= 1"),
    (dict(input_shape=(28, 28)), r"tuple \(C, H, W\)"),
    (dict(norm=lambda c: None), r"norm\(64\) must return an nn.Module"),
    (dict(norm="bn"), "norm must be a callable"),
])
def test_make_cnn_validates_arguments(kwargs, match):
    args = dict(input_shape=(1, 28, 28), num_classes=10) | kwargs
    with pytest.raises(ValueError, match=match):
        make_cnn(**args)
