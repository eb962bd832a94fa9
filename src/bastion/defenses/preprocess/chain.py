"""A chain of transforms applied left to right, itself a Transform: differentiable when
every member is, random when any member is. Its BPDA approximation chains the members'
approximations, so only the non-differentiable members are bypassed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from bastion.core import InputSpec, require
from bastion.defenses.preprocess.base import Bounds, Transform, build, register


@register
@dataclass(frozen=True)
class Chain(Transform):
    """`Chain((BitDepth(4), MedianFilter(3)))`: quantise, then smooth. `transforms`
    accepts Transforms, names or {'name': ..., **params} mappings."""

    name = "chain"
    image_only = False

    transforms: tuple[Transform, ...] = ()

    def __post_init__(self) -> None:
        require(isinstance(self.transforms, (list, tuple)) and len(self.transforms) > 0,
                "chain: transforms must be a non-empty list of transforms")
        object.__setattr__(self, "transforms", tuple(build(t) for t in self.transforms))

    @property  # type: ignore[misc, override]
    def differentiable(self) -> bool:
        return all(t.differentiable for t in self.transforms)

    @property  # type: ignore[misc, override]
    def random(self) -> bool:
        return any(t.random for t in self.transforms)

    def check_spec(self, spec: InputSpec) -> None:
        for t in self.transforms:
            t.check_spec(spec)

    def __call__(self, x: torch.Tensor, bounds: Bounds = (0.0, 1.0)) -> torch.Tensor:
        for t in self.transforms:
            x = t(x, bounds)
        return x

    def approximation(self, x: torch.Tensor, bounds: Bounds = (0.0, 1.0)) -> torch.Tensor:
        for t in self.transforms:
            x = t.approximation(x, bounds)
        return x

    def params(self) -> dict[str, Any]:
        return {"transforms": [t.describe() for t in self.transforms]}
