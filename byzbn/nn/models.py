"""The CNN of the FBN paper (appendix C.1, Table 1), with a pluggable normalization layer."""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from byzbn.nn.norm import NORM_LAYER_NAMES_ATTR


class FbnCnn(nn.Module):
    """conv-ReLU-Norm x2, MaxPool, Dropout, conv-ReLU-Norm x2, MaxPool, Dropout, Linear-ReLU, Linear,
    log_softmax. Returns log-probabilities [batch, num_classes] (train with NLL, as the paper)."""

    def __init__(self, features: nn.Sequential, classifier: nn.Sequential, norm_layer_names: tuple[str, ...]):
        super().__init__()
        self.features = features
        self.classifier = classifier
        self.norm_layer_names = norm_layer_names

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.classifier(self.features(x)), dim=1)


def make_cnn(input_shape: tuple[int, int, int], num_classes: int, width: float = 1.0,
             norm: Callable[[int], nn.Module] = nn.BatchNorm2d, dropout: float = 0.25) -> nn.Module:
    """The FBN paper's CNN for images of `input_shape` (C, H, W).

    Channels are round(64 * width) and round(128 * width) (at least 1); width=1 is the paper's model.
    Convolutions are 3x3, stride 1, padding 1, so only the two 2x2 max-pools shrink the image:
    28x28 -> 7x7, 32x32 -> 8x8, 8x8 -> 2x2 before flattening.

    Hidden size: the paper leaves the first linear layer's width blank; we use round(128 * width), the
    same as the last convolution's channel count. It keeps the classifier from dominating the model
    (at width 1: 128*7*7*128 = 0.8M weights on MNIST, 1.05M on CIFAR-10, next to 0.26M in the convs)
    while still being a real bottleneck layer rather than a linear probe.

    `norm(num_channels)` builds each of the four normalization layers (called once per layer, in forward
    order); they receive 4-D activations [batch, C, H, W], batch possibly the stack of many clients'
    batches. Pass e.g. `lambda c: nn.GroupNorm(2, c)` for GroupNorm or a scheme's BN factory.
    """
    if not (isinstance(input_shape, (tuple, list)) and len(input_shape) == 3
            and all(isinstance(s, int) and not isinstance(s, bool) for s in input_shape)):
        raise ValueError(f"input_shape must be a tuple (C, H, W) of ints, got {input_shape!r}")
    channels, height, width_px = input_shape
    if channels < 1 or height < 4 or width_px < 4:
        raise ValueError(f"input_shape={tuple(input_shape)} is out of range: valid C >= 1, H >= 4, W >= 4 "
                         f"(two 2x2 max-pools must leave at least 1x1)")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes={num_classes!r} is out of range: valid int >= 2")
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not width > 0 or width == float("inf"):
        raise ValueError(f"width={width!r} is out of range: valid finite float > 0")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"dropout={dropout!r} is out of range: valid [0, 1)")
    if not callable(norm):
        raise ValueError(f"norm must be a callable num_channels -> nn.Module, got {type(norm).__name__}")

    narrow, wide = max(1, round(64 * width)), max(1, round(128 * width))
    hidden = max(1, round(128 * width))
    flat = wide * (height // 4) * (width_px // 4)

    def built_norm(num_channels: int) -> nn.Module:
        layer = norm(num_channels)
        if not isinstance(layer, nn.Module):
            raise ValueError(f"norm({num_channels}) must return an nn.Module, got {type(layer).__name__}")
        return layer

    features = nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(channels, narrow, 3, padding=1)), ("relu1", nn.ReLU()), ("norm1", built_norm(narrow)),
        ("conv2", nn.Conv2d(narrow, narrow, 3, padding=1)), ("relu2", nn.ReLU()), ("norm2", built_norm(narrow)),
        ("pool1", nn.MaxPool2d(2, 2)), ("drop1", nn.Dropout(dropout)),
        ("conv3", nn.Conv2d(narrow, wide, 3, padding=1)), ("relu3", nn.ReLU()), ("norm3", built_norm(wide)),
        ("conv4", nn.Conv2d(wide, wide, 3, padding=1)), ("relu4", nn.ReLU()), ("norm4", built_norm(wide)),
        ("pool2", nn.MaxPool2d(2, 2)), ("drop2", nn.Dropout(dropout)),
    ]))
    classifier = nn.Sequential(OrderedDict([
        ("flatten", nn.Flatten()),
        ("fc1", nn.Linear(flat, hidden)), ("relu5", nn.ReLU()),
        ("fc2", nn.Linear(hidden, num_classes)),
    ]))
    return FbnCnn(features, classifier, tuple(f"features.norm{i}" for i in range(1, 5)))


def norm_layers(model: nn.Module) -> list[nn.Module]:
    """The normalization modules of a make_cnn or byzbn.nn.federate model, in forward order (looked up by
    name, so a layer swapped in after construction is the one returned)."""
    names = getattr(model, NORM_LAYER_NAMES_ATTR, None)
    if not isinstance(model, nn.Module) or names is None:
        raise ValueError(f"model must be built by make_cnn or byzbn.nn.federate (it lists its normalization layers in "
                         f"`{NORM_LAYER_NAMES_ATTR}`), got {type(model).__name__}")
    return [model.get_submodule(name) for name in names]
