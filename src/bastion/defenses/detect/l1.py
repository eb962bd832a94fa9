"""The L1 prediction-distance rule of the XEnsemble input layer (Wei et al. 2020),
detection-only form: denoise the input with each of several denoisers, compute the L1
distance between the model's prediction vector on the input and on each denoised copy,
and flag the input when the largest distance exceeds a threshold.

A benign input keeps its prediction under a denoiser that preserves benign accuracy
(distance near 0); an adversarial input whose label the denoiser changes lands near 2
(any label change puts the distance above 1). The rule is attack-independent: a fixed
bound needs no adversarial data, either the "lower" bound 0.5 (more detections, more false
positives; the default) or the "upper" bound 1.5. `calibrate(x_benign, fpr)` replaces the
fixed bound by the (1 - fpr) quantile of benign distances, the calibration every detector
of this package shares.

Default denoisers for one-channel images (the MNIST team): 1-bit colour-depth reduction,
a 3 x 3 median filter and a rotation by -12 degrees; for colour images (the CIFAR-10
team): non-local means 13-3-4, a 2 x 2 median and a rotation by -12 degrees.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bastion.core import Classifier, InputSpec, require
from bastion.defenses.detect.base import DEFAULT_FPR, check_fpr
from bastion.defenses.detect.distance import PredictionDistance, TransformSpec
from bastion.defenses.preprocess.base import Transform
from bastion.defenses.preprocess.nlm import NonLocalMeans
from bastion.defenses.preprocess.quantize import BitDepth
from bastion.defenses.preprocess.rotation import Rotation
from bastion.defenses.preprocess.smoothing import MedianFilter

BOUNDS = {"lower": 0.5, "upper": 1.5}


@dataclass(frozen=True)
class L1Config:
    """Settings of the L1 prediction-distance rule.

    Attributes:
        denoisers: transforms (Transforms, names or mappings); None = the dataset team
            above, chosen by the input's channel count.
        bound: 'lower' (threshold 0.5, default), 'upper' (1.5) or a number in (0, 2).
        fpr: false-positive rate used when `calibrate` is called.
    """

    denoisers: Sequence[TransformSpec] | None = None
    bound: str | float = "lower"
    fpr: float = DEFAULT_FPR

    def __post_init__(self) -> None:
        check_fpr(self.fpr, "l1")
        require(self.denoisers is None or isinstance(self.denoisers, (list, tuple)),
                f"l1: denoisers must be a list of transforms, got {self.denoisers!r}")
        b = self.bound
        if isinstance(b, str):
            require(b in BOUNDS, f"l1: bound must be 'lower', 'upper' or a number in (0, 2), "
                                 f"got {b!r}")
        else:
            require(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 < b < 2,
                    f"l1: bound must be 'lower', 'upper' or a number in (0, 2), got {b!r}")

    @property
    def threshold(self) -> float:
        return BOUNDS[self.bound] if isinstance(self.bound, str) else float(self.bound)

    def default_denoisers(self, spec: InputSpec) -> list[Transform]:
        from bastion.defenses.detect.squeeze import Median2x2

        if len(spec.shape) != 3:
            return [BitDepth(1)]
        if spec.shape[0] == 1:
            return [BitDepth(1), MedianFilter(3), Rotation(-12.0)]
        return [NonLocalMeans(search=13, patch=3, h=4.0), Median2x2(), Rotation(-12.0)]


class L1Detector(PredictionDistance):
    """The XEnsemble L1 rule: max over denoisers of ||p(x) - p(denoise(x))||_1 > bound."""

    name = "l1"

    def __init__(self, classifier: Classifier, config: L1Config | None = None) -> None:
        cfg = config or L1Config()
        denoisers = (cfg.denoisers if cfg.denoisers is not None
                     else cfg.default_denoisers(classifier.spec) if isinstance(classifier, Classifier)
                     else [])
        super().__init__(classifier, denoisers, fpr=cfg.fpr, threshold=cfg.threshold)
        self.config = cfg
        self.calibration = {"fixed_bound": cfg.bound}

    def params(self) -> dict[str, Any]:
        return {"denoisers": self.labels(), "bound": self.config.bound}
