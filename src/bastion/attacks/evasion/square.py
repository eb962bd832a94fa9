"""Square Attack (Andriushchenko, Croce, Flammarion and Hein, "Square Attack: a
query-efficient black-box adversarial attack via random search", ECCV 2020), Linf and L2.

Score-based random search on the margin loss m(x) = z_y - max_{j != y} z_j (targeted:
max_{j != t} z_j - z_t); a proposal is kept when it lowers the margin. Proposals change
one square window of side s = round(sqrt(p * n_features / channels)), where p starts at
p_init and is halved at iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000
(rescaled to a 10000-query budget).

* Linf: start from vertical stripes x + eps * (+-1 per column and channel); a proposal
  sets one window (per example, random position) to +-eps per channel.
* L2: start from a grid of pseudo-Gaussian bumps scaled to ||delta||_2 = eps; a proposal
  moves the mass of a second window into the first and adds a fresh bump there, keeping
  ||delta||_2 = eps.

Every example still above zero margin is queried once per iteration, all in one forward;
examples stop (and stop counting queries) as soon as they are misclassified.
Defaults: 5000 queries, p_init 0.8 (the authors' MNIST setting; 0.05 for CIFAR/ImageNet
Linf, 0.1 for L2), eps 0.3 (Linf) or 2.0 (L2) when not given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from bastion.attacks.base import FIXED_BUDGET, Attack, RunOutput, run_in_batches
from bastion.attacks.evasion.pgd import check_budget
from bastion.attacks.registry import register
from bastion.core import Classifier, ConfigError, InputError, parse_norm, unknown_name

_DEFAULT_EPS = {"linf": 0.3, "l2": 2.0}


def p_schedule(p_init: float, it: int, n_iters: int) -> float:
    """The paper's piecewise-constant schedule of the window fraction p."""
    i = int(it / n_iters * 10000)
    for bound, div in ((8000, 512), (6000, 256), (4000, 128), (2000, 64), (1000, 32),
                       (500, 16), (200, 8), (50, 4), (10, 2)):
        if i > bound:
            return p_init / div
    return p_init


def margin_loss(logits: torch.Tensor, labels: torch.Tensor, targeted: bool) -> torch.Tensor:
    real = logits.gather(1, labels[:, None]).squeeze(1)
    other = logits.scatter(1, labels[:, None], -float("inf")).amax(1)
    return other - real if targeted else real - other


