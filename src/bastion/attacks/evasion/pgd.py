"""Projected Gradient Descent (Madry et al., 2018) for Linf, L2 and L1 budgets.

Start at a random point of the eps-ball around x0 (random start), then repeat `steps` times

    x <- Proj_{B_p(x0, eps) ∩ bounds}(x + alpha * d(grad_x L(f(x), y)))

with the steepest-ascent direction d of the norm: sign(g) for Linf, g / ||g||_2 for L2,
and for L1 the sparse step of Tramer & Boneh (2019, "SLIDE"): only the coordinates whose
|g| lies in the top (1 - q) fraction move, by sign(g) / k (k = number of moved
coordinates, so the step has L1 length alpha), ignoring coordinates the box blocks; the
L1 projection is the sort-based simplex projection of Duchi et al. (2008).
With `restarts` > 1 each example keeps its best run (a success, else the highest loss).
Targeted: descend the cross-entropy of the target class instead.

Defaults per norm (used when `eps` / `alpha` are None): Linf eps 0.3, alpha eps / 30
(= 0.01, Madry et al. MNIST); L2 eps 2.0 and L1 eps 10.0 (Tramer & Boneh's MNIST
budgets), alpha 2.5 eps / steps (the Madry-lab step rule); 40 steps; q = 0.99.

`fast_path` ('off' default, 'auto', 'cuda-graph') replays the step as a CUDA graph on a GPU
for Linf and L2 (see `bastion.attacks.evasion.fastpath`); `bf16=True` runs the forward
under bfloat16 autocast. `fast=True` is the older spelling of fast_path='auto'.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bastion.attacks.base import FIXED_BUDGET, Attack, RunOutput
from bastion.attacks.evasion import fastpath
from bastion.attacks.registry import register
from bastion.core import Classifier, ConfigError, parse_norm

DEFAULT_EPS = {"linf": 0.3, "l2": 2.0, "l1": 10.0}


# --------------------------------------------------------------------------- norm helpers


def _bshape(x: torch.Tensor) -> tuple[int, ...]:
    return (x.shape[0],) + (1,) * (x.dim() - 1)


def flat_norm(t: torch.Tensor, p: float) -> torch.Tensor:
    """Per-example Lp norm, shaped to broadcast against `t`."""
    return t.flatten(1).norm(p=p, dim=1).view(_bshape(t))


def project_l1(delta: torch.Tensor, eps: torch.Tensor | float) -> torch.Tensor:
    """Euclidean projection of each example of `delta` onto the L1 ball of radius eps
    (Duchi et al., 2008): soft-threshold |v| at the theta that makes ||v||_1 = eps."""
    flat = delta.flatten(1)
    n, d = flat.shape
    eps_t = torch.as_tensor(eps, dtype=flat.dtype, device=flat.device).expand(n).reshape(n, 1)
    a = flat.abs()
    u, _ = a.sort(dim=1, descending=True)
    css = u.cumsum(1)
    ks = torch.arange(1, d + 1, device=flat.device, dtype=flat.dtype)
    cond = u * ks > (css - eps_t)
    rho = cond.to(flat.dtype).cumsum(1).argmax(1, keepdim=True)  # last index where cond holds
    theta = ((css.gather(1, rho) - eps_t) / (rho + 1).to(flat.dtype)).clamp_min(0)
    proj = flat.sign() * (a - theta).clamp_min(0)
    inside = a.sum(1, keepdim=True) <= eps_t
    return torch.where(inside, flat, proj).view_as(delta)


def project(delta: torch.Tensor, norm: str, eps: float) -> torch.Tensor:
    """Project a batch of perturbations onto the eps-ball of `norm` (linf, l2, l1)."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    if norm == "l2":
        n = flat_norm(delta, 2)
        return delta * (eps / n.clamp_min(1e-12)).clamp(max=1.0)
    if norm == "l1":
        return project_l1(delta, eps)
    raise ConfigError(f"no projection for norm {norm!r}")


