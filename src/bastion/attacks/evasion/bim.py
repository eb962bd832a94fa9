"""Basic Iterative Method / I-FGSM (Kurakin et al., 2017) and its targeted form (TBIM).

    x_0 = x,  x_{t+1} = Clip_{x, eps}(x_t + alpha * sign(grad_x CE(f(x_t), y)))

(targeted: x_t - alpha * sign(grad_x CE(f(x_t), t))). No random start. Paper defaults on
the 0-255 scale: alpha = 1, steps = min(eps + 4, 1.25 eps); here alpha = 1/255 of the
input range and eps is in input units. With `cap_total` (default) the number of steps is
also capped at floor(eps / alpha), so the accumulated step length never exceeds eps
(the class project's I-FGSM rule). With `early_stop` each example stops moving at its
first success, which keeps its perturbation as small as the step size allows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from bastion.attacks.base import FIXED_BUDGET, Attack, RunOutput
from bastion.attacks.evasion._grad import ce_grad
from bastion.attacks.evasion.pgd import check_budget
from bastion.attacks.registry import register
from bastion.core import Classifier, ConfigError


@register
@dataclass
class BIM(Attack):
    """Basic Iterative Method (I-FGSM): repeated small FGSM steps clipped to the eps-ball."""

    name = "bim"
    aliases = ("ifgsm", "i-fgsm")
    kind = FIXED_BUDGET
    norms = ("linf",)

    eps: float = 0.3
    alpha: float | None = None
    steps: int | None = None
    cap_total: bool = True
    early_stop: bool = False
    batch_size: int = 1024

    def validate(self) -> None:
        super().validate()
        if self.alpha is not None and self.alpha <= 0:
            raise ConfigError(f"bim: alpha must be positive, got {self.alpha}")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"bim: steps must be >= 1, got {self.steps}")
        if self.eps > 1e3:
            raise ConfigError(f"bim: eps {self.eps} is absurd for an Linf budget")

    def schedule(self, value_range: float = 1.0) -> tuple[float, int]:
        """(alpha, steps) actually used for inputs whose bounds span `value_range`."""
        alpha = self.alpha if self.alpha is not None else value_range / 255.0
        if self.steps is not None:
            steps = self.steps
        else:
            e255 = self.eps * 255.0 / value_range
            steps = max(1, int(min(e255 + 4, 1.25 * e255)))
        if self.cap_total and self.eps > 0:
            steps = max(1, min(steps, math.floor(self.eps / alpha + 1e-6)))
        return alpha, steps

    def _run(self, model: Classifier, x: torch.Tensor, y: torch.Tensor,
             target: torch.Tensor | None) -> RunOutput:
        check_budget(self.name, "linf", self.eps, model)
        alpha, steps = self.schedule(model.spec.value_range)
        out, queries = [], []
        for i in range(0, x.shape[0], self.batch_size):
            sl = slice(i, i + self.batch_size)
            xa, q = self._batch(model, x[sl], y[sl], None if target is None else target[sl],
                                alpha, steps)
            out.append(xa)
            queries.append(q)
        return RunOutput(torch.cat(out), torch.cat(queries), {"alpha": alpha, "steps": steps})

    def _batch(self, model: Classifier, x0: torch.Tensor, y: torch.Tensor,
               target: torch.Tensor | None, alpha: float, steps: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = model.spec.bounds
        targeted = target is not None
        labels = target if targeted else y
        box_lo = (x0 - self.eps).clamp(lo, hi)
        box_hi = (x0 + self.eps).clamp(lo, hi)
        x = x0.clone()
        active = torch.ones(x0.shape[0], dtype=torch.bool, device=x0.device)
        queries = torch.zeros(x0.shape[0], device=x0.device)
        view = (-1,) + (1,) * (x0.dim() - 1)
        for _ in range(steps):
            g, logits = ce_grad(model, x, labels, targeted)
            queries += active.float()
            step = alpha * g.sign()
            if self.early_stop:
                pred = logits.argmax(-1)
                done = pred == target if targeted else pred != y
                active = active & ~done
                step = step * active.view(view)
            x = torch.max(torch.min(x + step, box_hi), box_lo)
        return x, queries
