"""Local spatial smoothing: median, mean and Gaussian filters over a k x k window with
reflect padding (Xu et al. 2018; the median filter is their "MedFilter-k x k").

Windows are centred, so kernels must be odd. Xu et al. also report a 2 x 2 median on
MNIST; that window is not centred (it covers the pixel and its upper-left neighbours,
SciPy's convention, shifting the image by half a pixel), so Bastion offers 3 x 3, the
other size they report, as the default.

All three are differentiable in autograd: the median routes the gradient to the selected
value (sparse but non-zero), mean and Gaussian filters are linear.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import kornia
import torch
import torch.nn.functional as F

from bastion.core import InputSpec
from bastion.defenses.preprocess.base import (
    Transform,
    check_fits,
    check_int,
    check_odd_kernel,
    check_positive,
    register,
)


@dataclass(frozen=True)
class _WindowFilter(Transform):
    """A filter over an odd k x k window that must fit inside the image."""

    kernel: int = 3

    def __post_init__(self) -> None:
        check_odd_kernel(self.name, "kernel", self.kernel)

    def check_spec(self, spec: InputSpec) -> None:
        super().check_spec(spec)
        check_fits(self.name, spec, self.kernel // 2)


@register
@dataclass(frozen=True)
class MedianFilter(_WindowFilter):
    """Replace each value by the median of its k x k window (per channel); kernel odd,
    default 3. Removes isolated salt-and-pepper pixels; a constant image is unchanged."""

    name = "median"

    def apply(self, x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
        k, r = self.kernel, self.kernel // 2
        if k == 1:
            return x
        n, c, h, w = x.shape
        padded = F.pad(x, (r, r, r, r), mode="reflect")
        windows = F.unfold(padded, k).view(n, c, k * k, h * w)
        return windows.median(dim=2).values.view(n, c, h, w)


@register
@dataclass(frozen=True)
class MeanFilter(_WindowFilter):
    """Replace each value by the mean of its k x k window; kernel odd, default 3 (the
    smallest window of the sources' spatial-smoothing comparison)."""

    name = "mean"

    def apply(self, x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
        return kornia.filters.box_blur(x, (self.kernel, self.kernel), border_type="reflect")


@register
@dataclass(frozen=True)
class GaussianBlur(Transform):
    """Gaussian smoothing with standard deviation `sigma` pixels (default 1.0) over an odd
    window `kernel` (default 0: the smallest odd size >= 6 sigma + 1, i.e. +-3 sigma)."""

    name = "gaussian-blur"

    sigma: float = 1.0
    kernel: int = 0

    def __post_init__(self) -> None:
        check_positive(self.name, "sigma", self.sigma)
        if self.kernel != 0:
            check_odd_kernel(self.name, "kernel", self.kernel)
        else:
            check_int(self.name, "kernel", self.kernel, 0)

    @property
    def size(self) -> int:
        return self.kernel or 2 * math.ceil(3 * self.sigma) + 1

    def check_spec(self, spec: InputSpec) -> None:
        super().check_spec(spec)
        check_fits(self.name, spec, self.size // 2)

    def apply(self, x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
        k = self.size
        return kornia.filters.gaussian_blur2d(x, (k, k), (self.sigma, self.sigma),
                                              border_type="reflect")
