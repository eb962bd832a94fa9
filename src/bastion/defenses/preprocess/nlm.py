"""Non-local means (Buades et al. 2005): replace each pixel by the average of the pixels
in an a x a search window, each weighted by how similar its b x b patch is to the
pixel's own patch. The XEnsemble defense writes "NLM-a-b-c"; its default 11-2-4 is used
here (Xu et al. 2018 use 13-3-2 on CIFAR-10).

Weight of a neighbour q for pixel p: exp(-d2(p, q) / h^2), with d2 the mean squared
difference of the two patches (over patch positions and channels) and h the filter
strength in 8-bit grey levels (h = 4 means 4/255 of the value range). A batched torch
implementation (all search offsets at once with `unfold`): runs on the model's device and
is differentiable in autograd, so no BPDA is needed.
"""

from __future__ import annotations

from dataclasses import dataclass

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


@register
@dataclass(frozen=True)
class NonLocalMeans(Transform):
    """Non-local means with an odd `search` window (default 11), a `patch` size (default
    2; even patches extend towards the lower-right) and strength `h` in grey levels of 255
    (default 4)."""

    name = "nlm"

    search: int = 11
    patch: int = 2
    h: float = 4.0

    def __post_init__(self) -> None:
        check_odd_kernel(self.name, "search", self.search)
        check_int(self.name, "patch", self.patch, 1, 15)
        check_positive(self.name, "h", self.h)

    def check_spec(self, spec: InputSpec) -> None:
        super().check_spec(spec)
        check_fits(self.name, spec, self.search // 2)

    def apply(self, x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
        n, c, hgt, wid = x.shape
        s, r = self.search, self.search // 2
        padded = F.pad(x, (r, r, r, r), mode="reflect")
        neigh = F.unfold(padded, s).view(n, c, s * s, hgt, wid)
        diff2 = ((neigh - x.unsqueeze(2)) ** 2).mean(1)  # (n, s*s, h, w)
        p = self.patch
        if p > 1:
            lo_pad, hi_pad = (p - 1) // 2, p // 2
            diff2 = F.avg_pool2d(F.pad(diff2, (lo_pad, hi_pad, lo_pad, hi_pad), mode="replicate"),
                                 p, stride=1)
        strength = self.h / 255.0 * (hi - lo)
        weights = torch.exp(-diff2 / strength ** 2)  # the centre offset has weight 1
        return (weights.unsqueeze(1) * neigh).sum(2) / weights.sum(1, keepdim=True)