def random_start(x0: torch.Tensor, norm: str, eps: float, gen: torch.Generator | None,
                 lo: float, hi: float) -> torch.Tensor:
    """A point drawn uniformly from the eps-ball (Linf, L2) or with an L1 radius of
    eps * U^(1/d) along a Laplace direction (L1), clipped to the bounds."""
    dev = x0.device
    if norm == "linf":
        delta = (torch.rand(x0.shape, generator=gen, device=dev) * 2 - 1) * eps
    else:
        d = x0[0].numel()
        if norm == "l2":
            direction = torch.randn(x0.shape, generator=gen, device=dev)
            direction = direction / flat_norm(direction, 2).clamp_min(1e-12)
        else:
            e = -torch.log(torch.rand(x0.shape, generator=gen, device=dev).clamp_min(1e-12))
            sign = torch.randint(0, 2, x0.shape, generator=gen, device=dev) * 2 - 1
            direction = e * sign
            direction = direction / flat_norm(direction, 1).clamp_min(1e-12)
        r = torch.rand(_bshape(x0), generator=gen, device=dev) ** (1.0 / d)
        delta = direction * r * eps
    return (x0 + delta).clamp(lo, hi)


def l1_sparse_direction(g: torch.Tensor, x: torch.Tensor, lo: float, hi: float,
                        q: float) -> torch.Tensor:
    """Tramer & Boneh's sparse L1 step direction with unit L1 length: sign(g) on the top
    (1 - q) fraction of |g| among the coordinates the box does not block, 0 elsewhere."""
    blocked = ((x <= lo) & (g < 0)) | ((x >= hi) & (g > 0))
    gf = torch.where(blocked, torch.zeros_like(g), g).flatten(1)
    d = gf.shape[1]
    k = max(1, math.ceil((1.0 - q) * d))
    top = gf.abs().topk(k, dim=1)
    mask = torch.zeros_like(gf).scatter_(1, top.indices, 1.0)
    mask = mask * (top.values[:, -1:] > 0)  # a zero gradient moves nothing
    e = gf.sign() * mask
    return (e / e.abs().sum(1, keepdim=True).clamp_min(1.0)).view_as(g)


def check_budget(name: str, norm: str, eps: float, model: Classifier) -> None:
    """Refuse a budget larger than the whole input domain (every input would be reachable,
    which is always a configuration mistake, e.g. eps given on the 0-255 scale)."""
    vr, d = model.spec.value_range, math.prod(model.spec.shape)
    limit = {"linf": vr, "l2": vr * math.sqrt(d), "l1": vr * d}[norm]
    if eps > limit:
        raise ConfigError(f"{name}: eps {eps} exceeds the largest possible {norm} distance {limit:.4g} "
                          f"for inputs in {model.spec.bounds}; give eps in input units "
                          "(e.g. 8/255, not 8)")


# --------------------------------------------------------------------------- the attack


