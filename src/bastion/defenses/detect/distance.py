"""Prediction-distance detectors: flag an input whose prediction moves when the input is
transformed. Score = max over transforms t of || softmax f(x) - softmax f(t(x)) ||_1, a
number in [0, 2] (Xu, Evans & Qi 2018 for squeezers; the XEnsemble input layer, Wei
et al. 2020, for denoisers). Benign inputs keep their prediction under a mild transform
(score near 0); adversarial inputs sit close to a decision boundary and often do not
(score near 2 when the label flips).

The gradient version runs each non-differentiable transform as BPDA (Athalye et al.
2018): forward exact, backward through the transform's declared approximation (the
identity for bit-depth reduction, a straight-through estimator), as in
`bastion.attacks.evasion.adaptive.BPDA`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from bastion.core import Classifier, ConfigError, require
from bastion.defenses.detect.base import DEFAULT_FPR, Detector
from bastion.defenses.preprocess.base import Transform, build

TransformSpec = Transform | str | Mapping[str, Any]


def build_transforms(specs: Sequence[TransformSpec], who: str) -> tuple[Transform, ...]:
    """Transforms from Transforms, registry names or {'name': ..., **params} mappings;
    'median-2x2' is the feature squeezer's own even-window median."""
    from bastion.defenses.detect.squeeze import Median2x2

    if isinstance(specs, (str, Mapping, Transform)) or not isinstance(specs, Sequence):
        raise ConfigError(f"{who}: give a list of transforms, got {specs!r}")
    require(len(specs) >= 1, f"{who}: needs at least one transform")
    out = []
    for s in specs:
        name = s if isinstance(s, str) else s.get("name") if isinstance(s, Mapping) else None
        if isinstance(name, str) and name.lower() in ("median-2x2", "median2x2"):
            extra = sorted(set(s) - {"name"}) if isinstance(s, Mapping) else []
            require(not extra, f"{who}: median-2x2 takes no parameters, got {', '.join(extra)}")
            out.append(Median2x2())
        else:
            out.append(build(s))
    return tuple(out)


def transform_label(t: Transform) -> str:
    params = ", ".join(f"{k}={v}" for k, v in t.params().items())
    return f"{t.name}({params})" if params else t.name


class PredictionDistance(Detector):
    """Max L1 distance between the softmax on an input and on each transformed copy.

    Args:
        classifier: the screened model (its softmax is compared).
        transforms: the squeezers / denoisers (at least one).
        fpr: benign false-positive rate the threshold is calibrated at.
        threshold: a fixed threshold (no calibration needed), or None.
    """

    name = "prediction-distance"

    def __init__(self, classifier: Classifier, transforms: Sequence[TransformSpec],
                 fpr: float = DEFAULT_FPR, threshold: float | None = None) -> None:
        if not isinstance(classifier, Classifier):
            raise ConfigError(f"{self.name}: needs a bastion Classifier, got "
                              f"{type(classifier).__name__}")
        super().__init__(classifier, fpr, threshold)
        self.transforms = build_transforms(transforms, self.name)
        for t in self.transforms:
            t.check_spec(classifier.spec)

    def _through(self, t: Transform, x: torch.Tensor) -> torch.Tensor:
        bounds = self.classifier.spec.bounds  # type: ignore[union-attr]
        if t.differentiable or not x.requires_grad:
            return t(x, bounds)
        with torch.no_grad():
            tx = t(x.detach(), bounds)
        hx = t.approximation(x, bounds)
        return hx + (tx - hx).detach()

    def views(self, x: torch.Tensor) -> torch.Tensor:
        """x followed by each transformed copy, one batch of (1 + len(transforms)) N inputs,
        with gradients (BPDA where needed)."""
        return torch.cat([x] + [self._through(t, x) for t in self.transforms])

    def distances_of_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """[N, len(transforms)] L1 distances from the classifier's logits on `views(x)`."""
        p = logits.softmax(-1).view(len(self.transforms) + 1, -1, logits.shape[-1])
        return (p[1:] - p[:1]).abs().sum(-1).t()

    def distances(self, x: torch.Tensor) -> torch.Tensor:
        """[N, len(transforms)] L1 distances, with gradients (BPDA where needed)."""
        model = self.classifier
        assert model is not None
        return self.distances_of_logits(model(self.views(x)))

    def differentiable_score(self, x: torch.Tensor) -> torch.Tensor:
        return self.distances(x).max(1).values

    def params(self) -> dict[str, Any]:
        return {"transforms": [t.describe() for t in self.transforms]}

    def labels(self) -> list[str]:
        return [transform_label(t) for t in self.transforms]
