"""Auto-PGD (Croce & Hein, ICML 2020): APGD-CE, APGD-DLR and targeted APGD-T, Linf and L2.

PGD with momentum and a step size that adapts itself, so there is nothing to tune:

    z      = P(x_k + eta_k * d(grad L(x_k)))            d = sign (Linf) or g/||g||_2 (L2)
    x_k+1  = P(x_k + a (z - x_k) + (1 - a)(x_k - x_k-1))  a = 0.75 (1 at the first step)

eta starts at 2 eps. At checkpoints w_j = ceil(p_j N), p_0 = 0, p_1 = 0.22,
p_j+1 = p_j + max(p_j - p_j-1 - 0.03, 0.06), eta is halved and the iterate restarts from
the best point found so far when (1) the loss increased in fewer than rho = 75% of the
steps since the last checkpoint, or (2) eta was not reduced at the last checkpoint and
the best loss has not improved since. Each example keeps its first successful iterate
(else its highest-loss iterate).

Losses: cross-entropy ('ce') or the Difference of Logits Ratio ('dlr', shift and scale
invariant): -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3); targeted DLR:
-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2), with z_pi sorted decreasingly.
APGD-T runs the targeted DLR loss against each of the `n_target_classes` (9) most likely
other classes in turn, each only on the points still robust (AutoAttack's standard
setting). Defaults: 100 iterations, 1 restart, eps 0.3 (Linf) / 2.0 (L2) when None.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bastion.attacks.base import FIXED_BUDGET, Attack, RunOutput
from bastion.attacks.evasion.pgd import (
    DEFAULT_EPS,
    _bshape,
    check_budget,
    flat_norm,
    project,
    random_start,
)
from bastion.attacks.registry import register
from bastion.core import Classifier, ConfigError, InputError, parse_norm

LOSSES = ("ce", "dlr")


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example untargeted DLR loss (higher = closer to misclassification)."""
    srt, ind = logits.sort(dim=1)
    top_is_y = (ind[:, -1] == y).to(logits.dtype)
    zy = logits.gather(1, y[:, None]).squeeze(1)
    other = srt[:, -2] * top_is_y + srt[:, -1] * (1.0 - top_is_y)
    return -(zy - other) / (srt[:, -1] - srt[:, -3] + 1e-12)


