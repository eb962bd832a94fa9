"""Carlini & Wagner attacks (Carlini and Wagner, "Towards Evaluating the Robustness of
Neural Networks", IEEE S&P 2017): L2, Linf and L0.

All three optimise in tanh space, x' = lo + (hi - lo) (tanh(w) + 1) / 2, so the box
constraint holds by construction, and use the logit margin objective

    f(x') = max(Z(x')_y - max_{j != y} Z(x')_j, -kappa)      (untargeted)
    f(x') = max(max_{j != t} Z(x')_j - Z(x')_t, -kappa)      (targeted)

Every example in a batch is optimised at once with its own constant c (and, for Linf,
its own tau; for L0, its own pixel mask). Results are minimum-norm: nothing is clipped
to an epsilon; use `AttackResult.success_at(eps, norm)` for success at a budget.

* L2: minimise ||x' - x||_2^2 + c f(x') with Adam; binary search over c per example.
* Linf: minimise c f(x') + sum_i max(|x'_i - x_i| - tau, 0); whenever an example
  succeeds, tau <- 0.9 min(tau, ||x' - x||_inf) and the next round warm-starts from the
  success; when it fails, c doubles up to `largest_const`.
* L0: run an L2 descent restricted to a pixel mask, warm-started from the last success
  and stopped at the first point that is adversarial with margin 0.01; then drop from the
  mask the pixels with the smallest |delta| x |grad of the loss| (at most
  ceil(0.3 sqrt(#changed pixels)) per round, stopping after the first that matters,
  > 0.01); when the descent fails, c doubles; past `largest_const` return the last success.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from bastion.attacks.base import MINIMUM_NORM, Attack, RunOutput, run_in_batches
from bastion.attacks.registry import register
from bastion.core import Classifier, ConfigError

_BIG = 1e10


def _to_tanh(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    z = ((x - lo) / (hi - lo)) * 2 - 1
    return torch.atanh(z * 0.999999)


def _from_tanh(w: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * (torch.tanh(w) + 1) / 2


def _margin(logits: torch.Tensor, labels: torch.Tensor, targeted: bool) -> torch.Tensor:
    """Per-example margin: positive while the attack has not succeeded."""
    real = logits.gather(1, labels[:, None]).squeeze(1)
    other = logits.scatter(1, labels[:, None], -float("inf")).amax(1)
    return other - real if targeted else real - other


def _kappa_success(logits: torch.Tensor, labels: torch.Tensor, targeted: bool,
                   kappa: float) -> torch.Tensor:
    """Success with the confidence margin kappa (the paper's `compare`)."""
    return _margin(logits, labels, targeted) <= -kappa if kappa > 0 else (
        logits.argmax(1) == labels if targeted else logits.argmax(1) != labels)


def _check_common(att: Attack) -> None:
    for name in ("lr", "initial_const"):
        v = getattr(att, name)
        if not v > 0 or not math.isfinite(v):
            raise ConfigError(f"{att.name}: {name} must be a positive finite number, got {v}")
    if att.confidence < 0:  # type: ignore[attr-defined]
        raise ConfigError(f"{att.name}: confidence (kappa) must be >= 0, got {att.confidence}")  # type: ignore[attr-defined]
    if att.max_iter < 1 or att.batch_size < 1:  # type: ignore[attr-defined]
        raise ConfigError(f"{att.name}: max_iter and batch_size must be >= 1")


@register
@dataclass
class CarliniWagnerL2(Attack):
    """Carlini-Wagner L2: tanh-space Adam with a per-example binary search over c.

    Defaults are the paper's: 9 binary-search steps, up to 10000 Adam steps (lr 0.01)
    with early abort, initial c = 1e-3, kappa = 0. `CarliniWagnerL2.fast()` gives a
    preset (5 x 100 steps at lr 0.1 from c = 1) that reaches full success on small MNIST
    models in a fraction of the time (lr 0.01 barely moves saturated pixels in 100 steps).
    """

    name = "cw-l2"
    aliases = ("cw", "cwl2", "cw2")
    kind = MINIMUM_NORM
    norms = ("l2",)

    confidence: float = 0.0
    lr: float = 0.01
    binary_search_steps: int = 9
    max_iter: int = 10000
    initial_const: float = 1e-3
    abort_early: bool = True
    batch_size: int = 256

    @classmethod
    def fast(cls, **overrides: object) -> CarliniWagnerL2:
        """A faster preset: 5 binary steps x 100 iterations, lr 0.1, from c = 1."""
        base = cls(binary_search_steps=5, max_iter=100, lr=0.1, initial_const=1.0)
        return replace(base, **overrides)  # type: ignore[arg-type]

    def validate(self) -> None:
        super().validate()
        _check_common(self)
        if self.binary_search_steps < 1:
            raise ConfigError(f"{self.name}: binary_search_steps must be >= 1")

    def _run(self, model: Classifier, x: torch.Tensor, y: torch.Tensor,
             target: torch.Tensor | None) -> RunOutput:
        outs, its = [], []
        for i in range(0, x.shape[0], self.batch_size):
            sl = slice(i, i + self.batch_size)
            adv, n_it = cw_l2_batch(model, x[sl], (y if target is None else target)[sl],
                                    target is not None, self.confidence, self.lr,
                                    self.binary_search_steps, self.max_iter, self.initial_const,
                                    self.abort_early)
            outs.append(adv)
            its.append(n_it)
        queries = torch.cat(its).float()
        return RunOutput(torch.cat(outs), queries)


def cw_l2_batch(model: Classifier, x: torch.Tensor, labels: torch.Tensor, targeted: bool,
                kappa: float, lr: float, binary_steps: int, max_iter: int, c0: float,
                abort_early: bool, mask: torch.Tensor | None = None,
                start: torch.Tensor | None = None,
                const: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched C&W L2 core. Returns (best adversarial or x where it failed, per-example
    number of forward passes). `mask` (1 = may change) and `start` (warm start) serve the
    L0 attack; `const` overrides the initial per-example c."""
    lo, hi = model.spec.bounds
    n = x.shape[0]
    dev = x.device
    w0 = _to_tanh(x if start is None else start, lo, hi)
    lower = torch.zeros(n, device=dev)
    upper = torch.full((n,), _BIG, device=dev)
    c = torch.full((n,), c0, device=dev) if const is None else const.clone()
    best_l2 = torch.full((n,), float("inf"), device=dev)
    best = x.clone()
    queries = torch.zeros(n, device=dev)
    check_every = max(max_iter // 10, 1)
    view = (-1,) + (1,) * (x.dim() - 1)
    for _ in range(binary_steps):
        # optimising w from w0 is the paper's modifier (w = w0 + modifier, modifier = 0
        # at the start) with one addition less per step; Adam is shift-invariant
        w = w0.clone().requires_grad_(True)
        opt = torch.optim.Adam([w], lr=lr)
        prev = float("inf")
        won = torch.zeros(n, dtype=torch.bool, device=dev)
        for it in range(max_iter):
            xn = _from_tanh(w, lo, hi)
            if mask is not None:
                xn = torch.where(mask, xn, x)
            logits = model(xn)
            l2 = (xn - x).flatten(1).pow(2).sum(1)
            f = _margin(logits, labels, targeted).clamp(min=-kappa)
            loss = (l2 + c * f).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward(inputs=[w])  # input gradient only: no weight gradients
            opt.step()
            queries += 1
            with torch.no_grad():
                ok = _kappa_success(logits.detach(), labels, targeted, kappa)
                better = ok & (l2.detach() < best_l2)
                best_l2 = torch.where(better, l2.detach(), best_l2)
                best = torch.where(better.view(view), xn.detach(), best)  # no host sync
                won |= ok
            if abort_early and it % check_every == 0:
                cur = float(loss.detach())
                if cur > prev * 0.9999:
                    break
                prev = cur
        # paper's update of c: halve the bracket after a success, x10 until bracketed
        upper = torch.where(won, torch.minimum(upper, c), upper)
        lower = torch.where(won, lower, torch.maximum(lower, c))
        c = torch.where(upper < _BIG / 10, (lower + upper) / 2, c * 10)
    return _snap(best, x), queries


def _snap(adv: torch.Tensor, x: torch.Tensor, tol: float = 1e-6) -> torch.Tensor:
    """Undo the ~5e-7 round-trip error of the tanh change of variables, so untouched
    coordinates stay exactly equal to x (keeps L0 honest)."""
    return torch.where((adv - x).abs() <= tol, x, adv)


@register
@dataclass
class CarliniWagnerLinf(Attack):
    """Carlini-Wagner Linf: penalise only coordinates above tau and shrink tau by 0.9
    after each success (warm-started); c doubles on failure up to `largest_const`.

    Paper defaults: lr 5e-3, up to 1000 steps per round with early abort, c0 = 1e-5,
    largest c = 20, tau from 1 (times the value range) down to 1/256.
    """

    name = "cw-linf"
    aliases = ("cwlinf", "cw-inf")
    kind = MINIMUM_NORM
    norms = ("linf",)

    confidence: float = 0.0
    lr: float = 5e-3
    max_iter: int = 1000
    initial_const: float = 1e-5
    largest_const: float = 20.0
    const_factor: float = 2.0
    decrease_factor: float = 0.9
    min_tau: float = 1.0 / 256
    abort_early: bool = True
    batch_size: int = 256

    @classmethod
    def fast(cls, **overrides: object) -> CarliniWagnerLinf:
        """A faster preset: 100 steps per round at lr 0.1 from c = 0.1."""
        base = cls(max_iter=100, lr=0.1, initial_const=0.1)
        return replace(base, **overrides)  # type: ignore[arg-type]

    def validate(self) -> None:
        super().validate()
        _check_common(self)
        if not 0 < self.decrease_factor < 1:
            raise ConfigError(f"{self.name}: decrease_factor must lie in (0, 1)")
        if self.const_factor <= 1 or self.largest_const < self.initial_const:
            raise ConfigError(f"{self.name}: need const_factor > 1 and largest_const >= initial_const")
        if not 0 < self.min_tau < 1:
            raise ConfigError(f"{self.name}: min_tau must lie in (0, 1)")

    def _run(self, model: Classifier, x: torch.Tensor, y: torch.Tensor,
             target: torch.Tensor | None) -> RunOutput:
        labels = y if target is None else target
        return run_in_batches(x.shape[0], self.batch_size, lambda sl: self._batch(
            model, x[sl], labels[sl], target is not None))

    def _batch(self, model: Classifier, x: torch.Tensor, labels: torch.Tensor,
               targeted: bool) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = model.spec.bounds
        rng = hi - lo
        n, dev = x.shape[0], x.device
        tau = torch.full((n,), rng, device=dev)
        c = torch.full((n,), self.initial_const, device=dev)
        prev = x.clone()          # warm start (the last success; x at first)
        best = x.clone()          # returned: last success, x if none
        active = torch.ones(n, dtype=torch.bool, device=dev)
        queries = torch.zeros(n, device=dev)
        view = (-1,) + (1,) * (x.dim() - 1)
        while bool(active.any()):
            idx = active.nonzero().squeeze(1)
            xa, la, ta, ca = x[idx], labels[idx], tau[idx], c[idx]
            mod = _to_tanh(prev[idx], lo, hi).requires_grad_(True)
            opt = torch.optim.Adam([mod], lr=self.lr)
            done = torch.zeros(idx.numel(), dtype=torch.bool, device=dev)
            found = prev[idx].clone()
            for _ in range(self.max_iter):
                xn = _from_tanh(mod, lo, hi)
                logits = model(xn)
                f = _margin(logits, la, targeted).clamp(min=-self.confidence)
                pen = ((xn - xa).abs() - ta.view(view)).clamp(min=0).flatten(1).sum(1)
                loss = (ca * f + pen) * (~done)
                opt.zero_grad(set_to_none=True)
                loss.sum().backward(inputs=[mod])
                queries[idx[~done]] += 1
                with torch.no_grad():
                    # the paper's abort test: the whole objective (margin and the part of
                    # the perturbation above tau) has vanished, and the label is right
                    obj = ca * (f.detach() + self.confidence) + pen.detach()
                    ok = (obj < 1e-4 * ca) & ~done & \
                        _kappa_success(logits.detach(), la, targeted, self.confidence)
                    found[ok] = xn.detach()[ok]
                    done |= ok
                if self.abort_early and bool(done.all()):
                    break
                opt.step()
            with torch.no_grad():
                # successes: shrink tau, keep the point; failures: raise c
                actual = (found - xa).abs().flatten(1).amax(1)
                new_tau = torch.where(done, torch.minimum(ta, actual) * self.decrease_factor, ta)
                new_c = torch.where(done, ca, ca * self.const_factor)
                tau[idx] = new_tau
                c[idx] = new_c
                found = _snap(found, xa)
                best[idx[done]] = found[done]
                prev[idx[done]] = found[done]
                still = (new_c <= self.largest_const) & (new_tau >= self.min_tau * rng)
                active[idx] = still
        return best, queries


@register
@dataclass
class CarliniWagnerL0(Attack):
    """Carlini-Wagner L0: repeat an L2 descent on a shrinking set of changeable pixels,
    removing after each success the pixels whose |grad| x |delta| is smallest.

    Reference-code defaults: lr 0.01, up to 1000 steps per round (stopping at the first
    success), c0 = 1e-3 doubling up to 2e6 on failure, at most 1000 rounds.
    """

    name = "cw-l0"
    aliases = ("cwl0", "cw0")
    kind = MINIMUM_NORM
    norms = ("l0",)

    confidence: float = 0.0
    lr: float = 0.01
    max_iter: int = 1000
    initial_const: float = 1e-3
    largest_const: float = 2e6
    const_factor: float = 2.0
    abort_early: bool = True
    max_rounds: int = 1000
    batch_size: int = 256

    @classmethod
    def fast(cls, **overrides: object) -> CarliniWagnerL0:
        """A faster preset: 100 steps per round at lr 0.1 from c = 1, c at most 1e4."""
        base = cls(max_iter=100, lr=0.1, initial_const=1.0, largest_const=1e4)
        return replace(base, **overrides)  # type: ignore[arg-type]

    def validate(self) -> None:
        super().validate()
        _check_common(self)
        if self.const_factor <= 1 or self.largest_const < self.initial_const:
            raise ConfigError(f"{self.name}: need const_factor > 1 and largest_const >= initial_const")
        if self.max_rounds < 1:
            raise ConfigError(f"{self.name}: max_rounds must be >= 1")

    def _run(self, model: Classifier, x: torch.Tensor, y: torch.Tensor,
             target: torch.Tensor | None) -> RunOutput:
        labels = y if target is None else target
        return run_in_batches(x.shape[0], self.batch_size, lambda sl: self._batch(
            model, x[sl], labels[sl], target is not None))

    def _batch(self, model: Classifier, x: torch.Tensor, labels: torch.Tensor,
               targeted: bool) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = model.spec.bounds
        n, dev = x.shape[0], x.device
        # a pixel is all channels at one spatial position (images) or one feature
        pix_shape = (n, 1, *x.shape[2:]) if x.dim() == 4 else tuple(x.shape)
        valid = torch.ones(pix_shape, dtype=torch.bool, device=dev)
        c = torch.full((n,), self.initial_const, device=dev)
        prev = x.clone()
        best = x.clone()
        active = torch.ones(n, dtype=torch.bool, device=dev)
        queries = torch.zeros(n, device=dev)
        kappa = max(self.confidence, 0.01)  # the reference code's fixed 0.01 margin
        for _ in range(self.max_rounds):
            if not bool(active.any()):
                break
            idx = active.nonzero().squeeze(1)
            xa, la, ca = x[idx], labels[idx], c[idx]
            m = valid[idx].expand_as(xa)
            w0 = _to_tanh(prev[idx], lo, hi)
            mod = torch.zeros_like(xa, requires_grad=True)
            opt = torch.optim.Adam([mod], lr=self.lr)
            done = torch.zeros(idx.numel(), dtype=torch.bool, device=dev)
            found = xa.clone()
            grad_at = torch.zeros_like(xa)
            for _ in range(self.max_iter):
                xn = torch.where(m, _from_tanh(w0 + mod, lo, hi), xa)
                logits = model(xn)
                f = (_margin(logits, la, targeted) + kappa).clamp(min=0)
                l2 = (xn - xa).flatten(1).pow(2).sum(1)
                loss = (ca * f + l2) * (~done)
                opt.zero_grad(set_to_none=True)
                loss.sum().backward(inputs=[mod])
                queries[idx[~done]] += 1
                with torch.no_grad():
                    # first success: keep this point and the loss gradient there
                    ok = (f.detach() < 1e-4) & ~done
                    found[ok] = xn.detach()[ok]
                    grad_at[ok] = mod.grad[ok]  # type: ignore[index]
                    done |= ok
                if bool(done.all()):
                    break
                opt.step()
            fail = ~done
            c[idx[fail]] *= self.const_factor
            active[idx[fail & (c[idx] > self.largest_const)]] = False
            if not bool(done.any()):
                continue
            wi = idx[done]
            aw, xw, vw = _snap(found[done], x[wi]), x[wi], valid[wi]
            best[wi] = aw
            prev[wi] = aw
            # drop the pixels contributing least, |delta| x |grad| summed over channels
            d, g = (aw - xw), grad_at[done].abs()
            if x.dim() == 4:
                change = d.sum(1, keepdim=True).abs() * g.sum(1, keepdim=True)
                changed = (d.abs() >= 1e-4).any(1, keepdim=True)
            else:
                change, changed = d.abs() * g, d.abs() >= 1e-4
            n_changed = changed.flatten(1).sum(1).float()
            score = torch.where(vw, change, torch.full_like(change, float("inf"))).flatten(1)
            order = score.argsort(1)
            srt = score.gather(1, order)
            n_valid = vw.flatten(1).sum(1)
            big = srt > 0.01
            first_big = torch.where(big.any(1), big.float().argmax(1),
                                    torch.full_like(n_valid, order.shape[1]))
            k = torch.minimum(first_big + 1,
                              torch.clamp(torch.ceil(0.3 * n_changed.sqrt()), min=1).long())
            k = torch.minimum(k, n_valid)
            rank = torch.arange(order.shape[1], device=dev).expand_as(order)
            drop = torch.zeros_like(score, dtype=torch.bool).scatter(1, order, rank < k[:, None])
            valid[wi] = vw & ~drop.view_as(vw)
            active[wi[valid[wi].flatten(1).sum(1) == 0]] = False
        return best, queries
