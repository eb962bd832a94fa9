"""Evasion detectors: flag adversarial inputs instead of (or besides) classifying them.

- `FeatureSqueezing` (Xu, Evans & Qi 2018): max L1 distance between the softmax on an
  input and on squeezed copies (bit depth, 2 x 2 median, non-local means);
- `L1Detector` (the XEnsemble input layer, Wei et al. 2020): the same distance over
  denoisers, flagged above a fixed attack-independent bound (0.5 or 1.5);
- `BinaryDetector` (Metzen et al. 2017): a network trained on clean versus adversarial
  inputs of a given attack.

Thresholds are calibrated on benign inputs at a false-positive rate (5% by default).
`Detected(model, detector)` is a Classifier with `detect` / `predict_with_reject`;
`evaluate_detection` scores detection rate, false-positive rate and robust accuracy with
reject; `DetectorAwarePGD` (Carlini & Wagner 2017) attacks classifier and detector together.

    from bastion.defenses.detect import Detected, build_detector, evaluate_detection
    det = build_detector("feature-squeezing", model)
    det.calibrate(x_benign)
    screened = Detected(model, det)
    res = PGD(eps=0.3)(screened, x, y)
    print(evaluate_detection(screened, x, res.x_adv, y, res.success).summary())
"""

from bastion.defenses.detect.adaptive import DetectorAwarePGD
from bastion.defenses.detect.base import DEFAULT_FPR, Detector, check_fpr, quantile_threshold
from bastion.defenses.detect.binary import BinaryConfig, BinaryDetector
from bastion.defenses.detect.distance import PredictionDistance
from bastion.defenses.detect.l1 import L1Config, L1Detector
from bastion.defenses.detect.metrics import (
    DetectionMetrics,
    Rate,
    detection_metrics,
    evaluate_detection,
    wilson_interval,
)
from bastion.defenses.detect.registry import DETECTORS, build_detector
from bastion.defenses.detect.squeeze import FeatureSqueezing, Median2x2, SqueezeConfig
from bastion.defenses.detect.wrapper import Detected

__all__ = ["DEFAULT_FPR", "DETECTORS", "BinaryConfig", "BinaryDetector", "Detected",
           "DetectionMetrics", "Detector", "DetectorAwarePGD", "FeatureSqueezing", "L1Config",
           "L1Detector", "Median2x2", "PredictionDistance", "Rate", "SqueezeConfig",
           "build_detector", "check_fpr", "detection_metrics", "evaluate_detection",
           "quantile_threshold", "wilson_interval"]
