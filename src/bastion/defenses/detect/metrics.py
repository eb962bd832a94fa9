"""Detection metrics with 95% Wilson score intervals (Wilson 1927).

Given clean inputs, their adversarial versions, the labels and the attack's success mask:

- detection rate: the share of successful adversarial inputs that are flagged (true
  positive rate on the inputs that matter);
- false-positive rate: the share of clean inputs that are flagged;
- robust accuracy with reject: the share of adversarial inputs that are defended, i.e.
  correctly classified OR flagged (a rejected input is not a wrong answer), next to the
  plain robust accuracy (correctly classified) for comparison.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

from bastion.core import ConfigError, InputError

Z95 = 1.959963984540054


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion k / n (default 95%); (nan, nan) when
    n = 0."""
    if n < 0 or k < 0 or k > n:
        raise ConfigError(f"wilson_interval needs 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Rate:
    """A proportion k / n with its 95% Wilson interval."""

    k: int
    n: int
    value: float
    low: float
    high: float

    @classmethod
    def of(cls, mask: torch.Tensor) -> Rate:
        m = mask.detach().bool().flatten().cpu()
        k, n = int(m.sum()), int(m.numel())
        lo, hi = wilson_interval(k, n)
        return cls(k=k, n=n, value=k / n if n else float("nan"), low=lo, high=hi)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DetectionMetrics:
    """Detection rate, false-positive rate and robust accuracy (plain and with reject)."""

    detection_rate: Rate
    false_positive_rate: Rate
    robust_accuracy_with_reject: Rate
    robust_accuracy: Rate
    attack_success_rate: Rate

    def to_dict(self) -> dict[str, Any]:
        return {k: v.to_dict() for k, v in self.__dict__.items()}

    def summary(self) -> dict[str, float]:
        """The point estimates only, for tables."""
        return {k: v.value for k, v in self.__dict__.items()}


def _vec(t: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise InputError(f"{name} must be a tensor")
    return t.detach().flatten().cpu()


def detection_metrics(flagged_clean: torch.Tensor, flagged_adv: torch.Tensor,
                      pred_adv: torch.Tensor, y: torch.Tensor,
                      success: torch.Tensor) -> DetectionMetrics:
    """Metrics from per-input masks: flags on clean and adversarial inputs, predictions on
    the adversarial inputs, true labels and the attack's success mask (all length N)."""
    fc, fa = _vec(flagged_clean, "flagged_clean").bool(), _vec(flagged_adv, "flagged_adv").bool()
    pa, yy, ok = _vec(pred_adv, "pred_adv"), _vec(y, "y"), _vec(success, "success").bool()
    n = fa.numel()
    if not (pa.numel() == yy.numel() == ok.numel() == n):
        raise InputError(f"flagged_adv, pred_adv, y and success must have the same length, got "
                         f"{n}, {pa.numel()}, {yy.numel()}, {ok.numel()}")
    correct = pa == yy
    return DetectionMetrics(detection_rate=Rate.of(fa[ok]), false_positive_rate=Rate.of(fc),
                            robust_accuracy_with_reject=Rate.of(correct | fa),
                            robust_accuracy=Rate.of(correct), attack_success_rate=Rate.of(ok))


def evaluate_detection(detected: Any, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor,
                       success: torch.Tensor) -> DetectionMetrics:
    """Flag clean and adversarial inputs with `detected` (a `Detected` model) and score
    them: see `detection_metrics`."""
    from bastion.defenses.detect.wrapper import Detected

    if not isinstance(detected, Detected):
        raise ConfigError(f"evaluate_detection needs a Detected model, got {type(detected).__name__}")
    if x.shape != x_adv.shape:
        raise InputError(f"x and x_adv differ in shape: {tuple(x.shape)} vs {tuple(x_adv.shape)}")
    pred_adv, flagged_adv = detected.predict_with_reject(x_adv)
    return detection_metrics(detected.detect(x), flagged_adv, pred_adv, y, success)