def _bump(s: int, device: torch.device, gen: torch.Generator) -> torch.Tensor:
    """A pseudo-Gaussian s x s pattern: two opposite-signed halves made of nested
    rectangles weighted 1/(k+1)^2, unit L2 norm, randomly transposed."""
    def rect(a: int, b: int) -> torch.Tensor:
        d = torch.zeros(a, b)
        ca, cb = a // 2, b // 2
        for k in range(max(ca, cb) + 1):
            d[max(ca - k, 0):min(ca + k + 1, a), max(cb - k, 0):min(cb + k + 1, b)] += 1.0 / (k + 1) ** 2
        return d / d.norm()
    d = torch.zeros(s, s)
    d[: s // 2] = rect(s // 2, s) if s // 2 > 0 else d[: s // 2]
    d[s // 2:] = -rect(s - s // 2, s)
    d = d / d.norm()
    if torch.rand(1, generator=gen).item() > 0.5:
        d = d.t()
    return d.to(device)


def _window(n: int, h: int, w: int, s: int, top: torch.Tensor, left: torch.Tensor) -> torch.Tensor:
    """Boolean masks [n, 1, h, w] of s x s windows at per-example positions."""
    rows = torch.arange(h, device=top.device)
    cols = torch.arange(w, device=top.device)
    rm = (rows[None] >= top[:, None]) & (rows[None] < top[:, None] + s)
    cm = (cols[None] >= left[:, None]) & (cols[None] < left[:, None] + s)
    return (rm[:, :, None] & cm[:, None, :]).unsqueeze(1)


# Redraws of a proposal that would not change the current point. The first redraw moves
# to another sign pattern, which changes the window whenever +eps and -eps give values
# more than 1e-7 apart; the bound only guards a degenerate budget below that resolution.
_MAX_REDRAWS = 64


class _Windows:
    """`_window` by table lookup: per side s, the [h - s + 1, h] row masks and the
    [w - s + 1, w] column masks, indexed by the per-example positions (three kernels
    instead of a dozen per iteration)."""

    def __init__(self, h: int, w: int, device: torch.device) -> None:
        self.h, self.w, self.device = h, w, device
        self._tables: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, s: int, top: torch.Tensor, left: torch.Tensor) -> torch.Tensor:
        if s not in self._tables:
            def table(size: int) -> torch.Tensor:
                pos = torch.arange(size - s + 1, device=self.device)[:, None]
                idx = torch.arange(size, device=self.device)[None]
                return (idx >= pos) & (idx < pos + s)
            self._tables[s] = (table(self.h), table(self.w))
        rt, ct = self._tables[s]
        return (rt[top][:, :, None] & ct[left][:, None, :]).unsqueeze(1)


@register
@dataclass
class Square(Attack):
    """Square Attack (Linf, L2): score-based random search over square windows."""

    name = "square"
    kind = FIXED_BUDGET
    norms = ("linf", "l2")
    black_box = True

    norm: str = "linf"
    eps: float | None = None
    max_queries: int = 5000
    p_init: float = 0.8
    seed: int = 0
    batch_size: int = 1024

    def validate(self) -> None:
        super().validate()
        norm = parse_norm(self.norm)
        if norm not in self.norms:
            raise unknown_name("square norm", norm, self.norms)
        if self.eps is not None and not (0 < self.eps < float("inf")):
            raise ConfigError(f"square: eps must be positive and finite, got {self.eps}")
        if not 0 < self.p_init <= 1:
            raise ConfigError(f"square: p_init must lie in (0, 1], got {self.p_init}")
        if self.max_queries < 1:
            raise ConfigError("square: max_queries must be >= 1")

    @property
    def epsilon(self) -> float:
        return self.eps if self.eps is not None else _DEFAULT_EPS[parse_norm(self.norm)]

    def _run(self, model: Classifier, x: torch.Tensor, y: torch.Tensor,
             target: torch.Tensor | None) -> RunOutput:
        if x.dim() != 4:
            raise InputError("square needs image inputs [N, C, H, W]")
        check_budget(self.name, parse_norm(self.norm), self.epsilon, model)
        gen = torch.Generator().manual_seed(self.seed)
        labels = y if target is None else target
        fn = self._linf if parse_norm(self.norm) == "linf" else self._l2
        return run_in_batches(x.shape[0], self.batch_size, lambda sl: fn(
            model, x[sl], labels[sl], target is not None, gen))

    def _rand(self, shape: tuple[int, ...], gen: torch.Generator, dev: torch.device) -> torch.Tensor:
        return torch.rand(shape, generator=gen).to(dev)

    def _sign(self, shape: tuple[int, ...], gen: torch.Generator, dev: torch.device) -> torch.Tensor:
        return (torch.randint(0, 2, shape, generator=gen).to(dev) * 2 - 1).float()

    def _flip(self, m: int, c: int, gen: torch.Generator, dev: torch.device) -> torch.Tensor:
        """Per example, -1/+1 factors [m, c, 1, 1] that flip a uniformly drawn non-empty set
        of channels. Applied to a sign pattern that leaves the window unchanged (there is
        at most one such pattern, since +eps and -eps give different values), this draws
        uniformly among the other 2^c - 1 patterns: the distribution of redrawing until the
        window changes, in one draw."""
        mask = torch.randint(1, 2 ** c, (m,), generator=gen).to(dev)
        bits = (mask[:, None] >> torch.arange(c, device=dev)[None]) & 1
        return (1 - 2 * bits).to(torch.float32).view(m, c, 1, 1)

    def _linf(self, model: Classifier, x: torch.Tensor, labels: torch.Tensor, targeted: bool,
              gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = model.spec.bounds
        eps = self.epsilon
        n, c, h, w = x.shape
        dev = x.device
        best = (x + eps * self._sign((n, c, 1, w), gen, dev)).clamp(lo, hi)
        with torch.no_grad():
            loss = margin_loss(model(best), labels, targeted)
        queries = torch.ones(n, device=dev)
        n_iters = self.max_queries - 1
        # the examples still above zero margin, kept gathered: they leave when fooled
        act = torch.nonzero(loss > 0).flatten()
        xa, ba, la, lab = x[act], best[act], loss[act], labels[act]
        windows = _Windows(h, w, dev)
        it = 0
        with torch.no_grad():
            while it < n_iters and act.numel() > 0:
                m = act.numel()
                p = p_schedule(self.p_init, it, n_iters)
                s = min(max(round(math.sqrt(p * h * w)), 1), h - 1)
                top = torch.randint(0, h - s + 1, (m,), generator=gen).to(dev)
                left = torch.randint(0, w - s + 1, (m,), generator=gen).to(dev)
                win = windows(s, top, left)
                new = eps * self._sign((m, c, 1, 1), gen, dev)
                # the window set to +-eps per channel; a proposal that leaves the current
                # point unchanged is redrawn (the authors' code loops until it changes)
                prop = (xa + new).clamp(lo, hi)
                same = ~((prop - ba).abs().ge(1e-7) & win).flatten(1).any(1)
                for _ in range(_MAX_REDRAWS):
                    if not bool(same.any()):
                        break
                    r = torch.nonzero(same).flatten()
                    new_r = new[r] * self._flip(r.numel(), c, gen, dev)
                    new[r] = new_r
                    prop_r = (xa[r] + new_r).clamp(lo, hi)
                    prop[r] = prop_r
                    same[r] = ~((prop_r - ba[r]).abs().ge(1e-7) & win[r]).flatten(1).any(1)
                xn = torch.where(win, prop, ba)
                ln = margin_loss(model(xn), lab, targeted)
                better = ln < la
                la = torch.where(better, ln, la)
                ba = torch.where(better.view(-1, 1, 1, 1), xn, ba)
                it += 1
                fooled = la <= 0
                if bool(fooled.any()):
                    rows = act[fooled]
                    best[rows], queries[rows] = ba[fooled], float(1 + it)
                    keep = ~fooled
                    act, xa, ba, la, lab = act[keep], xa[keep], ba[keep], la[keep], lab[keep]
        best[act], queries[act] = ba, float(1 + it)
        return best, queries

    def _l2(self, model: Classifier, x: torch.Tensor, labels: torch.Tensor, targeted: bool,
            gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = model.spec.bounds
        eps = self.epsilon
        n, c, h, w = x.shape
        dev = x.device
        view = (-1, 1, 1, 1)
        # initialisation: a grid of bumps with random signs per example and channel
        delta = torch.zeros_like(x)
        s0 = max(h // 5, 1)
        start = (h - s0 * 5) // 2
        for r in range(start, h - s0 + 1, s0):
            for q in range(start, w - s0 + 1, s0):
                delta[:, :, r:r + s0, q:q + s0] += (
                    _bump(s0, dev, gen)[None, None] * self._sign((n, c, 1, 1), gen, dev))
        delta = delta / delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(view) * eps
        best = (x + delta).clamp(lo, hi)
        with torch.no_grad():
            loss = margin_loss(model(best), labels, targeted)
        queries = torch.ones(n, device=dev)
        n_iters = self.max_queries - 1
        for it in range(n_iters):
            idx = (loss > 0).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            m = idx.numel()
            xc = x[idx]
            dc = best[idx] - xc
            p = p_schedule(self.p_init, it, n_iters)
            s = max(round(math.sqrt(p * h * w)), 3)
            s = min(s + (s % 2 == 0), h - 1)
            t1, l1, t2, l2 = (int(v) for v in torch.randint(0, h - s, (4,), generator=gen))
            w1 = torch.zeros(1, 1, h, w, dtype=torch.bool, device=dev)
            w1[..., t1:t1 + s, l1:l1 + s] = True
            w2 = torch.zeros_like(w1)
            w2[..., t2:t2 + s, l2:l2 + s] = True
            norm_img = dc.flatten(1).norm(dim=1).view(view)
            norm_out = (dc * ~w1).pow(2).sum((2, 3), keepdim=True).sqrt()
            norm_both = (dc * (w1 | w2)).pow(2).sum((2, 3), keepdim=True).sqrt()
            upd = _bump(s, dev, gen)[None, None] * self._sign((m, c, 1, 1), gen, dev)
            upd = upd + dc[..., t1:t1 + s, l1:l1 + s] / (norm_out + 1e-10)
            budget = ((eps ** 2 - norm_img ** 2).clamp(min=0) / c + norm_both ** 2).sqrt()
            upd = upd / upd.pow(2).sum((2, 3), keepdim=True).sqrt().clamp_min(1e-12) * budget
            dn = dc.clone()
            dn[..., t2:t2 + s, l2:l2 + s] = 0
            dn[..., t1:t1 + s, l1:l1 + s] = upd
            dn = dn / dn.flatten(1).norm(dim=1).clamp_min(1e-12).view(view) * eps
            xn = (xc + dn).clamp(lo, hi)
            with torch.no_grad():
                ln = margin_loss(model(xn), labels[idx], targeted)
            queries[idx] += 1
            better = ln < loss[idx]
            loss[idx] = torch.where(better, ln, loss[idx])
            best[idx[better]] = xn[better]
        return best, queries
