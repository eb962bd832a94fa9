"""`Detected(classifier, detector)`: a screened model that is a `Classifier`.

Its `forward` returns the wrapped classifier's logits unchanged, so every attack runs
against it as against the bare model (a detector does not change predictions); what the
wrapper adds is the screen: `detect(x)` gives the per-input flag and
`predict_with_reject(x)` the predictions together with it. A detector-aware attack
(`bastion.defenses.detect.adaptive.DetectorAwarePGD`) reads `detector` off the wrapper.
"""

from __future__ import annotations

from typing import Any

import torch

from bastion.attacks.evasion.adaptive import _Wrapper
from bastion.core import Classifier, ConfigError
from bastion.defenses.detect.base import Detector


class Detected(_Wrapper):
    """A classifier screened by a detector.

    Args:
        model: the Classifier whose predictions are served.
        detector: a Detector built for `model` (a prediction-distance detector must score
            this very model; a binary detector only needs the same input domain).
    """

    def __init__(self, model: Classifier, detector: Detector) -> None:
        if not isinstance(detector, Detector):
            raise ConfigError(f"Detected needs a Detector, got {type(detector).__name__}; build "
                              "one with bastion.defenses.detect.build_detector(name, model)")
        if not isinstance(model, Classifier):
            raise ConfigError(f"Detected wraps a bastion Classifier, got {type(model).__name__}")
        from bastion.defenses.detect.binary import BinaryDetector

        if not isinstance(detector, BinaryDetector) and detector.classifier is not model:
            raise ConfigError(f"the {detector.name} detector scores a different model; build it "
                              "for the classifier you wrap")
        if detector.classifier is not None and detector.classifier.spec != model.spec:
            raise ConfigError(f"the {detector.name} detector expects inputs {detector.classifier.spec}, "
                              f"the model takes {model.spec}")
        super().__init__(model, f"detected[{detector.name}]")
        self.detector = detector
        self.meta["defense"] = {"kind": "detector", **self.describe_detector()}

    def describe_detector(self) -> dict[str, Any]:
        return self.detector.describe()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)

    def detect(self, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Boolean mask [N]: True where the detector flags the input as adversarial."""
        self.check(x)
        return self.detector.flag(x.to(self.device), batch_size)

    def predict_with_reject(self, x: torch.Tensor, batch_size: int = 512
                            ) -> tuple[torch.Tensor, torch.Tensor]:
        """(predictions [N], flagged [N]): the model's labels and the detector's flags;
        a flagged input is to be rejected rather than answered."""
        flagged = self.detect(x, batch_size)
        return self.predict(x, batch_size), flagged
