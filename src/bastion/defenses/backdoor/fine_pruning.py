"""Fine-pruning (Liu, Dolan-Gavitt & Garg 2018): backdoor neurons lie dormant on clean
inputs, so prune the last convolutional layer's channels in increasing order of their
mean activation on clean data until clean validation accuracy falls by more than a set
amount, then fine-tune on clean data (the pruned channels stay zero)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from bastion.core import Classifier, ConfigError, check_number
from bastion.data.dataset import Dataset
from bastion.training.fit import TrainConfig, fit


@dataclass(frozen=True)
class FinePruningConfig:
    """max_accuracy_drop: stop pruning before clean accuracy falls more than this (Liu et
    al. used 4 points); step_fraction: channels pruned per step; epochs, lr: fine-tuning."""

    max_accuracy_drop: float = 0.04
    step_fraction: float = 0.05
    epochs: int = 1
    lr: float = 5e-4
    batch_size: int = 64
    seed: int = 0

    def validate(self) -> None:
        check_number(self.max_accuracy_drop, "max_accuracy_drop", low=0.0, high=1.0)
        check_number(self.step_fraction, "step_fraction", low=0.0, high=1.0, low_open=True)
        check_number(self.epochs, "epochs", low=0, high=10_000, integer=True)
        check_number(self.lr, "lr", low=0.0, low_open=True)


def _last_conv(clf: Classifier) -> nn.Conv2d:
    convs = [m for m in clf.module.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ConfigError("fine-pruning needs a network with an nn.Conv2d layer")
    return convs[-1]


def _set_channels(conv: nn.Conv2d, keep: torch.Tensor) -> None:
    with torch.no_grad():
        conv.weight.mul_(keep.view(-1, 1, 1, 1).to(conv.weight))
        if conv.bias is not None:
            conv.bias.mul_(keep.to(conv.bias))


def fine_prune(clf: Classifier, clean: Dataset, val: Dataset,
               cfg: FinePruningConfig = FinePruningConfig()) -> dict[str, Any]:
    """Prune and fine-tune `clf` in place; `clean` is the defender's clean data for
    activations and fine-tuning, `val` the clean validation set for the accuracy check."""
    cfg.validate()
    conv = _last_conv(clf)
    box: list[torch.Tensor] = []
    h = conv.register_forward_hook(lambda m, i, o: box.append(o.detach().relu().mean((0, 2, 3)).cpu()))
    try:
        clf.predict(clean.x)
    finally:
        h.remove()
    act = torch.stack(box).mean(0)
    order = act.argsort()
    ch = order.numel()
    base = clf.accuracy(val.x, val.y)
    original = (conv.weight.detach().clone(), None if conv.bias is None else conv.bias.detach().clone())
    step = max(1, round(cfg.step_fraction * ch))
    keep = torch.ones(ch)
    pruned = 0
    while pruned + step < ch:
        trial = keep.clone()
        trial[order[pruned:pruned + step]] = 0
        with torch.no_grad():
            conv.weight.copy_(original[0])
            if conv.bias is not None and original[1] is not None:
                conv.bias.copy_(original[1])
        _set_channels(conv, trial)
        if base - clf.accuracy(val.x, val.y) > cfg.max_accuracy_drop:
            break
        keep, pruned = trial, pruned + step
    with torch.no_grad():
        conv.weight.copy_(original[0])
        if conv.bias is not None and original[1] is not None:
            conv.bias.copy_(original[1])
    _set_channels(conv, keep)
    pruned_acc = clf.accuracy(val.x, val.y)
    hooks = [conv.weight.register_hook(lambda g: g * keep.view(-1, 1, 1, 1).to(g))]
    if conv.bias is not None:
        hooks.append(conv.bias.register_hook(lambda g: g * keep.to(g)))
    try:
        if cfg.epochs:
            fit(clf, clean, None, TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                                              seed=cfg.seed, progress=False))
    finally:
        for hk in hooks:
            hk.remove()
    _set_channels(conv, keep)
    clf.eval()
    return {"pruned": pruned, "channels": ch, "pruned_fraction": pruned / ch, "accuracy_before": base,
            "accuracy_pruned": pruned_acc, "accuracy_after": clf.accuracy(val.x, val.y)}
