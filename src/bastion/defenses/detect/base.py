"""The `Detector` contract: a per-input suspicion score, a threshold calibrated on benign
data at a chosen false-positive rate, and the flag `score > threshold`.

Every detector here follows the calibration protocol of Xu, Evans & Qi (2018, feature
squeezing): the threshold is the (1 - fpr) quantile of the scores of benign inputs, so
that about a fraction `fpr` of benign inputs is flagged (5% by default). A detector also
exposes `differentiable_score`, the same score with gradients, which the detector-aware
attack of Carlini & Wagner (2017) descends (`bastion.defenses.detect.adaptive`).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from bastion.core import Classifier, ConfigError, check_inputs, require

DEFAULT_FPR = 0.05


def check_fpr(fpr: Any, who: str = "detector") -> float:
    """Require a false-positive rate strictly inside (0, 1)."""
    ok = isinstance(fpr, (int, float)) and not isinstance(fpr, bool) and 0.0 < fpr < 1.0
    require(ok, f"{who}: fpr must lie strictly between 0 and 1 (e.g. 0.05), got {fpr!r}")
    return float(fpr)


def quantile_threshold(scores: torch.Tensor, fpr: float) -> float:
    """The threshold that flags at most a fraction `fpr` of `scores` (flag = score >
    threshold): the ceil((1 - fpr) n)-th smallest score, i.e. the empirical (1 - fpr)
    quantile without interpolation."""
    s = scores.detach().flatten().float().cpu().sort().values
    n = s.numel()
    k = max(min(math.ceil((1.0 - fpr) * n), n), 1)
    return float(s[k - 1])


class Detector:
    """Base class of evasion detectors.

    Subclasses implement `differentiable_score(x)` (a per-input score, higher = more
    suspicious, with autograd through it) and may override `score` with a cheaper
    gradient-free version. `calibrate(x_benign, fpr)` sets `threshold`; `flag(x)` is
    `score(x) > threshold`.

    Attributes:
        classifier: the model whose inputs are screened (None when the score does not
            depend on it).
        fpr: the benign false-positive rate the threshold was (or will be) calibrated at.
        threshold: the decision threshold; None until calibrated (or fixed by a config).
    """

    name: ClassVar[str] = "detector"

    def __init__(self, classifier: Classifier | None, fpr: float = DEFAULT_FPR,
                 threshold: float | None = None) -> None:
        if classifier is not None and not isinstance(classifier, Classifier):
            raise ConfigError(f"{self.name}: needs a bastion Classifier, got "
                              f"{type(classifier).__name__}")
        self.classifier = classifier
        self.fpr = check_fpr(fpr, self.name)
        if threshold is not None:
            require(isinstance(threshold, (int, float)) and not isinstance(threshold, bool)
                    and math.isfinite(threshold),
                    f"{self.name}: threshold must be a finite number, got {threshold!r}")
        self.threshold: float | None = None if threshold is None else float(threshold)
        self.calibration: dict[str, Any] = {}

    # ------------------------------------------------------------------ device / checks
    @property
    def device(self) -> torch.device:
        assert self.classifier is not None
        return self.classifier.device

    def check(self, x: torch.Tensor) -> None:
        if self.classifier is not None:
            check_inputs(x, self.classifier.spec)

    # ------------------------------------------------------------------ scores
    def differentiable_score(self, x: torch.Tensor) -> torch.Tensor:
        """Per-input score [N] with gradients w.r.t. `x` (on the model's device)."""
        raise NotImplementedError

    def score(self, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Per-input score [N], batched and without gradients."""
        self.check(x)
        dev = self.device
        outs = []
        with torch.no_grad():
            for i in range(0, x.shape[0], batch_size):
                outs.append(self.differentiable_score(x[i:i + batch_size].to(dev)))
        return torch.cat(outs) if outs else torch.empty(0, device=dev)

    # ------------------------------------------------------------------ calibration
    def calibrate(self, x_benign: torch.Tensor, fpr: float | None = None) -> float:
        """Set `threshold` to the (1 - fpr) quantile of the scores of `x_benign` (benign
        inputs not used to train the detector); returns it. fpr defaults to `self.fpr`."""
        fpr = self.fpr if fpr is None else check_fpr(fpr, self.name)
        n = int(x_benign.shape[0])
        need = math.ceil(1.0 / fpr)
        require(n >= need, f"{self.name}: calibrating at fpr {fpr:g} needs at least {need} "
                           f"benign inputs, got {n}")
        scores = self.score(x_benign)
        self.threshold = quantile_threshold(scores, fpr)
        self.fpr = fpr
        self.calibration = {"n": n, "fpr": fpr, "threshold": self.threshold,
                            "benign_flagged": int((scores > self.threshold).sum()) / n}
        return self.threshold

    @property
    def calibrated(self) -> bool:
        return self.threshold is not None

    def flag(self, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Boolean mask [N]: True where the input is flagged as adversarial."""
        if self.threshold is None:
            raise ConfigError(f"{self.name}: no threshold yet; call calibrate(x_benign) first")
        return self.score(x, batch_size) > self.threshold

    # ------------------------------------------------------------------ reports
    def params(self) -> dict[str, Any]:
        return {}

    def describe(self) -> dict[str, Any]:
        """Name, parameters, threshold and calibration facts, for reports."""
        return {"name": self.name, "params": self.params(), "fpr": self.fpr,
                "threshold": self.threshold, "calibration": dict(self.calibration)}
