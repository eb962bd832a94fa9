"""Rotation by +-degrees about the image centre (bilinear; kornia), the geometric
denoiser of the XEnsemble defense (angles -12..+12 degrees). Fixed: every image turns by
`degrees`. Random (`randomize=True`): each image turns by an angle drawn uniformly from
[-degrees, +degrees] on every call, a random input transformation attacked with EOT.
Differentiable either way.
"""

from __future__ import annotations

from dataclasses import dataclass

import kornia
import torch

from bastion.core import require
from bastion.defenses.preprocess.base import Transform, register

FILLS = ("low", "border", "reflection")


@register
@dataclass(frozen=True)
class Rotation(Transform):
    """Rotate by `degrees` (default 12, counter-clockwise; fixed) or, with `randomize`,
    by U(-degrees, +degrees) per image. Corners are filled with the lower bound ('low',
    black on MNIST), the nearest edge value ('border') or a mirror ('reflection')."""

    name = "rotation"

    degrees: float = 12.0
    randomize: bool = False
    fill: str = "low"

    def __post_init__(self) -> None:
        require(isinstance(self.degrees, (int, float)) and not isinstance(self.degrees, bool)
                and -180.0 <= self.degrees <= 180.0,
                f"rotation: degrees must be a number in [-180, 180], got {self.degrees!r}")
        require(isinstance(self.randomize, bool),
                f"rotation: randomize must be true or false, got {self.randomize!r}")
        require(self.fill in FILLS, f"rotation: fill must be one of {', '.join(FILLS)}, got "
                                    f"{self.fill!r}")

    @property  # type: ignore[misc, override]
    def random(self) -> bool:
        return self.randomize and self.degrees != 0

    def angles(self, n: int, device: torch.device) -> torch.Tensor:
        if self.randomize:
            return (torch.rand(n, device=device) * 2 - 1) * self.degrees
        return torch.full((n,), float(self.degrees), device=device)

    def apply(self, x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
        angle = self.angles(x.shape[0], x.device).to(x.dtype)
        mode = "zeros" if self.fill == "low" else self.fill
        return kornia.geometry.transform.rotate(x - lo, angle, mode="bilinear",
                                                padding_mode=mode) + lo
