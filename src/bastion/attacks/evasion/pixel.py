"""One-pixel attack (Su, Vargas and Sakurai, "One Pixel Attack for Fooling Deep Neural
Networks", IEEE TEC 2019): differential evolution over (row, col, value per channel) of
`pixels` pixels, using output probabilities only.

A candidate is a vector of `pixels` x (2 + C) numbers. DE/rand/1 without crossover, as
in the paper: child_i = parent_r1 + F (parent_r2 - parent_r3) with distinct random
r1, r2, r3; the child replaces its parent when its fitness is no worse. Fitness is the
probability of the true class (untargeted, minimised) or of the target (maximised).
Initial positions are uniform over the image, initial values normal around the middle
of the range with a half-range standard deviation (the paper's N(128, 127) on 0..255).
An example stops as soon as one candidate fools the model (the paper's early stop).

Defaults: population 400, 100 generations, F = 0.5, one pixel. Batched: the children of
every still-running example are evaluated in one large forward per generation
(split into chunks of `eval_batch_size`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bastion.attacks.base import FIXED_BUDGET, Attack, RunOutput, run_in_batches
from bastion.attacks.registry import register
from bastion.core import Classifier, ConfigError, InputError


@register
@dataclass
class OnePixel(Attack):
    """One-pixel attack by differential evolution (population 400, 100 generations, F 0.5)."""

    name = "one-pixel"
    aliases = ("pixel", "onepixel")
    kind = FIXED_BUDGET
    norms = ("l0",)
    black_box = True

    pixels: int = 1
    population: int = 400
    max_iter: int = 100
    f: float = 0.5
    seed: int = 0
    eval_batch_size: int = 8192
    batch_size: int = 256

    def validate(self) -> None:
        super().validate()
        if self.pixels < 1:
            raise ConfigError(f"one-pixel: pixels must be >= 1, got {self.pixels}")
        if self.population < 4:
            raise ConfigError("one-pixel: DE/rand/1 needs a population of at least 4")
        if not 0 < self.f <= 2:
            raise ConfigError(f"one-pixel: F must lie in (0, 2], got {self.f}")
        if self.eval_batch_size < 1 or self.batch_size < 1:
            raise ConfigError("one-pixel: eval_batch_size and batch_size must be >= 1")

    def _run(self, model: Classifier, x: torch.Tensor, y: torch.Tensor,
             target: torch.Tensor | None) -> RunOutput:
        if x.dim() != 4:
            raise InputError("one-pixel needs image inputs [N, C, H, W]")
        gen = torch.Generator(device=x.device).manual_seed(self.seed)
        return run_in_batches(x.shape[0], self.batch_size, lambda sl: self._batch(
            model, x[sl], y[sl], None if target is None else target[sl], gen))

    def _apply(self, x: torch.Tensor, cand: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
        """x [M, C, H, W], cand [M, P, pixels, 2 + C] -> perturbed images [M * P, C, H, W]."""
        m, c, h, w = x.shape
        p = cand.shape[1]
        imgs = x.unsqueeze(1).expand(m, p, c, h, w).reshape(m * p, c, h * w).clone()
        flat = cand.reshape(m * p, self.pixels, 2 + c)
        r = flat[..., 0].round().clamp(0, h - 1).long()
        q = flat[..., 1].round().clamp(0, w - 1).long()
        pos = (r * w + q)                                      # [M*P, pixels]
        vals = flat[..., 2:].clamp(lo, hi).transpose(1, 2)     # [M*P, C, pixels]
        imgs.scatter_(2, pos.unsqueeze(1).expand(-1, c, -1), vals)
        return imgs.view(m * p, c, h, w)

    def _fitness(self, model: Classifier, imgs: torch.Tensor, lab: torch.Tensor,
                 orig: torch.Tensor, targeted: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(fitness to minimise, fooled) for each image."""
        probs, preds = [], []
        with torch.no_grad():
            for i in range(0, imgs.shape[0], self.eval_batch_size):
                z = model(imgs[i:i + self.eval_batch_size])
                probs.append(z.softmax(1))
                preds.append(z.argmax(1))
        pr, pd = torch.cat(probs), torch.cat(preds)
        p_lab = pr.gather(1, lab[:, None]).squeeze(1)
        if targeted:
            return -p_lab, pd == lab
        return p_lab, pd != orig

    def _batch(self, model: Classifier, x: torch.Tensor, y: torch.Tensor,
               target: torch.Tensor | None, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = model.spec.bounds
        n, c, h, w = x.shape
        dev = x.device
        pop, d = self.population, self.pixels
        targeted = target is not None
        lab = target if targeted else y
        # initial population
        cand = torch.empty(n, pop, d, 2 + c, device=dev)
        cand[..., 0] = torch.rand(n, pop, d, generator=gen, device=dev) * h
        cand[..., 1] = torch.rand(n, pop, d, generator=gen, device=dev) * w
        mid, half = (lo + hi) / 2, (hi - lo) / 2
        cand[..., 2:] = (mid + half * torch.randn(n, pop, d, c, generator=gen, device=dev)).clamp(lo, hi)
        fit, fooled = self._fitness(model, self._apply(x, cand, lo, hi),
                                    lab.repeat_interleave(pop), y.repeat_interleave(pop), targeted)
        fit, fooled = fit.view(n, pop), fooled.view(n, pop)
        queries = torch.full((n,), float(pop), device=dev)
        done = fooled.any(1)
        ar = torch.arange(pop, device=dev)
        for _ in range(self.max_iter):
            idx = (~done).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            m = idx.numel()
            # three distinct partners per member, all different from the member itself
            r = torch.rand(m, pop, pop, generator=gen, device=dev)
            r[:, ar, ar] = -1.0
            r1, r2, r3 = r.topk(3, dim=2).indices.unbind(2)
            par = cand[idx]
            bi = torch.arange(m, device=dev)[:, None]
            child = par[bi, r1] + self.f * (par[bi, r2] - par[bi, r3])
            child[..., 0] = child[..., 0].clamp(0, h - 1)
            child[..., 1] = child[..., 1].clamp(0, w - 1)
            child[..., 2:] = child[..., 2:].clamp(lo, hi)
            cf, cfool = self._fitness(model, self._apply(x[idx], child, lo, hi),
                                      lab[idx].repeat_interleave(pop),
                                      y[idx].repeat_interleave(pop), targeted)
            cf, cfool = cf.view(m, pop), cfool.view(m, pop)
            queries[idx] += pop
            # a fooling child always survives (its probability may still exceed the parent's)
            keep = (cf <= fit[idx]) | (cfool & ~fooled[idx])
            cand[idx] = torch.where(keep[..., None, None], child, par)
            fit[idx] = torch.where(keep, cf, fit[idx])
            fooled[idx] = torch.where(keep, cfool, fooled[idx])
            done[idx] = fooled[idx].any(1)
        # best member: a fooling one if any, else the fittest
        score = fit - fooled.float() * 1e6
        best = score.argmin(1)
        sel = cand[torch.arange(n, device=dev), best].unsqueeze(1)
        return self._apply(x, sel, lo, hi), queries
