"""Detectors by name: `build_detector(name, classifier, **params)`; the parameters are the
fields of the detector's config dataclass."""

from __future__ import annotations

from typing import Any

from bastion.core import Classifier, ConfigError, unknown_name
from bastion.defenses.detect.base import Detector
from bastion.defenses.detect.binary import BinaryConfig, BinaryDetector
from bastion.defenses.detect.l1 import L1Config, L1Detector
from bastion.defenses.detect.squeeze import FeatureSqueezing, SqueezeConfig
from bastion.params import build

DETECTORS: dict[str, tuple[type[Detector], type]] = {
    "feature-squeezing": (FeatureSqueezing, SqueezeConfig),
    "binary": (BinaryDetector, BinaryConfig),
    "l1": (L1Detector, L1Config),
}
ALIASES = {"squeeze": "feature-squeezing", "fs": "feature-squeezing", "binary-input": "binary"}


def build_detector(name: str, classifier: Classifier, **params: Any) -> Detector:
    """A detector by name ('feature-squeezing', 'binary', 'l1') for `classifier`, with its
    config fields as keyword parameters. Unknown names or parameters raise ConfigError
    listing the valid ones; out-of-range values raise ConfigError before any work."""
    key = str(name).lower()
    key = ALIASES.get(key, key)
    if key not in DETECTORS:
        raise unknown_name("detector", str(name), list(DETECTORS))
    cls, cfg_cls = DETECTORS[key]
    cfg = build(cfg_cls, params, f"detector {key!r}")
    if not isinstance(classifier, Classifier):
        raise ConfigError(f"detector {key!r} needs a bastion Classifier, got "
                          f"{type(classifier).__name__}")
    return cls(classifier, cfg)  # type: ignore[call-arg]
