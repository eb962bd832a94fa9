"""JPEG compression (Dziugaite et al. 2016; Guo et al. 2018 at quality 75), as a batched
torch codec: 8 x 8 block DCT of the level-shifted image (YCbCr with 4:2:0 chroma
subsampling for 3 channels, luminance only for 1), division by the libjpeg quantisation
tables scaled to `quality`, rounding, and the inverse; the decoded image is rounded to
8-bit values, as a real decoder does.

The rounding makes autograd's gradient zero almost everywhere, so the transform is
declared non-differentiable. Its declared BPDA approximation is the same codec with the
differentiable polynomial rounding round(z) + (z - round(z))^3 of Shin and Song (2017),
the approximation kornia's `jpeg_codec_differentiable` uses.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

from bastion.core import InputSpec, require
from bastion.defenses.preprocess.base import Bounds, Transform, check_int, register

_LUMA = [16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40,
         57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35,
         55, 64, 81, 104, 113, 92, 49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112,
         100, 103, 99]
_CHROMA = [17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99,
           99, 99, 99, 47, 66, 99, 99, 99, 99, 99, 99] + [99] * 32

Rounding = Callable[[torch.Tensor], torch.Tensor]


def hard_round(z: torch.Tensor) -> torch.Tensor:
    return torch.round(z)


def soft_round(z: torch.Tensor) -> torch.Tensor:
    """Shin and Song (2017): equal to round(z) at integers, derivative 3 (z - round z)^2."""
    r = torch.round(z).detach()
    return r + (z - r) ** 3


@lru_cache(maxsize=8)
def _dct_matrix(device: str) -> torch.Tensor:
    k = torch.arange(8, dtype=torch.float64).view(8, 1)
    n = torch.arange(8, dtype=torch.float64).view(1, 8)
    d = torch.cos(math.pi * (2 * n + 1) * k / 16) * math.sqrt(2 / 8)
    d[0] /= math.sqrt(2)
    return d.float().to(device)


def quant_table(quality: int, chroma: bool) -> torch.Tensor:
    """libjpeg's table for `quality` (1..100): the base table scaled by 5000 / q below
    50 and by 200 - 2 q from 50, rounded, clipped to 1..255."""
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality
    base = torch.tensor(_CHROMA if chroma else _LUMA, dtype=torch.float32).view(8, 8)
    return torch.floor((base * scale + 50) / 100).clamp(1, 255)


def _code_plane(p: torch.Tensor, q: torch.Tensor, rnd: Rounding) -> torch.Tensor:
    """DCT, quantise, dequantise, inverse DCT of a (N, H, W) plane in level-shifted
    0..255 units, H and W multiples of 8."""
    n, h, w = p.shape
    d = _dct_matrix(str(p.device)).to(p.dtype)
    blocks = p.view(n, h // 8, 8, w // 8, 8).transpose(2, 3)  # (n, bh, bw, 8, 8)
    coef = d @ blocks @ d.T
    q = q.to(p.device, p.dtype)
    coef = rnd(coef / q) * q
    return (d.T @ coef @ d).transpose(2, 3).reshape(n, h, w)


def _to_ycbcr(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = -0.168736 * r - 0.331264 * g + 0.5 * b + 128
    cr = 0.5 * r - 0.418688 * g - 0.081312 * b + 128
    return torch.stack([y, cb, cr], 1)


def _to_rgb(x: torch.Tensor) -> torch.Tensor:
    y, cb, cr = x.unbind(1)
    r = y + 1.402 * (cr - 128)
    g = y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128)
    b = y + 1.772 * (cb - 128)
    return torch.stack([r, g, b], 1)


def jpeg_codec(x255: torch.Tensor, quality: int, rnd: Rounding = hard_round) -> torch.Tensor:
    """Encode and decode a (N, C, H, W) batch of 0..255 values, C in {1, 3}."""
    n, c, h, w = x255.shape
    m = 8 if c == 1 else 16
    ph, pw = -h % m, -w % m
    img = F.pad(x255, (0, pw, 0, ph), mode="replicate") if ph or pw else x255
    qy, qc = quant_table(quality, False), quant_table(quality, True)
    if c == 1:
        out = _code_plane(img[:, 0] - 128, qy, rnd).unsqueeze(1) + 128
    else:
        ycc = _to_ycbcr(img)
        y = _code_plane(ycc[:, 0] - 128, qy, rnd) + 128
        chroma = F.avg_pool2d(ycc[:, 1:], 2)
        hh, ww = chroma.shape[-2:]
        coded = _code_plane(chroma.reshape(n * 2, hh, ww) - 128, qc, rnd).view(n, 2, hh, ww) + 128
        up = F.interpolate(coded, scale_factor=2, mode="nearest")
        out = _to_rgb(torch.cat([y.unsqueeze(1), up], 1))
    return rnd(out.clamp(0, 255))[..., :h, :w]


@register
@dataclass(frozen=True)
class JPEG(Transform):
    """JPEG compression at `quality` 1..100 (default 75, Guo et al. 2018); 1 or 3
    channels."""

    name = "jpeg"
    differentiable = False

    quality: int = 75

    def __post_init__(self) -> None:
        check_int(self.name, "quality", self.quality, 1, 100)

    def check_spec(self, spec: InputSpec) -> None:
        super().check_spec(spec)
        require(spec.shape[0] in (1, 3), f"jpeg: needs 1 (grey) or 3 (RGB) channels, the model "
                                         f"takes {spec.shape[0]}")

    def _coded(self, x: torch.Tensor, lo: float, hi: float, rnd: Rounding) -> torch.Tensor:
        x255 = (x - lo) / (hi - lo) * 255
        return jpeg_codec(x255, self.quality, rnd) / 255 * (hi - lo) + lo

    def apply(self, x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
        return self._coded(x, lo, hi, hard_round)

    def approximation(self, x: torch.Tensor, bounds: Bounds = (0.0, 1.0)) -> torch.Tensor:
        lo, hi = float(bounds[0]), float(bounds[1])
        return self._coded(x, lo, hi, soft_round).clamp(lo, hi)
