"""Penultimate-layer features of a classifier: the input of its last nn.Linear layer."""

from __future__ import annotations

import torch
from torch import nn

from bastion.core import Classifier, ConfigError


def last_linear(clf: Classifier) -> nn.Linear:
    lin = [m for m in clf.module.modules() if isinstance(m, nn.Linear)]
    if not lin:
        raise ConfigError("this method needs a network whose last layer is nn.Linear (its input is the "
                          "penultimate feature)")
    return lin[-1]


def penultimate(clf: Classifier, x: torch.Tensor, grad: bool = False) -> torch.Tensor:
    """Features [N, D] of a batch on the model's device (differentiable when grad=True)."""
    box: list[torch.Tensor] = []
    h = last_linear(clf).register_forward_hook(lambda m, inp, out: box.append(inp[0]))
    try:
        if grad:
            clf(x)
        else:
            with torch.no_grad():
                clf(x)
    finally:
        h.remove()
    return box[0].flatten(1)


def penultimate_batched(clf: Classifier, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Features of a whole data set, in chunks, returned on the CPU."""
    dev = clf.device
    out = [penultimate(clf, x[i:i + batch_size].to(dev)).cpu() for i in range(0, x.shape[0], batch_size)]
    return torch.cat(out) if out else torch.empty(0, 0)
