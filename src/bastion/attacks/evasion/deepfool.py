"""DeepFool (Moosavi-Dezfooli, Fawzi and Frossard, "DeepFool: a simple and accurate
method to fool deep neural networks", CVPR 2016), L2 and Linf, plus the class project's
"dynamic" variant with a decaying step multiplier.

Multi-class DeepFool linearises the classifier around the current point x_i and steps to
the nearest linearised boundary among the candidate classes k != k0:

    w_k = grad f_k(x_i) - grad f_k0(x_i),   f'_k = f_k(x_i) - f_k0(x_i)
    l = argmin_k |f'_k| / ||w_k||_q          (q = 2 for L2, q = 1 for Linf)
    r_i = (|f'_l| + 1e-4) / ||w_l||_2^2 w_l  (L2)   or  (|f'_l| + 1e-4) / ||w_l||_1 sign(w_l)  (Linf)

until the label of x0 + (1 + overshoot) sum_i r_i changes (overshoot 0.02, at most 50
iterations, the top-10 classes as candidates: the paper's defaults).

Batched: all examples iterate together; the gradients of the K candidate logits are
obtained from one forward pass and one vectorised backward pass (a batched
vector-Jacobian product), not a Python loop over examples or classes.

Dynamic DeepFool (class project): the per-step multiplier starts at 1 + eta0 and decays
logarithmically, (1 + overshoot + (eta0 - overshoot) / (1 + ln(1 + i))), so the first
steps move faster towards the boundary and later steps are the paper's small overshoot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from bastion.attacks.base import MINIMUM_NORM, Attack, RunOutput
from bastion.attacks.registry import register
from bastion.core import Classifier, ConfigError, parse_norm, unknown_name


def candidate_gradients(model: Classifier, x: torch.Tensor, classes: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits of `classes` [N, K] at x and their input gradients [N, K, *x.shape[1:]].

    One forward pass; the K backward passes run as one batched vector-Jacobian product
    (falling back to a K-fold replicated batch if the model does not support it).
    Returns (full logits [N, C], selected logits [N, K], gradients)."""
    n, k = classes.shape
    xr = x.detach().requires_grad_(True)
    logits = model(xr)
    sel = logits.gather(1, classes)
    try:
        eye = torch.zeros(k, n, k, device=x.device, dtype=logits.dtype)
        eye[torch.arange(k), :, torch.arange(k)] = 1
        (g,) = torch.autograd.grad(sel, xr, grad_outputs=eye, is_grads_batched=True)
        grads = g.transpose(0, 1)
    except RuntimeError:
        xk = x.detach().unsqueeze(1).expand(n, k, *x.shape[1:]).reshape(n * k, *x.shape[1:])
        xk = xk.clone().requires_grad_(True)
        out = model(xk).gather(1, classes.reshape(-1, 1)).sum()
        (g,) = torch.autograd.grad(out, xk)
        grads = g.view(n, k, *x.shape[1:])
    return logits.detach(), sel.detach(), grads


