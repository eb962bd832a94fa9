"""The transfer-learning victim of targeted clean-label poisoning (Shafahi et al. 2018,
section 4.1): a pre-trained feature extractor is kept frozen and only the last linear
layer is retrained on the (poisoned) training set. The features are computed once, so
retraining is a softmax regression on [N, D] features; the extractor never changes."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from bastion.attacks.poisoning.features import last_linear, penultimate_batched
from bastion.core import Classifier, check_number
from bastion.data.dataset import Dataset


def retrain_last_layer(clf: Classifier, data: Dataset, epochs: int = 20, lr: float = 0.01,
                       batch_size: int = 64, reinit: bool = False, seed: int = 0) -> Classifier:
    """A copy of `clf` whose last nn.Linear layer is retrained on `data` (Adam, cross-entropy)
    with every other layer frozen.

    Args:
        epochs: passes over `data` (default 20).
        lr: Adam learning rate (default 0.01).
        batch_size: mini-batch size (default 64).
        reinit: start the layer from fresh random weights instead of the current ones.
        seed: seeds the re-initialisation and the mini-batch order.
    """
    check_number(epochs, "epochs", low=1, high=100_000, integer=True)
    check_number(lr, "lr", low=0.0, low_open=True)
    check_number(batch_size, "batch_size", low=1, high=10_000_000, integer=True)
    out = copy.deepcopy(clf)
    out.eval()
    layer = last_linear(out)
    dev = out.device
    feats = penultimate_batched(out, data.x).to(dev)
    y = data.y.to(dev)
    gen = torch.Generator().manual_seed(seed)
    if reinit:
        with torch.no_grad():
            bound = 1.0 / feats.shape[1] ** 0.5
            layer.weight.copy_(torch.empty_like(layer.weight, device="cpu").uniform_(-bound, bound, generator=gen))
            if layer.bias is not None:
                layer.bias.zero_()
    opt = torch.optim.Adam(layer.parameters(), lr=lr)
    with torch.enable_grad():
        for _ in range(int(epochs)):
            order = torch.randperm(y.shape[0], generator=gen).to(dev)
            for i in range(0, y.shape[0], batch_size):
                b = order[i:i + batch_size]
                loss = F.cross_entropy(layer(feats[b]), y[b])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    for p in out.parameters():
        p.grad = None
    return out
