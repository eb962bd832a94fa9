"""Jacobian-based Saliency Map Attack (Papernot et al., "The Limitations of Deep Learning
in Adversarial Settings", EuroS&P 2016), pairwise variant, L0.

Targeted. Each iteration, for every pair (p, q) of features still in the search domain,
with alpha = d Z_t / d x_p + d Z_t / d x_q (target logit) and
beta = sum_{j != t} (d Z_j / d x_p + d Z_j / d x_q) (all other logits):

    theta > 0: pick the pair maximising -alpha * beta subject to alpha > 0, beta < 0
    theta < 0: the same subject to alpha < 0, beta > 0

and move both features by theta x (value range) (clipped to the bounds), then remove them
from the domain. Stop at success, when a fraction `gamma` of the features has been
changed, or when no admissible pair is left. Defaults theta = +1, gamma = 0.1 (the
cleverhans reference; Papernot et al. report gamma = 14.5% for MNIST).

Batched: the two gradients per example come from one forward and one batched backward;
the pair search is a [N, F, F] tensor operation.
Without a target the attack aims at the most likely other class (the dissertation's
"most" target) and counts any misclassification as success.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bastion.attacks.base import MINIMUM_NORM, Attack, RunOutput, run_in_batches
from bastion.attacks.registry import register
from bastion.core import Classifier, ConfigError


@register
@dataclass
class JSMA(Attack):
    """Jacobian saliency map attack (pairwise, targeted; theta +1, gamma 0.1)."""

    name = "jsma"
    kind = MINIMUM_NORM
    norms = ("l0",)

    theta: float = 1.0
    gamma: float = 0.1
    batch_size: int = 16

    def validate(self) -> None:
        super().validate()
        if self.theta == 0 or abs(self.theta) > 1:
            raise ConfigError(f"jsma: theta must be in [-1, 0) or (0, 1], got {self.theta}")
        if not 0 < self.gamma <= 1:
            raise ConfigError(f"jsma: gamma (max fraction of changed features) must lie in "
                              f"(0, 1], got {self.gamma}")
        if self.batch_size < 1:
            raise ConfigError("jsma: batch_size must be >= 1")

    def _run(self, model: Classifier, x: torch.Tensor, y: torch.Tensor,
             target: torch.Tensor | None) -> RunOutput:
        if target is None:
            with torch.no_grad():
                logits = model.logits(x)
            tgt = logits.scatter(1, y[:, None], -float("inf")).argmax(1)
        else:
            tgt = target
        return run_in_batches(x.shape[0], self.batch_size, lambda sl: self._batch(
            model, x[sl], y[sl], tgt[sl], untargeted=target is None))

    def _batch(self, model: Classifier, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor,
               untargeted: bool) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = model.spec.bounds
        n, dev = x.shape[0], x.device
        nf = x[0].numel()
        increase = self.theta > 0
        xf = x.flatten(1).clone()
        domain = xf < hi if increase else xf > lo
        max_iters = int(nf * self.gamma / 2)
        active = torch.ones(n, dtype=torch.bool, device=dev)
        queries = torch.zeros(n, device=dev)
        not_diag = ~torch.eye(nf, dtype=torch.bool, device=dev)
        ar = torch.arange(n, device=dev)
        for it in range(max_iters + 1):
            xr = xf.view_as(x).detach().requires_grad_(True)
            logits = model(xr)
            queries += active.float()
            pred = logits.argmax(1)
            won = pred != y if untargeted else pred == t
            active &= ~won & (domain.sum(1) >= 2)
            if not bool(active.any()) or it == max_iters:
                break
            grad_out = torch.stack([torch.nn.functional.one_hot(t, logits.shape[1]).float(),
                                    torch.ones_like(logits)])
            (g,) = torch.autograd.grad(logits, xr, grad_outputs=grad_out, is_grads_batched=True)
            gt = g[0].flatten(1)
            go = g[1].flatten(1) - gt
            gt = gt * domain
            go = go * domain
            a = gt[:, :, None] + gt[:, None, :]
            b = go[:, :, None] + go[:, None, :]
            ok = (a > 0) & (b < 0) if increase else (a < 0) & (b > 0)
            ok &= domain[:, :, None] & domain[:, None, :] & not_diag
            score = torch.where(ok, -a * b, torch.zeros_like(a)).flatten(1)
            best_val, best = score.max(1)
            stuck = best_val <= 0
            active &= ~stuck
            p1, p2 = best // nf, best % nf
            step = self.theta * (hi - lo)
            upd = active.float() * step
            with torch.no_grad():
                xf[ar, p1] = (xf[ar, p1] + upd).clamp(lo, hi)
                xf[ar, p2] = (xf[ar, p2] + upd).clamp(lo, hi)
            domain[ar[active], p1[active]] = False
            domain[ar[active], p2[active]] = False
        return xf.view_as(x), queries
