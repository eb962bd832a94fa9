"""Universal adversarial perturbation (Moosavi-Dezfooli, Fawzi, Fawzi and Frossard,
"Universal adversarial perturbations", CVPR 2017).

Learns one perturbation v for the whole batch X:

    v = 0
    repeat (at most `max_iter` passes over X in random order):
        for x_i in X:
            if k(x_i + v) == k(x_i):
                dv = DeepFool(x_i + v)             (minimal step to the boundary)
                if DeepFool converged: v = Proj_{||v||_p <= eps}(v + dv)
    until the fooling rate mean_i [k(x_i + v) != k(x_i)] >= 1 - delta

and returns clip(x + v) for every input; v itself is in `extras["perturbation"]`.
Defaults: delta 0.2 and DeepFool inner steps (overshoot 0.02, 10 iterations) as in the
paper; eps 0.3 (Linf) or 4.0 (L2) on [0, 1] inputs (the paper's 10/255 Linf and
2000 L2 were for ImageNet-sized inputs on a 0..255 scale), at most 10 passes.
`inner_batch` > 1 runs DeepFool on that many still-unfooled inputs at once and adds the
mean of their steps (a batched variant; 1 is the paper's sequential algorithm).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bastion.attacks.base import FIXED_BUDGET, Attack, RunOutput
from bastion.attacks.evasion.deepfool import deepfool_batch
from bastion.attacks.evasion.pgd import check_budget
from bastion.attacks.registry import register
from bastion.core import Classifier, ConfigError, parse_norm, unknown_name

_DEFAULT_EPS = {"linf": 0.3, "l2": 4.0}


def project(v: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Project a perturbation onto the Lp ball of radius eps."""
    if norm == "linf":
        return v.clamp(-eps, eps)
    n = v.norm()
    return v * min(1.0, eps / max(float(n), 1e-12))


@register
@dataclass
class Universal(Attack):
    """Universal adversarial perturbation (one v for the batch; DeepFool inner steps)."""

    name = "universal"
    aliases = ("uap",)
    kind = FIXED_BUDGET
    norms = ("linf", "l2")
    supports_targeted = False

    norm: str = "linf"
    eps: float | None = None
    delta: float = 0.2
    max_iter: int = 10
    df_max_iter: int = 10
    overshoot: float = 0.02
    candidates: int = 10
    inner_batch: int = 1
    seed: int = 0

    def validate(self) -> None:
        super().validate()
        norm = parse_norm(self.norm)
        if norm not in self.norms:
            raise unknown_name("universal norm", norm, self.norms)
        if self.eps is not None and not 0 < self.eps < float("inf"):
            raise ConfigError(f"universal: eps must be positive and finite, got {self.eps}")
        if not 0 <= self.delta < 1:
            raise ConfigError(f"universal: delta must lie in [0, 1), got {self.delta}")
        if self.max_iter < 1 or self.df_max_iter < 1 or self.inner_batch < 1:
            raise ConfigError("universal: max_iter, df_max_iter and inner_batch must be >= 1")

    @property
    def epsilon(self) -> float:
        return self.eps if self.eps is not None else _DEFAULT_EPS[parse_norm(self.norm)]

    def _run(self, model: Classifier, x: torch.Tensor, y: torch.Tensor,
             target: torch.Tensor | None) -> RunOutput:
        lo, hi = model.spec.bounds
        norm = parse_norm(self.norm)
        eps = self.epsilon
        check_budget(self.name, norm, eps, model)
        n, dev = x.shape[0], x.device
        gen = torch.Generator().manual_seed(self.seed)
        k0 = model.predict(x)
        queries = torch.ones(n, device=dev)
        v = torch.zeros_like(x[0])
        rate = 0.0
        passes = 0
        for _ in range(self.max_iter):
            passes += 1
            order = torch.randperm(n, generator=gen).to(dev)
            for s in range(0, n, self.inner_batch):
                ids = order[s:s + self.inner_batch]
                xi = (x[ids] + v).clamp(lo, hi)
                with torch.no_grad():
                    still = model(xi).argmax(1) == k0[ids]
                queries[ids] += 1
                if not bool(still.any()):
                    continue
                ids, xi = ids[still], xi[still]
                adv, iters, q = deepfool_batch(model, xi, k0[ids], "l2", self.overshoot,
                                               self.df_max_iter, self.candidates)
                queries[ids] += q
                conv = iters < self.df_max_iter
                if not bool(conv.any()):
                    continue
                dv = (adv - xi)[conv].mean(0)
                v = project(v + dv, eps, norm)
            with torch.no_grad():
                fooled = model.predict((x + v).clamp(lo, hi)) != k0
            queries += 1
            rate = float(fooled.float().mean())
            if rate >= 1 - self.delta:
                break
        x_adv = (x + v).clamp(lo, hi)
        return RunOutput(x_adv, queries, {"perturbation": v.detach(), "fooling_rate": rate,
                                          "passes": passes})
