"""Basic Iterative Method / I-FGSM (Kurakin et al., 2017) and its targeted form (TBIM).

    x_0 = x,  x_{t+1} = Clip_{x, eps}(x_t + alpha * sign(grad_x CE(f(x_t), y)))

(targeted: x_t - alpha * sign(grad_x CE(f(x_t), t))). No random start. Paper defaults on
the 0-255 scale: alpha = 1, steps = min(eps + 4, 1.25 eps); here alpha = 1/255 of the
input range and eps is in input units. With `cap_total` (default) the number of steps is
also capped at floor(eps / alpha), so the accumulated step length never exceeds eps
(the class project's I-FGSM rule). With `early_stop` each example stops moving at its
first success, which keeps its perturbation as small as the step size allows.
`fast_path` ('off' default, 'auto', 'cuda-graph') and `bf16` as for PGD (see
`bastion.attacks.evasion.fastpath`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from bastion.attacks.base import FIXED_BUDGET, Attack, RunOutput
from bastion.attacks.evasion import fastpath
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
    fast_path: str = "off"
    bf16: bool = False

    def validate(self) -> None:
        super().validate()
        if self.alpha is not None and self.alpha <= 0:
            raise ConfigError(f"bim: alpha must be positive, got {self.alpha}")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"bim: steps must be >= 1, got {self.steps}")
        if self.eps > 1e3:
            raise ConfigError(f"bim: eps {self.eps} is absurd for an Linf budget")
        fastpath.check_mode(self.name, self.fast_path)

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
        mode = fastpath.canonical_mode(self.name, self.fast_path)
        graph = fastpath.resolve(self.name, mode, model.device)
        step = fastpath.bim_step(fastpath.maybe_bf16(model, self.bf16), alpha, target is not None,
                                 self.early_stop)
        loop = fastpath.StepLoop(step, graph=graph, strict=mode == "cuda-graph",
                                 name=self.name)
        out, queries = [], []
        for i in range(0, x.shape[0], self.batch_size):
            sl = slice(i, i + self.batch_size)
            xa, q = self._batch(x[sl], y[sl], None if target is None else target[sl],
                                model.spec.bounds, steps, loop)
            out.append(xa)
            queries.append(q)
        return RunOutput(torch.cat(out), torch.cat(queries), {"alpha": alpha, "steps": steps})

    def _batch(self, x0: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None,
               bounds: tuple[float, float], steps: int, loop: fastpath.StepLoop
               ) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = bounds
        labels = target if target is not None else y
        box_lo = (x0 - self.eps).clamp(lo, hi)
        box_hi = (x0 + self.eps).clamp(lo, hi)
        active = torch.ones(x0.shape[0], dtype=torch.bool, device=x0.device)
        queries = torch.zeros(x0.shape[0], device=x0.device)
        # the step (fastpath.bim_step: CE gradient, sign step, early-stop mask, clip) runs
        # eagerly or as a replayed CUDA graph
        x, _, queries = loop.run((x0.clone(), active, queries), (labels, y, box_lo, box_hi), steps)
        return x, queries
