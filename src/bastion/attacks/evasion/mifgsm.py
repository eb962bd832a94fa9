"""Momentum Iterative FGSM (Dong et al., 2018).

    g_{t+1} = mu * g_t + grad_x L(x_t) / ||grad_x L(x_t)||_1
    x_{t+1} = Clip_{x, eps}(x_t + alpha * sign(g_{t+1}))          (Linf)
    x_{t+1} = Proj_{B_2(x, eps)}(x_t + alpha * g_{t+1} / ||g_{t+1}||_2)   (L2 variant)

Paper defaults: T = 10 iterations, alpha = eps / T, decay mu = 1.0, starting at x (no
random start). Targeted: descend the target-class cross-entropy. eps defaults to 0.3 for
Linf (MNIST) and 2.0 for L2 when left at None.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bastion.attacks.base import FIXED_BUDGET, Attack, RunOutput
from bastion.attacks.evasion._grad import ce_grad
from bastion.attacks.evasion.pgd import DEFAULT_EPS, check_budget, flat_norm, project
from bastion.attacks.registry import register
from bastion.core import Classifier, ConfigError, parse_norm


@register
@dataclass
class MIFGSM(Attack):
    """Momentum iterative FGSM: a decayed running sum of L1-normalised gradients."""

    name = "mifgsm"
    aliases = ("mi-fgsm",)
    kind = FIXED_BUDGET
    norms = ("linf", "l2")

    eps: float | None = None
    steps: int = 10
    decay: float = 1.0
    alpha: float | None = None
    norm: str = "linf"
    batch_size: int = 1024

    def validate(self) -> None:
        super().validate()
        if parse_norm(self.norm) not in self.norms:
            raise ConfigError(f"mifgsm: norm {self.norm!r} not supported; use linf or l2")
        if self.steps < 1:
            raise ConfigError(f"mifgsm: steps must be >= 1, got {self.steps}")
        if self.decay < 0:
            raise ConfigError(f"mifgsm: decay must be non-negative, got {self.decay}")

    def _run(self, model: Classifier, x: torch.Tensor, y: torch.Tensor,
             target: torch.Tensor | None) -> RunOutput:
        norm = parse_norm(self.norm)
        eps = self.eps if self.eps is not None else DEFAULT_EPS[norm] * model.spec.value_range
        check_budget(self.name, norm, eps, model)
        alpha = self.alpha if self.alpha is not None else eps / self.steps
        lo, hi = model.spec.bounds
        out = []
        for i in range(0, x.shape[0], self.batch_size):
            sl = slice(i, i + self.batch_size)
            x0 = x[sl]
            targeted = target is not None
            labels = target[sl] if targeted else y[sl]
            xa = x0.clone()
            mom = torch.zeros_like(x0)
            for _ in range(self.steps):
                g, _ = ce_grad(model, xa, labels, targeted)
                mom = self.decay * mom + g / flat_norm(g, 1).clamp_min(1e-12)
                if norm == "linf":
                    xa = (x0 + (xa + alpha * mom.sign() - x0).clamp(-eps, eps)).clamp(lo, hi)
                else:
                    xa = xa + alpha * mom / flat_norm(mom, 2).clamp_min(1e-12)
                    xa = (x0 + project(xa - x0, "l2", eps)).clamp(lo, hi)
            out.append(xa)
        return RunOutput(torch.cat(out), torch.full((x.shape[0],), float(self.steps), device=x.device))
