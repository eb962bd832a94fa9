"""Shared gradient helpers for white-box attacks."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bastion.core import Classifier


def ce_grad(model: Classifier, x: torch.Tensor, labels: torch.Tensor,
            targeted: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient of the summed cross-entropy w.r.t. the input, signed so that ascending it
    helps the attack (away from y untargeted, towards the target when targeted).
    Returns (grad, logits). Only the input gradient is computed, never weight gradients."""
    x = x.detach().requires_grad_(True)
    logits = model(x)
    loss = F.cross_entropy(logits, labels, reduction="sum")
    if targeted:
        loss = -loss
    (grad,) = torch.autograd.grad(loss, x)
    return grad, logits.detach()
