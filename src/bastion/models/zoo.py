"""Model zoo. Every builder takes the per-example input shape and the number of classes.

- mlp: fully connected, hidden sizes and activation selectable.
- lenet: LeNet-5 (LeCun et al., 1998): conv6-5x5, pool, conv16-5x5, pool, fc120, fc84;
  `variant='dlg'` gives the pool-free sigmoid LeNet of Zhu et al. (DLG, 2019) used by the
  gradient-leakage literature (three 5x5 conv layers of 12 filters, stride 2/2/1).
- cnn7: the seven-layer MNIST CNN of the dissertation's ch. 2 (after Carlini & Wagner):
  conv32-3x3, conv32-3x3, max-pool, conv64-3x3, conv64-3x3, max-pool, fc200, fc200, out.
- cnn-small: two 3x3 conv + pool stages (16, 32 filters) and a 64-unit dense layer (~106k
  parameters on MNIST); the shadow-model workhorse.
- resnet: CIFAR ResNet (He et al., 2016) of depth 6n + 2 (20/32/44/56) and a width factor;
  norm='batch' (default) or 'group' (DP-compatible).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from bastion.core import ConfigError, unknown_name

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "elu": nn.ELU, "gelu": nn.GELU,
}


def _act(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise unknown_name("activation", name, ACTIVATIONS)
    return ACTIVATIONS[name]()


def _flat_dim(features: nn.Module, in_shape: Sequence[int]) -> int:
    with torch.no_grad():
        return int(features(torch.zeros(1, *in_shape)).flatten(1).shape[1])


def _image_shape(in_shape: Sequence[int], name: str) -> tuple[int, int, int]:
    if len(in_shape) != 3:
        raise ConfigError(f"{name} needs image inputs [C, H, W], got shape {tuple(in_shape)}")
    return tuple(in_shape)  # type: ignore[return-value]


class Net(nn.Module):
    """features -> flatten -> head."""

    def __init__(self, features: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.features = features
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def mlp(in_shape: Sequence[int], num_classes: int, hidden: Sequence[int] = (256, 256),
        activation: str = "relu") -> nn.Module:
    dims = [math.prod(int(s) for s in in_shape), *hidden]
    layers: list[nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:]):
        layers += [nn.Linear(a, b), _act(activation)]
    layers.append(nn.Linear(dims[-1], num_classes))
    return Net(nn.Identity(), nn.Sequential(*layers))


def lenet(in_shape: Sequence[int], num_classes: int, activation: str = "relu",
          variant: str = "classic", pool: str = "max") -> nn.Module:
    c, h, w = _image_shape(in_shape, "lenet")
    if variant == "classic":
        pooling = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}
        if pool not in pooling:
            raise unknown_name("pooling", pool, pooling)
        pad = 2 if min(h, w) < 32 else 0
        features = nn.Sequential(
            nn.Conv2d(c, 6, 5, padding=pad), _act(activation), pooling[pool](2),
            nn.Conv2d(6, 16, 5), _act(activation), pooling[pool](2))
        d = _flat_dim(features, in_shape)
        head = nn.Sequential(nn.Linear(d, 120), _act(activation), nn.Linear(120, 84),
                             _act(activation), nn.Linear(84, num_classes))
    elif variant == "dlg":
        features = nn.Sequential(
            nn.Conv2d(c, 12, 5, padding=2, stride=2), _act(activation),
            nn.Conv2d(12, 12, 5, padding=2, stride=2), _act(activation),
            nn.Conv2d(12, 12, 5, padding=2, stride=1), _act(activation))
        head = nn.Linear(_flat_dim(features, in_shape), num_classes)
    else:
        raise unknown_name("lenet variant", variant, ("classic", "dlg"))
    return Net(features, head)


def cnn7(in_shape: Sequence[int], num_classes: int, activation: str = "relu",
         dropout: float = 0.0) -> nn.Module:
    c, _, _ = _image_shape(in_shape, "cnn7")
    features = nn.Sequential(
        nn.Conv2d(c, 32, 3), _act(activation), nn.Conv2d(32, 32, 3), _act(activation),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3), _act(activation), nn.Conv2d(64, 64, 3), _act(activation),
        nn.MaxPool2d(2))
    d = _flat_dim(features, in_shape)
    head = nn.Sequential(nn.Linear(d, 200), _act(activation), nn.Dropout(dropout),
                         nn.Linear(200, 200), _act(activation), nn.Linear(200, num_classes))
    return Net(features, head)


def cnn_small(in_shape: Sequence[int], num_classes: int, activation: str = "relu",
              channels: Sequence[int] = (16, 32), hidden: int = 64) -> nn.Module:
    c, _, _ = _image_shape(in_shape, "cnn-small")
    c1, c2 = channels
    features = nn.Sequential(
        nn.Conv2d(c, c1, 3, padding=1), _act(activation), nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 3, padding=1), _act(activation), nn.MaxPool2d(2))
    head = nn.Sequential(nn.Linear(_flat_dim(features, in_shape), hidden), _act(activation),
                         nn.Linear(hidden, num_classes))
    return Net(features, head)


def _norm(kind: str, ch: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(ch)
    if kind == "group":
        return nn.GroupNorm(min(8, ch), ch)
    raise unknown_name("norm layer", kind, ("batch", "group"))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, norm: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = _norm(norm, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = _norm(norm, cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _norm(norm, cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def resnet(in_shape: Sequence[int], num_classes: int, depth: int = 20, width: int = 1,
           norm: str = "batch") -> nn.Module:
    c, _, _ = _image_shape(in_shape, "resnet")
    if depth < 8 or (depth - 2) % 6:
        raise ConfigError(f"resnet depth must be 6n + 2 (20, 32, 44, 56, ...), got {depth}")
    if width < 1:
        raise ConfigError(f"resnet width must be >= 1, got {width}")
    n = (depth - 2) // 6
    widths = [16 * width, 32 * width, 64 * width]
    layers: list[nn.Module] = [nn.Conv2d(c, widths[0], 3, 1, 1, bias=False), _norm(norm, widths[0]),
                               nn.ReLU()]
    cin = widths[0]
    for stage, w in enumerate(widths):
        for b in range(n):
            layers.append(BasicBlock(cin, w, 2 if stage > 0 and b == 0 else 1, norm))
            cin = w
    layers.append(nn.AdaptiveAvgPool2d(1))
    return Net(nn.Sequential(*layers), nn.Linear(cin, num_classes))


BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "mlp": mlp, "lenet": lenet, "cnn7": cnn7, "cnn-small": cnn_small, "resnet": resnet,
}


def names() -> list[str]:
    return sorted(BUILDERS)


def create(name: str, in_shape: Sequence[int], num_classes: int, **kwargs: Any) -> nn.Module:
    """Build a zoo model by name; unknown names or arguments list the valid ones."""
    if name not in BUILDERS:
        raise unknown_name("model", name, BUILDERS)
    import inspect
    sig = inspect.signature(BUILDERS[name])
    valid = [p for p in sig.parameters if p not in ("in_shape", "num_classes")]
    bad = sorted(set(kwargs) - set(valid))
    if bad:
        raise ConfigError(f"model {name!r}: unknown argument(s) {bad}; valid: {valid}")
    return BUILDERS[name](tuple(in_shape), int(num_classes), **kwargs)