@register
@dataclass
class PGD(Attack):
    """Projected gradient descent with random start and restarts (Linf, L2, sparse L1)."""

    name = "pgd"
    kind = FIXED_BUDGET
    norms = ("linf", "l2", "l1")

    eps: float | None = None
    alpha: float | None = None
    steps: int = 40
    norm: str = "linf"
    random_start: bool = True
    restarts: int = 1
    l1_sparsity: float = 0.99
    seed: int = 0
    batch_size: int = 1024
    fast: bool = False
    fast_path: str = "off"
    bf16: bool = False

    def validate(self) -> None:
        super().validate()
        norm = parse_norm(self.norm)
        if norm not in self.norms:
            raise ConfigError(f"{self.name}: norm {self.norm!r} not supported; use one of "
                              f"{', '.join(self.norms)}")
        if self.restarts < 1:
            raise ConfigError(f"{self.name}: restarts must be >= 1, got {self.restarts}")
        if self.steps < 1:
            raise ConfigError(f"{self.name}: steps must be >= 1, got {self.steps}")
        if self.batch_size < 1:
            raise ConfigError(f"{self.name}: batch_size must be >= 1, got {self.batch_size}")
        if not 0.0 <= self.l1_sparsity < 1.0:
            raise ConfigError(f"{self.name}: l1_sparsity (q) must lie in [0, 1), got {self.l1_sparsity}")
        if norm == "linf" and self.eps is not None and self.eps > 1e3:
            raise ConfigError(f"{self.name}: eps {self.eps} is absurd for an Linf budget")
        fastpath.check_mode(self.name, self.fast_path)

    # resolved parameters -----------------------------------------------------------
    @property
    def norm_name(self) -> str:
        return parse_norm(self.norm)

    def budget(self, value_range: float = 1.0) -> float:
        """eps actually used (the per-norm default when `eps` is None), in input units."""
        return float(self.eps) if self.eps is not None else DEFAULT_EPS[self.norm_name] * value_range

    def step_size(self, value_range: float = 1.0) -> float:
        if self.alpha is not None:
            return float(self.alpha)
        eps = self.budget(value_range)
        return eps / 30.0 if self.norm_name == "linf" else 2.5 * eps / self.steps

    # -------------------------------------------------------------------------------
    def _run(self, model: Classifier, x: torch.Tensor, y: torch.Tensor,
             target: torch.Tensor | None) -> RunOutput:
        check_budget(self.name, self.norm_name, self.budget(model.spec.value_range), model)
        mode = fastpath.canonical_mode(self.name, self.fast_path)
        mode = "auto" if self.fast and mode == "off" else mode
        graph = fastpath.resolve(self.name, mode, model.device, self.norm_name != "l1",
                                 "for the L1 step (top-k sparse direction)")
        if self.fast and not graph:
            _fast_notice(model, self.name)
        lo, hi = model.spec.bounds
        vr = model.spec.value_range
        step = fastpath.pgd_step(fastpath.maybe_bf16(model, self.bf16), self.norm_name,
                                 self.step_size(vr), self.budget(vr), lo, hi, target is not None,
                                 self.l1_sparsity)
        loop = fastpath.StepLoop(step, graph=graph, strict=mode == "cuda-graph", name=self.name)
        gen = torch.Generator(device=x.device).manual_seed(self.seed)
        out = []
        for i in range(0, x.shape[0], self.batch_size):
            sl = slice(i, i + self.batch_size)
            out.append(self._batch(model, x[sl], y[sl], None if target is None else target[sl],
                                   gen, loop))
        queries = torch.full((x.shape[0],), float(self.steps * self.restarts), device=x.device)
        return RunOutput(torch.cat(out), queries)

    def _batch(self, model: Classifier, x0: torch.Tensor, y: torch.Tensor,
               target: torch.Tensor | None, gen: torch.Generator,
               loop: fastpath.StepLoop) -> torch.Tensor:
        lo, hi = model.spec.bounds
        vr = model.spec.value_range
        eps, norm = self.budget(vr), self.norm_name
        targeted = target is not None
        labels = target if targeted else y
        best = x0.clone()
        best_score = torch.full((x0.shape[0],), -float("inf"), device=x0.device)
        box_lo = (x0 - eps).clamp(lo, hi) if norm == "linf" else x0
        box_hi = (x0 + eps).clamp(lo, hi) if norm == "linf" else x0
        for r in range(self.restarts):
            x = random_start(x0, norm, eps, gen, lo, hi) if self.random_start else x0.clone()
            # the step (fastpath.pgd_step) runs eagerly or as a replayed CUDA graph
            (x,) = loop.run((x,), (x0, labels, box_lo, box_hi), self.steps)
            if self.restarts == 1:
                return x
            with torch.no_grad():
                logits = model(x)
                loss = F.cross_entropy(logits, labels, reduction="none")
                loss = -loss if targeted else loss
                ok = logits.argmax(-1) == target if targeted else logits.argmax(-1) != y
                score = loss + ok.float() * 1e6
            better = score > best_score
            best = torch.where(better.view(_bshape(x)), x, best)
            best_score = torch.where(better, score, best_score)
            if r + 1 < self.restarts and bool((best_score >= 1e5).all()):
                break
        return best


_NOTICED: set[str] = set()


def _fast_notice(model: Classifier, name: str) -> None:
    """fast=True (legacy spelling of fast_path='auto') without CUDA: say so once."""
    key = f"{name}:{model.device.type}"
    if key in _NOTICED:
        return
    _NOTICED.add(key)
    where = "on CPU" if model.device.type != "cuda" else "in this version"
    warnings.warn(f"{name}: fast=True (CUDA-graph capture) is not available {where}; "
                  "running the eager path, results are unchanged", stacklevel=3)
