"""Residual networks with plain BatchNorm2d layers: He et al.'s CIFAR ResNet-20 and the CIFAR ResNet-18.

Both are built with ordinary `nn.BatchNorm2d` layers; byzbn.nn.federate swaps in a scheme's layer. Both
take any (C, H, W) input of at least 4x4 pixels (the global average pool absorbs the spatial size: MNIST's
1x28x28 works as CIFAR's 3x32x32) and return log-probabilities [batch, num_classes], like the FBN
paper's CNN (byzbn.nn.models), so that every built-in model has the same output convention.

- ResNet-20 (He et al. 2016, "Deep Residual Learning", section 4.2): a 3x3 conv of 16 channels, then
  3 stages of 3 basic blocks with 16, 32 and 64 channels (the first block of stages 2 and 3 has
  stride 2), global average pool, one Linear. Shortcuts are option A: identity, and where the shape
  changes the input subsampled by 2 and zero-padded with the missing channels (no parameters). So the
  model has 1 + 3·3·2 = 19 BN layers (option B's 1x1 conv + BN projections would make it 21).
- ResNet-18 (torchvision's BasicBlock ResNet-18 with the common CIFAR stem): a 3x3 stride-1 conv of 64
  channels and no max-pool, 4 stages of 2 basic blocks with 64, 128, 256 and 512 channels (stride 2
  from stage 2 on), projection shortcuts (1x1 conv + BN) where the shape changes, global average pool,
  one Linear: 1 + 8·2 + 3 = 20 BN layers.

`width` scales every channel count (round(c · width), at least 1), as make_cnn's does.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

RESNET20_CHANNELS = (16, 32, 64)
RESNET20_BLOCKS = (3, 3, 3)
RESNET18_CHANNELS = (64, 128, 256, 512)
RESNET18_BLOCKS = (2, 2, 2, 2)


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class PadShortcut(nn.Module):
    """He et al.'s option-A shortcut: subsample by `stride` and zero-pad the channels up to `cout`."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.stride, self.before = stride, (cout - cin) // 2
        self.after = cout - cin - self.before

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::self.stride, ::self.stride], (0, 0, 0, 0, self.before, self.after))


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU.

    shortcut "A": the parameter-free PadShortcut where the shape changes; "B": a 1x1 conv + BN projection
    there. Where the shape is kept the shortcut is the identity either way.
    """

    def __init__(self, cin: int, cout: int, stride: int, shortcut: str):
        super().__init__()
        self.conv1, self.bn1 = _conv3x3(cin, cout, stride), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = _conv3x3(cout, cout), nn.BatchNorm2d(cout)
        if stride == 1 and cin == cout:
            self.shortcut: nn.Module = nn.Identity()
        elif shortcut == "A":
            self.shortcut = PadShortcut(cin, cout, stride)
        else:
            self.shortcut = nn.Sequential(OrderedDict([
                ("conv", nn.Conv2d(cin, cout, 1, stride=stride, bias=False)), ("bn", nn.BatchNorm2d(cout))]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """stem (conv3x3-BN-ReLU), stages of BasicBlocks, global average pool, Linear, log_softmax."""

    def __init__(self, in_channels: int, num_classes: int, channels: tuple[int, ...], blocks: tuple[int, ...],
                 shortcut: str):
        super().__init__()
        self.conv1, self.bn1 = _conv3x3(in_channels, channels[0]), nn.BatchNorm2d(channels[0])
        stages, cin = [], channels[0]
        for k, (cout, count) in enumerate(zip(channels, blocks)):
            stride = 1 if k == 0 else 2
            stages.append(nn.Sequential(*[BasicBlock(cin if b == 0 else cout, cout, stride if b == 0 else 1, shortcut)
                                          for b in range(count)]))
            cin = cout
        self.layers = nn.Sequential(*stages)
        self.fc = nn.Linear(cin, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        return F.log_softmax(self.fc(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)), dim=1)


def _check(input_shape, num_classes, width) -> None:
    if not (isinstance(input_shape, (tuple, list)) and len(input_shape) == 3
            and all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in input_shape)):
        raise ValueError(f"input_shape must be a tuple (C, H, W) of ints >= 1, got {input_shape!r}")
    if input_shape[1] < 4 or input_shape[2] < 4:
        raise ValueError(f"input_shape={tuple(input_shape)} is out of range: valid H >= 4, W >= 4")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes={num_classes!r} is out of range: valid int >= 2")
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not 0 < width < float("inf"):
        raise ValueError(f"width={width!r} is out of range: valid finite float > 0")


def _scaled(channels: tuple[int, ...], width: float) -> tuple[int, ...]:
    return tuple(max(1, round(c * width)) for c in channels)


def make_resnet20(input_shape: tuple[int, int, int], num_classes: int, width: float = 1.0) -> ResNet:
    """He et al.'s CIFAR ResNet-20 (option-A shortcuts, 19 BatchNorm2d layers; 0.27M parameters at width 1)."""
    _check(input_shape, num_classes, width)
    return ResNet(input_shape[0], num_classes, _scaled(RESNET20_CHANNELS, width), RESNET20_BLOCKS, "A")


def make_resnet18(input_shape: tuple[int, int, int], num_classes: int, width: float = 1.0) -> ResNet:
    """ResNet-18 with a 3x3 stride-1 stem and no max-pool (20 BatchNorm2d layers; 11.2M parameters at width 1)."""
    _check(input_shape, num_classes, width)
    return ResNet(input_shape[0], num_classes, _scaled(RESNET18_CHANNELS, width), RESNET18_BLOCKS, "B")


__all__ = ["RESNET20_CHANNELS", "RESNET20_BLOCKS", "RESNET18_CHANNELS", "RESNET18_BLOCKS", "PadShortcut",
           "BasicBlock", "ResNet", "make_resnet20", "make_resnet18"]
