"""Auto-PGD (Croce & Hein, ICML 2020): APGD-CE, APGD-DLR and targeted APGD-T, Linf and L2.

PGD with momentum and a step size that adapts itself, so there is nothing to tune:

    z      = P(x_k + eta_k * d(grad L(x_k)))            d = sign (Linf) or g/||g||_2 (L2)
    x_k+1  = P(x_k + a (z - x_k) + (1 - a)(x_k - x_k-1))  a = 0.75 (1 at the first step)

eta starts at 2 eps. At checkpoints w_j = ceil(p_j N), p_0 = 0, p_1 = 0.22,
p_j+1 = p_j + max(p_j - p_j-1 - 0.03, 0.06), eta is halved and the iterate restarts from
the best point found so far when (1) the loss increased in fewer than rho = 75% of the
steps since the last checkpoint, or (2) eta was not reduced at the last checkpoint and
the best loss has not improved since. Each example keeps its first successful iterate
(else its highest-loss iterate); since later iterations cannot change that, an example
leaves the batch at its first success (the others' trajectories are per example and do not
change).

Losses: cross-entropy ('ce') or the Difference of Logits Ratio ('dlr', shift and scale
invariant): -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3); targeted DLR:
-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2), with z_pi sorted decreasingly.
APGD-T runs the targeted DLR loss against each of the `n_target_classes` (9) most likely
other classes, and a point counts as broken once any of these runs misclassifies it
(AutoAttack's standard setting, which runs the classes in turn on the points still robust).
The runs are batched: one APGD run over examples x target classes, where an example's rows
all stop at its first misclassification, which breaks the same points as the sequential
loop in one pass of `steps` iterations. Defaults: 100 iterations, 1 restart, eps 0.3
(Linf) / 2.0 (L2) when None.
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
                          t: torch.Tensor | None, gen: torch.Generator,
                          group: torch.Tensor | None = None, untargeted_success: bool = False
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One APGD run on a batch of rows: returns (x_adv, success, queries per row).

        A row stops as soon as it succeeds: its first successful iterate is final, so the
        remaining iterations could not change its result, and it is dropped from the batch
        (with `group`, a row id per row, every row of a group stops once one of them
        succeeds: the rows of APGD-T's target classes for one example). The other rows'
        trajectories are unchanged, since every operation is per row. Success is the
        target label when `t` is given, else (or with `untargeted_success`, AutoAttack's
        criterion for APGD-T) any label but `y`. Queries count the gradient evaluations
        each row took (n_iter + 1 for a row that never succeeds)."""
        norm = parse_norm(self.norm)
        lo, hi = model.spec.bounds
        eps = self.budget(model.spec.value_range)
        n_iter = self.steps
        n = x.shape[0]
        shape = _bshape(x)
        dev = x.device
        check_target = t is not None and not untargeted_success

        def proj(z: torch.Tensor, x0: torch.Tensor, b_lo: torch.Tensor, b_hi: torch.Tensor
                 ) -> torch.Tensor:
            if norm == "linf":
                return torch.clamp(z, b_lo, b_hi)
            return (x0 + project(z - x0, "l2", eps)).clamp(lo, hi)

        def direction(g: torch.Tensor) -> torch.Tensor:
            return g.sign() if norm == "linf" else g / flat_norm(g, 2).clamp_min(1e-12)

        x_out = x.clone()
        ok_out = torch.zeros(n, dtype=torch.bool, device=dev)
        q_out = torch.full((n,), float(n_iter + 1), device=dev)

        # per-row state of the rows still running; `act` maps them to the input rows
        act = torch.arange(n, device=dev)
        x0, yy, tt = x, y, t
        grp = group
        n_groups = 0 if group is None else int(group.max()) + 1
        b_lo, b_hi = (x - eps).clamp(lo, hi), (x + eps).clamp(lo, hi)
        x_adv = random_start(x, norm, eps, gen, lo, hi)
        loss, grad, logits = self._loss_grad(model, x_adv, y, t)
        x_best, grad_best, loss_best = x_adv.clone(), grad.clone(), loss.clone()
        history = torch.empty(n_iter + 1, n, device=dev)
        history[0] = loss
        step = torch.full(shape, 2.0 * eps, device=dev)
        x_old = x_adv.clone()
        checks = set(checkpoints(n_iter))
        last_w = 0
        loss_best_last = loss_best.clone()
        reduced_last = torch.ones(n, dtype=torch.bool, device=dev)

        for i in range(n_iter + 1):
            with torch.no_grad():
                if i > 0:
                    a = self.momentum if i > 1 else 1.0
                    z = proj(torch.addcmul(x_adv, step, direction(grad)), x0, b_lo, b_hi)
                    # x_adv + a (z - x_adv) + (1 - a) (x_adv - x_old), in three kernels
                    x_new = proj(torch.lerp(x_adv, z, a).add_(x_adv - x_old, alpha=1 - a),
                                 x0, b_lo, b_hi)
                    x_old, x_adv = x_adv, x_new
            if i > 0:
                loss, grad, logits = self._loss_grad(model, x_adv, yy, tt)
            with torch.no_grad():
                p = logits.argmax(-1)
                ok = p == tt if check_target else p != yy
                if i > 0:
                    history[i] = loss
                    better = loss > loss_best
                    bv = better.view(_bshape(x_adv))
                    torch.where(bv, x_adv, x_best, out=x_best)
                    torch.where(bv, grad, grad_best, out=grad_best)
                    loss_best = torch.where(better, loss, loss_best)
                if bool(ok.any()):
                    # rows done: this iterate is their result; drop them (and their group)
                    rows = act[ok]
                    x_out[rows] = x_adv[ok]
                    ok_out[rows] = True
                    if grp is None:
                        stop = ok
                    else:
                        hit = torch.zeros(n_groups, dtype=torch.bool, device=dev)
                        hit[grp[ok]] = True
                        stop = hit[grp]
                    q_out[act[stop]] = float(i + 1)
                    keep = ~stop
                    if not bool(keep.any()):
                        return x_out, ok_out, q_out
                    act, x0, yy = act[keep], x0[keep], yy[keep]
                    tt = None if tt is None else tt[keep]
                    grp = None if grp is None else grp[keep]
                    b_lo, b_hi = b_lo[keep], b_hi[keep]
                    x_adv, x_old, grad = x_adv[keep], x_old[keep], grad[keep]
                    x_best, grad_best = x_best[keep], grad_best[keep]
                    loss_best, loss_best_last = loss_best[keep], loss_best_last[keep]
                    reduced_last, step = reduced_last[keep], step[keep]
                    history = history[:, keep]
                w = i
                if w in checks:
                    k = w - last_w
                    inc = (history[last_w + 1:w + 1] > history[last_w:w]).sum(0)
                    osc = inc.float() <= k * self.rho
                    no_impr = ~reduced_last & (loss_best_last >= loss_best)
                    cond = osc | no_impr
                    reduced_last = cond
                    loss_best_last = loss_best.clone()
                    cv = cond.view(_bshape(x_adv))
                    step = torch.where(cv, step / 2.0, step)
                    x_adv = torch.where(cv, x_best, x_adv)
                    grad = torch.where(cv, grad_best, grad)
                    last_w = w
        # the rows that never succeeded return their highest-loss iterate
        x_out[act] = x_best
        return x_out, ok_out, q_out


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
        with torch.no_grad():
            logits = torch.cat([model(x[i:i + self.batch_size])
                                for i in range(0, x.shape[0], self.batch_size)])
        # the targets: the n_t most likely classes after the top one, most likely first
        targets = logits.argsort(dim=1, descending=True)[:, 1:n_t + 1]
        done = logits.argmax(-1) != y
        x_adv = x.clone()
        queries = torch.ones(x.shape[0], device=x.device)
        for _ in range(self.restarts):
            idx = torch.nonzero(~done).flatten()
            if idx.numel() == 0:
                break
            # balanced chunks of at most batch_size rows (one row per example and target)
            per = max(1, self.batch_size // n_t)
            n_chunks = -(-idx.numel() // per)
            for chunk in idx.tensor_split(n_chunks):
                xa, ok, q = self._targets_batched(model, x[chunk], y[chunk], targets[chunk], gen)
                x_adv[chunk[ok]] = xa[ok]
                queries[chunk] += q
                done[chunk] = ok
        return RunOutput(x_adv, queries)

    def _targets_batched(self, model: Classifier, x: torch.Tensor, y: torch.Tensor,
                         targets: torch.Tensor, gen: torch.Generator
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """APGD-T against all target classes of a chunk in one batch of examples x targets.

        AutoAttack runs the target classes one after the other, each on the points still
        robust. Here every (example, target) pair is a row of one APGD run and an example's
        rows stop as soon as one of them misclassifies it, so the set of points broken is
        the sequential one (each pair is an independent APGD run), in one loop of `steps`
        iterations instead of n_t. Returns per example (x_adv, fooled, gradient evaluations);
        the adversarial input of an example fooled by several targets at the same iteration
        is the one of the most likely target."""
        m, n_t = targets.shape
        rows_x = x.repeat_interleave(n_t, dim=0)
        rows_y = y.repeat_interleave(n_t)
        group = torch.arange(m, device=x.device).repeat_interleave(n_t)
        xa, ok, q = self.attack_single_run(model, rows_x, rows_y, targets.flatten(), gen,
                                           group=group, untargeted_success=True)
        ok = ok.view(m, n_t)
        first = ok.float().argmax(1)  # the first (most likely) successful target per example
        pick = torch.arange(m, device=x.device) * n_t + first
        fooled = ok.any(1)
        x_out = torch.where(fooled.view(_bshape(x)), xa[pick], x)
        return x_out, fooled, q.view(m, n_t).sum(1)