def deepfool_batch(model: Classifier, x: torch.Tensor, orig: torch.Tensor, norm: str,
                   overshoot: float, max_iter: int, candidates: int,
                   target: torch.Tensor | None = None, eta0: float | None = None,
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batched DeepFool core from x, away from class `orig` (or towards `target`).

    Returns (x_adv, per-example iterations, per-example forward passes). The result is
    clipped to the model's bounds but never to a budget. `eta0` turns on the dynamic
    (decaying step) variant."""
    lo, hi = model.spec.bounds
    n, dev = x.shape[0], x.device
    view = (-1,) + (1,) * (x.dim() - 1)
    with torch.no_grad():
        logits0 = model(x)
    if target is not None:
        cls = torch.stack([orig, target], 1)
    else:
        k = min(candidates, logits0.shape[1])
        others = logits0.scatter(1, orig[:, None], -float("inf")).topk(k - 1, 1).indices
        cls = torch.cat([orig[:, None], others], 1)
    r_tot = torch.zeros_like(x)
    x_adv = x.clone()
    iters = torch.zeros(n, device=dev)
    queries = torch.ones(n, device=dev)
    pred = logits0.argmax(1)
    active = pred != target if target is not None else pred == orig
    for i in range(max_iter):
        if not bool(active.any()):
            break
        idx = active.nonzero().squeeze(1)
        _, f, g = candidate_gradients(model, x_adv[idx], cls[idx])
        queries[idx] += 1
        w = g[:, 1:] - g[:, :1]                          # [M, K-1, ...]
        fd = f[:, 1:] - f[:, :1]                         # [M, K-1]
        wf = w.flatten(2)
        wn = wf.norm(dim=2) if norm == "l2" else wf.abs().sum(2)
        dist = (fd.abs() + 1e-4) / (wn + 1e-8)
        best = dist.argmin(1)
        ar = torch.arange(idx.numel(), device=dev)
        wl = w[ar, best]
        if norm == "l2":
            r = ((fd[ar, best].abs() + 1e-4) / (wn[ar, best] ** 2 + 1e-8)).view(view) * wl
        else:
            r = ((fd[ar, best].abs() + 1e-4) / (wn[ar, best] + 1e-8)).view(view) * wl.sign()
        if eta0 is not None:
            mult = 1 + overshoot + (eta0 - overshoot) / (1 + math.log1p(i))
            r = r * mult
        r_tot[idx] += r
        x_adv[idx] = (x[idx] + (1 + overshoot) * r_tot[idx]).clamp(lo, hi)
        iters[idx] += 1
        with torch.no_grad():
            p = model(x_adv[idx]).argmax(1)
        queries[idx] += 1
        done = p == target[idx] if target is not None else p != orig[idx]
        active[idx[done]] = False
    return x_adv, iters, queries


def _check_df(att: Attack) -> None:
    if att.overshoot < 0 or att.max_iter < 1 or att.candidates < 2:  # type: ignore[attr-defined]
        raise ConfigError(f"{att.name}: need overshoot >= 0, max_iter >= 1, candidates >= 2")
    norm = parse_norm(att.norm)  # type: ignore[attr-defined]
    if norm not in att.norms:
        raise unknown_name(f"{att.name} norm", norm, att.norms)


@register
@dataclass
class DeepFool(Attack):
    """DeepFool (L2 or Linf): iterate to the nearest linearised boundary; paper defaults
    overshoot 0.02, 50 iterations, top-10 candidate classes."""

    name = "deepfool"
    aliases = ("df",)
    kind = MINIMUM_NORM
    norms = ("l2", "linf")

    norm: str = "l2"
    overshoot: float = 0.02
    max_iter: int = 50
    candidates: int = 10
    batch_size: int = 256

    def validate(self) -> None:
        super().validate()
        _check_df(self)

    def _eta0(self) -> float | None:
        return None

    def _run(self, model: Classifier, x: torch.Tensor, y: torch.Tensor,
             target: torch.Tensor | None) -> RunOutput:
        norm = parse_norm(self.norm)
        outs, its, qs = [], [], []
        for i in range(0, x.shape[0], self.batch_size):
            sl = slice(i, i + self.batch_size)
            a, it, q = deepfool_batch(model, x[sl], y[sl], norm, self.overshoot, self.max_iter,
                                      self.candidates, None if target is None else target[sl],
                                      self._eta0())
            outs.append(a)
            its.append(it)
            qs.append(q)
        return RunOutput(torch.cat(outs), torch.cat(qs), {"iterations": torch.cat(its)})


@register
@dataclass
class DynamicDeepFool(DeepFool):
    """Dynamic DeepFool (class project): DeepFool whose step multiplier decays
    logarithmically from 1 + eta0 to 1 + overshoot, reaching the boundary in fewer steps."""

    name = "deepfool-dynamic"
    aliases = ("dynamic-deepfool", "ddf")

    eta0: float = 0.5

    def validate(self) -> None:
        super().validate()
        if self.eta0 < self.overshoot:
            raise ConfigError(f"{self.name}: eta0 must be >= overshoot, got {self.eta0}")

    def _eta0(self) -> float | None:
        return self.eta0
