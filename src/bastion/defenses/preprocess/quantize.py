"""Colour-depth reduction (Xu et al. 2018, feature squeezing; the XEnsemble defense
"quan-k-bit"): round every value to one of 2^k evenly spaced levels of the bounds.

With k = 1 on [0, 1], values below 0.5 become 0 and values above become 1 (the sources'
MNIST default). The map is piecewise constant: autograd gives a zero gradient almost
everywhere, so it is declared non-differentiable and attacked with BPDA (straight-through,
Athalye et al. 2018).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bastion.defenses.preprocess.base import Transform, check_int, register


@register
@dataclass(frozen=True)
class BitDepth(Transform):
    """Reduce each value to `bits` bits (2^bits levels); 1..8, default 1 (Xu et al. 2018,
    MNIST). Idempotent: T(T(x)) == T(x)."""

    name = "bit-depth"
    differentiable = False
    image_only = False

    bits: int = 1

    def __post_init__(self) -> None:
        check_int(self.name, "bits", self.bits, 1, 8)

    def apply(self, x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
        levels = 2 ** self.bits - 1
        u = ((x - lo) / (hi - lo)).clamp(0, 1)
        return torch.round(u * levels) / levels * (hi - lo) + lo
