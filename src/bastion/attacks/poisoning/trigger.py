"""Backdoor triggers (Gu et al. 2017, BadNets): a single bright pixel or a small pattern of
pixels stamped at a chosen position, as a mask and a pattern: x' = (1 - m) * x + m * p."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from bastion.core import ConfigError

KINDS = ("pixel", "pattern", "square")
POSITIONS = ("bottom-right", "bottom-left", "top-right", "top-left")


@dataclass(frozen=True)
class Trigger:
    """A backdoor trigger.

    Attributes:
        kind: 'pixel' (one pixel), 'pattern' (a size x size checkerboard-like pattern:
            BadNets' pattern backdoor, the anti-diagonal ones plus the corners) or 'square'
            (a filled size x size square).
        size: side of the pattern/square in pixels (ignored for 'pixel').
        position: a corner name (POSITIONS) or (row, col) of the top-left pixel.
        margin: distance from the image border when a corner is named (default 1 pixel).
        value: the trigger's pixel value (default 1.0, the bright end of [0, 1]).
    """

    kind: str = "pattern"
    size: int = 3
    position: str | tuple[int, int] = "bottom-right"
    margin: int = 1
    value: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"unknown trigger kind {self.kind!r}; valid: {', '.join(KINDS)}")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise ConfigError(f"trigger size must be a positive integer, got {self.size!r}")
        if not isinstance(self.margin, int) or self.margin < 0:
            raise ConfigError(f"trigger margin must be an integer >= 0, got {self.margin!r}")
        if not 0.0 <= float(self.value) <= 1.0:
            raise ConfigError(f"trigger value must lie in [0, 1], got {self.value!r}")
        if isinstance(self.position, str):
            if self.position not in POSITIONS:
                raise ConfigError(f"unknown trigger position {self.position!r}; valid: {', '.join(POSITIONS)} "
                                  "or (row, col)")
        else:
            pos = tuple(self.position)
            if len(pos) != 2 or not all(isinstance(p, int) and p >= 0 for p in pos):
                raise ConfigError(f"trigger position must be a corner name or (row, col) >= 0, got {self.position!r}")
            object.__setattr__(self, "position", pos)

    @property
    def side(self) -> int:
        return 1 if self.kind == "pixel" else self.size

    def corner(self, h: int, w: int) -> tuple[int, int]:
        """(row, col) of the trigger's top-left pixel in an h x w image; ConfigError if it does not fit."""
        s = self.side
        if isinstance(self.position, str):
            r = self.margin if self.position.startswith("top") else h - self.margin - s
            c = self.margin if self.position.endswith("left") else w - self.margin - s
        else:
            r, c = self.position
        if s > min(h, w) or r < 0 or c < 0 or r + s > h or c + s > w:
            raise ConfigError(f"trigger of side {s} at (row {r}, col {c}) does not fit inside the {h} x {w} image "
                              "(the trigger must be no larger than the image and lie inside it)")
        return r, c

    def mask_pattern(self, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask [1, H, W] in {0, 1} and pattern [C, H, W] for images of shape (C, H, W)."""
        if len(shape) != 3:
            raise ConfigError(f"triggers need image inputs [C, H, W], got shape {tuple(shape)}")
        c, h, w = shape
        r0, c0 = self.corner(h, w)
        s = self.side
        mask = torch.zeros(1, h, w)
        if self.kind == "pattern" and s > 1:
            ii, jj = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
            local = ((ii + jj) % 2 == 0).float()        # checkerboard: the corners and the diagonals
        else:
            local = torch.ones(s, s)
        mask[0, r0:r0 + s, c0:c0 + s] = local
        pattern = torch.full((c, h, w), float(self.value))
        return mask, pattern

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Stamp the trigger on a batch [N, C, H, W] (returns a new tensor)."""
        mask, pattern = self.mask_pattern(tuple(x.shape[1:]))
        mask, pattern = mask.to(x.device, x.dtype), pattern.to(x.device, x.dtype)
        return (1 - mask) * x + mask * pattern

    def to_dict(self) -> dict[str, Any]:
        pos = self.position if isinstance(self.position, str) else list(self.position)
        return {"kind": self.kind, "size": self.size, "position": pos, "margin": self.margin,
                "value": float(self.value)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Trigger:
        pos = d.get("position", "bottom-right")
        return cls(kind=d.get("kind", "pattern"), size=int(d.get("size", 3)),
                   position=pos if isinstance(pos, str) else (int(pos[0]), int(pos[1])),
                   margin=int(d.get("margin", 1)), value=float(d.get("value", 1.0)))
