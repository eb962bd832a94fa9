"""Gradient-level defenses against gradient leakage, as transforms on a payload.

Each defense maps a gradient dict (parameter name -> tensor) to a sanitised one, so it
applies equally to a `SharedGradient`, to a `WeightUpdate` (its implied gradient), to the
batch gradient of every local SGD step in the federated simulation, and - for the
per-example defense - to per-example gradients inside local training.

- `GaussianNoise(sigma)`: g + N(0, sigma^2) per coordinate (Zhu et al., 2019, sec. 5).
- `Prune(ratio)`: gradient pruning / top-k sparsification; per tensor, the `ratio`
  fraction of entries with the smallest magnitude is set to zero (Zhu et al., 2019).
- `Quantize(bits)`: uniform symmetric quantisation per tensor to 2^bits - 1 levels over
  [-max|g|, max|g|] (deterministic rounding).
- `ClipNoise(clip, sigma)`: the type-2 defense. Inside local training it is DP-SGD's step
  (Abadi et al., 2016): clip each example's gradient to L2 norm `clip`, sum, add
  N(0, sigma^2 clip^2), divide by the batch size. On a single gradient (a payload, a
  type-2 view of one example) it clips to `clip` and adds N(0, sigma^2 clip^2).

`parse_defense("noise:0.01" | "prune:0.9" | "quant:8" | "clip:1,0.01")` builds one from
the CLI notation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from bastion.attacks.privacy.leakage.payload import Payload, SharedGradient, WeightUpdate
from bastion.core import ConfigError

Tensors = dict[str, torch.Tensor]


def _randn_like(t: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
    if gen is None:
        return torch.randn_like(t)
    return torch.randn(t.shape, generator=gen, dtype=t.dtype).to(t.device)


@dataclass(frozen=True)
class GradientDefense:
    """Base class: `apply(grads, gen)` on a gradient dict; `__call__(payload, seed)` on a
    payload. `per_example` defenses also implement `aggregate(per_example_grads, gen)`."""

    per_example: ClassVar[bool] = False

    @property
    def name(self) -> str:
        return type(self).__name__

    def params(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def label(self) -> str:
        return self.name

    def apply(self, grads: Tensors, gen: torch.Generator | None = None) -> Tensors:
        raise NotImplementedError

    def __call__(self, payload: Payload, seed: int = 0) -> SharedGradient:
        """The sanitised gradient payload (a weight update is first turned into its
        gradient, which is what the attacks consume)."""
        gen = torch.Generator().manual_seed(seed)
        g = payload.to_gradient() if isinstance(payload, WeightUpdate) else payload
        return g.with_gradients(self.apply(g.gradients, gen), defense=self.label())


@dataclass(frozen=True)
class GaussianNoise(GradientDefense):
    """Additive Gaussian noise with standard deviation `sigma`."""

    sigma: float = 1e-2

    def __post_init__(self) -> None:
        if not self.sigma >= 0:
            raise ConfigError(f"noise sigma must be >= 0, got {self.sigma}")

    def label(self) -> str:
        return f"noise:{self.sigma:g}"

    def apply(self, grads: Tensors, gen: torch.Generator | None = None) -> Tensors:
        return {k: g + self.sigma * _randn_like(g, gen) for k, g in grads.items()}


@dataclass(frozen=True)
class Prune(GradientDefense):
    """Zero the `ratio` fraction of smallest-magnitude entries of each tensor (top-k
    compression keeping 1 - ratio)."""

    ratio: float = 0.9

    def __post_init__(self) -> None:
        if not 0 <= self.ratio < 1:
            raise ConfigError(f"prune ratio must be in [0, 1), got {self.ratio}")

    def label(self) -> str:
        return f"prune:{self.ratio:g}"

    def apply(self, grads: Tensors, gen: torch.Generator | None = None) -> Tensors:
        out = {}
        for k, g in grads.items():
            n = g.numel()
            drop = int(self.ratio * n)
            if drop == 0:
                out[k] = g.clone()
                continue
            flat = g.flatten()
            idx = flat.abs().topk(n - drop).indices
            mask = torch.zeros_like(flat, dtype=torch.bool)
            mask[idx] = True
            out[k] = torch.where(mask, flat, torch.zeros_like(flat)).view_as(g)
        return out


@dataclass(frozen=True)
class Quantize(GradientDefense):
    """Uniform symmetric quantisation of each tensor to `bits` bits."""

    bits: int = 8

    def __post_init__(self) -> None:
        if not 1 <= int(self.bits) <= 32:
            raise ConfigError(f"quantisation bits must be in [1, 32], got {self.bits}")

    def label(self) -> str:
        return f"quant:{self.bits}"

    def apply(self, grads: Tensors, gen: torch.Generator | None = None) -> Tensors:
        levels = max(1, 2 ** (int(self.bits) - 1) - 1)
        out = {}
        for k, g in grads.items():
            scale = g.abs().max()
            if float(scale) == 0:
                out[k] = g.clone()
                continue
            out[k] = torch.round(g / scale * levels) / levels * scale
        return out


@dataclass(frozen=True)
class ClipNoise(GradientDefense):
    """Per-example clipping to L2 norm `clip` plus Gaussian noise N(0, (sigma*clip)^2)."""

    clip: float = 1.0
    sigma: float = 1.0
    per_example: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if not self.clip > 0:
            raise ConfigError(f"clip norm must be positive, got {self.clip}")
        if not self.sigma >= 0:
            raise ConfigError(f"noise multiplier sigma must be >= 0, got {self.sigma}")

    def label(self) -> str:
        return f"clip:{self.clip:g},{self.sigma:g}"

    def apply(self, grads: Tensors, gen: torch.Generator | None = None) -> Tensors:
        norm = torch.sqrt(sum((g.float() ** 2).sum() for g in grads.values()))
        factor = torch.clamp(self.clip / (norm + 1e-12), max=1.0)
        std = self.sigma * self.clip
        return {k: g * factor + std * _randn_like(g, gen) for k, g in grads.items()}

    def aggregate(self, per_example: Tensors, gen: torch.Generator | None = None) -> Tensors:
        """DP-SGD step gradient from per-example gradients [B, ...]."""
        b = next(iter(per_example.values())).shape[0]
        sq = sum(g.flatten(1).pow(2).sum(1) for g in per_example.values())
        factor = torch.clamp(self.clip / (sq.sqrt() + 1e-12), max=1.0)
        std = self.sigma * self.clip
        out = {}
        for k, g in per_example.items():
            s = (g * factor.view(-1, *([1] * (g.dim() - 1)))).sum(0)
            out[k] = (s + std * _randn_like(s, gen)) / b
        return out


DEFENSES = {"noise": GaussianNoise, "prune": Prune, "quant": Quantize, "clip": ClipNoise}


def parse_defense(text: str) -> GradientDefense:
    """'noise:SIGMA', 'prune:RATIO', 'quant:BITS' or 'clip:C,SIGMA' -> a defense."""
    kind, _, arg = text.partition(":")
    kind = kind.strip().lower()
    if kind not in DEFENSES:
        raise ConfigError(f"unknown gradient defense {kind!r}; valid: noise:SIGMA, prune:RATIO, "
                          "quant:BITS, clip:C,SIGMA")
    try:
        vals = [float(v) for v in arg.split(",") if v.strip()]
    except ValueError as e:
        raise ConfigError(f"defense {text!r}: expected numbers after ':'") from e
    if kind == "clip":
        if len(vals) != 2:
            raise ConfigError(f"defense {text!r}: expected clip:C,SIGMA (e.g. clip:1,0.01)")
        return ClipNoise(clip=vals[0], sigma=vals[1])
    if len(vals) != 1:
        raise ConfigError(f"defense {text!r}: expected exactly one value, e.g. {kind}:0.5")
    if kind == "quant":
        if vals[0] != int(vals[0]):
            raise ConfigError(f"defense {text!r}: bits must be an integer")
        return Quantize(bits=int(vals[0]))
    return DEFENSES[kind](vals[0])  # type: ignore[call-arg]
