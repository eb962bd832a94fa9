"""Fast Gradient Sign Method (Goodfellow et al., 2015) and its targeted form.

Untargeted: x' = clip(x + eps * sign(grad_x CE(f(x), y))).
Targeted (TFGSM): x' = clip(x - eps * sign(grad_x CE(f(x), t))).
Dissertation ch. 2 evaluates both at eps = 0.3 on MNIST.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bastion.attacks.base import FIXED_BUDGET, Attack, RunOutput
from bastion.attacks.evasion._grad import ce_grad
from bastion.attacks.evasion.pgd import check_budget
from bastion.attacks.registry import register
from bastion.core import Classifier


@register
@dataclass
class FGSM(Attack):
    """Fast Gradient Sign Method: one signed-gradient step of size eps (Linf)."""

    name = "fgsm"
    kind = FIXED_BUDGET
    norms = ("linf",)

    eps: float = 0.3
    batch_size: int = 1024

    def _run(self, model: Classifier, x: torch.Tensor, y: torch.Tensor,
             target: torch.Tensor | None) -> RunOutput:
        check_budget(self.name, "linf", self.eps, model)
        lo, hi = model.spec.bounds
        out = []
        for i in range(0, x.shape[0], self.batch_size):
            xb = x[i:i + self.batch_size]
            labels = (target if target is not None else y)[i:i + self.batch_size]
            g, _ = ce_grad(model, xb, labels, targeted=target is not None)
            out.append((xb + self.eps * g.sign()).clamp(lo, hi))
        queries = torch.ones(x.shape[0], device=x.device)
        return RunOutput(torch.cat(out), queries)
