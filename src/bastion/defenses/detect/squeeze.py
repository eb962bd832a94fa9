"""Feature squeezing (Xu, Evans & Qi 2018): compare the model's softmax on an input with
its softmax on "squeezed" copies (reduced colour depth, local median smoothing,
non-local means); flag the input when the largest L1 distance exceeds a threshold set on
benign data at a 5% false-positive rate.

Squeezers by dataset (the paper's best joint detectors): MNIST, bit depth 1 and a 2 x 2
median; CIFAR-10, bit depth 5, 2 x 2 median and non-local means 13-3-2. Bastion picks the
MNIST set for one-channel images and the CIFAR set for three-channel images unless
squeezers are given. Non-local means 13-3-2 is search window 13, patch 3, strength 2 grey
levels; `nlm_strength=4` gives 13-3-4, the setting of the XEnsemble comparison (Wei et
al. 2020).

The paper's 2 x 2 median follows SciPy's `median_filter(size=2)`: the window covers the
pixel and its upper-left neighbours (edges extended by repeating the border pixel,
SciPy's 'reflect' mode) and takes the upper of the two middle values (rank 2 of 4). It is
not centred, so `bastion.defenses.preprocess.MedianFilter` (odd windows only) does not
offer it; `Median2x2` here reproduces it exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from bastion.core import Classifier, InputSpec, require
from bastion.defenses.detect.base import DEFAULT_FPR, check_fpr
from bastion.defenses.detect.distance import PredictionDistance, TransformSpec
from bastion.defenses.preprocess.base import Transform
from bastion.defenses.preprocess.nlm import NonLocalMeans
from bastion.defenses.preprocess.quantize import BitDepth


@dataclass(frozen=True)
class Median2x2(Transform):
    """The feature squeezer's 2 x 2 median (Xu et al. 2018), equal to SciPy's
    `ndimage.median_filter(x, size=(1, 1, 2, 2), mode='reflect')`. Autograd routes the
    gradient to the selected value, as for the odd median filter."""

    name = "median-2x2"

    def check_spec(self, spec: InputSpec) -> None:
        super().check_spec(spec)
        h, w = spec.shape[-2:]
        require(h >= 2 and w >= 2, f"{self.name}: images must be at least 2 x 2, got {h} x {w}")

    def apply(self, x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
        n, c, h, w = x.shape
        padded = F.pad(x, (1, 0, 1, 0), mode="replicate")
        windows = F.unfold(padded.reshape(n * c, 1, h + 1, w + 1), 2).view(n, c, 4, h * w)
        return windows.sort(dim=2).values[:, :, 2].view(n, c, h, w)


@dataclass(frozen=True)
class SqueezeConfig:
    """Feature-squeezing settings.

    Attributes:
        squeezers: transforms to compare against (Transforms, names or mappings);
            None = the paper's set for the input's channel count (see the module text).
        fpr: benign false-positive rate of the calibrated threshold (paper: 5%).
        bits_gray, bits_color: colour depths of the default sets (paper: 1 and 5).
        nlm_strength: filter strength of the default colour set's non-local means
            (paper: 2).
    """

    squeezers: Sequence[TransformSpec] | None = None
    fpr: float = DEFAULT_FPR
    bits_gray: int = 1
    bits_color: int = 5
    nlm_strength: float = 2.0

    def __post_init__(self) -> None:
        check_fpr(self.fpr, "feature-squeezing")
        require(self.squeezers is None or isinstance(self.squeezers, (list, tuple)),
                f"feature-squeezing: squeezers must be a list of transforms, got {self.squeezers!r}")
        for f in ("bits_gray", "bits_color"):
            v = getattr(self, f)
            require(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 8,
                    f"feature-squeezing: {f} must be an integer in 1..8, got {v!r}")
        v = self.nlm_strength
        require(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < float("inf"),
                f"feature-squeezing: nlm_strength must be a positive number, got {v!r}")

    def default_squeezers(self, spec: InputSpec) -> list[Transform]:
        image = len(spec.shape) == 3
        if not image:
            return [BitDepth(self.bits_gray)]
        if spec.shape[0] == 1:
            return [BitDepth(self.bits_gray), Median2x2()]
        return [BitDepth(self.bits_color), Median2x2(),
                NonLocalMeans(search=13, patch=3, h=self.nlm_strength)]


class FeatureSqueezing(PredictionDistance):
    """Feature-squeezing detector (Xu, Evans & Qi 2018).

        fs = FeatureSqueezing(model)          # MNIST: bit depth 1 + median 2x2
        fs.calibrate(x_benign)                # threshold at 5% benign FPR
        flagged = fs.flag(x_adv)
    """

    name = "feature-squeezing"

    def __init__(self, classifier: Classifier, config: SqueezeConfig | None = None) -> None:
        cfg = config or SqueezeConfig()
        squeezers = (cfg.squeezers if cfg.squeezers is not None
                     else cfg.default_squeezers(classifier.spec) if isinstance(classifier, Classifier)
                     else [])
        super().__init__(classifier, squeezers, fpr=cfg.fpr)
        self.config = cfg

    def params(self) -> dict[str, Any]:
        return {"squeezers": self.labels()}