def dlr_targeted_loss(logits: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Per-example targeted DLR loss (higher = closer to predicting t)."""
    srt = logits.sort(dim=1).values
    zy = logits.gather(1, y[:, None]).squeeze(1)
    zt = logits.gather(1, t[:, None]).squeeze(1)
    return -(zy - zt) / (srt[:, -1] - 0.5 * (srt[:, -3] + srt[:, -4]) + 1e-12)


def checkpoints(n_iter: int, p1: float = 0.22, decr: float = 0.03, min_len: float = 0.06) -> list[int]:
    """Iterations at which APGD checks its step size (the w_j of the paper)."""
    k = max(math.ceil(p1 * n_iter), 1)
    size_decr, k_min = max(math.ceil(decr * n_iter), 1), max(math.ceil(min_len * n_iter), 1)
    out, w = [], 0
    while w + k <= n_iter:
        w += k
        out.append(w)
        k = max(k - size_decr, k_min)
    return out


@register
@dataclass
class APGD(Attack):
    """Auto-PGD with CE or DLR loss (untargeted, or targeted towards given labels)."""

    name = "apgd"
    aliases = ("apgd-ce",)
    kind = FIXED_BUDGET
    norms = ("linf", "l2")

    eps: float | None = None
    norm: str = "linf"
    loss: str = "ce"
    steps: int = 100
    restarts: int = 1
    rho: float = 0.75
    momentum: float = 0.75
    seed: int = 0
    batch_size: int = 1024

    def validate(self) -> None:
        super().validate()
        if parse_norm(self.norm) not in self.norms:
            raise ConfigError(f"{self.name}: norm {self.norm!r} not supported; use linf or l2")
        if self.loss not in LOSSES:
            raise ConfigError(f"{self.name}: unknown loss {self.loss!r}; valid: {', '.join(LOSSES)}")
        if self.steps < 1 or self.restarts < 1:
            raise ConfigError(f"{self.name}: steps and restarts must be >= 1")
        if not 0 < self.rho <= 1 or not 0 < self.momentum <= 1:
            raise ConfigError(f"{self.name}: rho and momentum must lie in (0, 1]")
        if self.eps is not None and parse_norm(self.norm) == "linf" and self.eps > 1e3:
            raise ConfigError(f"{self.name}: eps {self.eps} is absurd for an Linf budget")

    def budget(self, value_range: float = 1.0) -> float:
        norm = parse_norm(self.norm)
        return float(self.eps) if self.eps is not None else DEFAULT_EPS[norm] * value_range

    def _check_classes(self, model: Classifier, targeted: bool) -> None:
        need = 4 if (targeted and self.loss == "dlr") else 3 if self.loss == "dlr" else 2
        if model.num_classes < need:
            raise InputError(f"{self.name}: the {'targeted ' if targeted else ''}DLR loss needs at "
                             f"least {need} classes, the model has {model.num_classes}; use loss='ce'")

    # ------------------------------------------------------------------ driver
    def _run(self, model: Classifier, x: torch.Tensor, y: torch.Tensor,
             target: torch.Tensor | None) -> RunOutput:
        self._check_classes(model, target is not None)
        check_budget(self.name, parse_norm(self.norm), self.budget(model.spec.value_range), model)
        gen = torch.Generator(device=x.device).manual_seed(self.seed)
        x_adv = x.clone()
        queries = torch.zeros(x.shape[0], device=x.device)
        pred = self.clean_predictions()
        for i in range(0, x.shape[0], self.batch_size):
            sl = slice(i, i + self.batch_size)
            t = None if target is None else target[sl]
            x_adv[sl], queries[sl] = self._attack_batch(model, x[sl], y[sl], t, gen,
                                                        None if pred is None else pred[sl])
        return RunOutput(x_adv, queries)

    def _attack_batch(self, model: Classifier, x: torch.Tensor, y: torch.Tensor,
                      target: torch.Tensor | None, gen: torch.Generator,
                      pred: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Restarts on the points not yet successful; points already adversarial (by the
        clean predictions `pred`, computed here when not given) are kept."""
        if pred is None:
            with torch.no_grad():
                pred = model(x).argmax(-1)
        done = pred == target if target is not None else pred != y
        x_out = x.clone()
        queries = torch.ones(x.shape[0], device=x.device)
        for _ in range(self.restarts):
            idx = torch.nonzero(~done).flatten()
            if idx.numel() == 0:
                break
            t = None if target is None else target[idx]
            xa, ok, q = self.attack_single_run(model, x[idx], y[idx], t, gen)
            x_out[idx] = xa
            queries[idx] += q
            done[idx] = ok
        return x_out, queries

    def _loss(self, logits: torch.Tensor, y: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor:
        if t is None:
            return (F.cross_entropy(logits, y, reduction="none") if self.loss == "ce"
                    else dlr_loss(logits, y))
        if self.loss == "ce":
            return -F.cross_entropy(logits, t, reduction="none")
        return dlr_targeted_loss(logits, y, t)

    def _loss_grad(self, model: Classifier, x: torch.Tensor, y: torch.Tensor,
                   t: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = x.detach().requires_grad_(True)
        logits = model(x)
        loss = self._loss(logits, y, t)
        (g,) = torch.autograd.grad(loss.sum(), x)
        return loss.detach(), g, logits.detach()

    def attack_single_run(self, model: Classifier, x: torch.Tensor, y: torch.Tensor,
                          t: torch.Tensor | None, gen: torch.Generator
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One APGD run on a batch: returns (x_adv, success, queries per example)."""
        norm = parse_norm(self.norm)
        lo, hi = model.spec.bounds
        eps = self.budget(model.spec.value_range)
        n_iter = self.steps
        shape = _bshape(x)
        targeted = t is not None

        def proj(z: torch.Tensor) -> torch.Tensor:
            if norm == "linf":
                return torch.clamp(z, box_lo, box_hi)
            return (x + project(z - x, "l2", eps)).clamp(lo, hi)

        def direction(g: torch.Tensor) -> torch.Tensor:
            return g.sign() if norm == "linf" else g / flat_norm(g, 2).clamp_min(1e-12)

        def success(logits: torch.Tensor) -> torch.Tensor:
            p = logits.argmax(-1)
            return p == t if targeted else p != y

        box_lo, box_hi = (x - eps).clamp(lo, hi), (x + eps).clamp(lo, hi)
        x_adv = random_start(x, norm, eps, gen, lo, hi)
        loss, grad, logits = self._loss_grad(model, x_adv, y, t)
        ok = success(logits)
        x_best_adv = torch.where(ok.view(shape), x_adv, x)
        x_best, grad_best, loss_best = x_adv.clone(), grad.clone(), loss.clone()
        history = torch.empty(n_iter + 1, x.shape[0], device=x.device)
        history[0] = loss

        step = torch.full(shape, 2.0 * eps, device=x.device)
        x_old = x_adv.clone()
        checks = set(checkpoints(n_iter))
        last_w = 0
        loss_best_last = loss_best.clone()
        reduced_last = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)

        for i in range(n_iter):
            with torch.no_grad():
                a = self.momentum if i > 0 else 1.0
                z = proj(torch.addcmul(x_adv, step, direction(grad)))
                # x_adv + a (z - x_adv) + (1 - a) (x_adv - x_old), in three kernels
                x_new = proj(torch.lerp(x_adv, z, a).add_(x_adv - x_old, alpha=1 - a))
                x_old, x_adv = x_adv, x_new
            loss, grad, logits = self._loss_grad(model, x_adv, y, t)
            with torch.no_grad():
                now_ok = success(logits)
                x_best_adv = torch.where((now_ok & ~ok).view(shape), x_adv, x_best_adv)
                ok = ok | now_ok
                history[i + 1] = loss
                better = loss > loss_best
                bv = better.view(shape)
                torch.where(bv, x_adv, x_best, out=x_best)
                torch.where(bv, grad, grad_best, out=grad_best)
                loss_best = torch.where(better, loss, loss_best)
                w = i + 1
                if w in checks:
                    k = w - last_w
                    inc = (history[last_w + 1:w + 1] > history[last_w:w]).sum(0)
                    osc = inc.float() <= k * self.rho
                    no_impr = ~reduced_last & (loss_best_last >= loss_best)
                    cond = osc | no_impr
                    reduced_last = cond
                    loss_best_last = loss_best.clone()
                    cv = cond.view(shape)
                    step = torch.where(cv, step / 2.0, step)
                    x_adv = torch.where(cv, x_best, x_adv)
                    grad = torch.where(cv, grad_best, grad)
                    last_w = w
        x_out = torch.where(ok.view(shape), x_best_adv, x_best)
        queries = torch.full((x.shape[0],), float(n_iter + 1), device=x.device)
        return x_out, ok, queries


@register
@dataclass
class APGDT(APGD):
    """APGD-T: targeted DLR loss against the most likely other classes in turn."""

    name = "apgd-t"
    aliases = ("apgdt",)

    loss: str = "dlr"
    n_target_classes: int = 9

    def validate(self) -> None:
        super().validate()
        if self.n_target_classes < 1:
            raise ConfigError(f"apgd-t: n_target_classes must be >= 1, got {self.n_target_classes}")

    def _run(self, model: Classifier, x: torch.Tensor, y: torch.Tensor,
             target: torch.Tensor | None) -> RunOutput:
        if target is not None:
            return super()._run(model, x, y, target)
        self._check_classes(model, True)
        check_budget(self.name, parse_norm(self.norm), self.budget(model.spec.value_range), model)
        gen = torch.Generator(device=x.device).manual_seed(self.seed)
        n_t = min(self.n_target_classes, model.num_classes - 1)
        x_adv = x.clone()
        queries = torch.zeros(x.shape[0], device=x.device)
        for i in range(0, x.shape[0], self.batch_size):
            sl = slice(i, i + self.batch_size)
            xb, yb = x[sl], y[sl]
            with torch.no_grad():
                logits = model(xb)
            order = logits.argsort(dim=1)
            done = logits.argmax(-1) != yb
            xo = xb.clone()
            q = torch.ones(xb.shape[0], device=x.device)
            for tc in range(2, n_t + 2):
                for _ in range(self.restarts):
                    idx = torch.nonzero(~done).flatten()
                    if idx.numel() == 0:
                        break
                    t = order[idx, -tc]
                    xa, _, qq = self.attack_single_run(model, xb[idx], yb[idx], t, gen)
                    with torch.no_grad():
                        fooled = model(xa).argmax(-1) != yb[idx]
                    xo[idx] = torch.where(fooled.view(_bshape(xa)), xa, xo[idx])
                    q[idx] += qq + 1
                    done[idx] = fooled
            x_adv[sl], queries[sl] = xo, q
        return RunOutput(x_adv, queries)
