"""Additive Gaussian noise, the simplest random input transformation (the defense
lecture's "random input transformation"; the noise layer of randomised smoothing,
Cohen et al. 2019). Random and differentiable: attacked with EOT (Athalye et al. 2018).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bastion.defenses.preprocess.base import Transform, check_positive, register


@register
@dataclass(frozen=True)
class GaussianNoise(Transform):
    """Add N(0, sigma^2) noise, sigma a fraction of the value range (default 0.1), then
    clip to the bounds. Fresh noise on every call (torch's global generator on the input's
    device; seed it with `bastion.core.seed_everything`)."""

    name = "gaussian-noise"
    random = True
    image_only = False

    sigma: float = 0.1

    def __post_init__(self) -> None:
        check_positive(self.name, "sigma", self.sigma)

    def apply(self, x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
        return x + torch.randn_like(x) * (self.sigma * (hi - lo))
