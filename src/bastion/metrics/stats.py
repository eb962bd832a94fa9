"""Statistics for comparing attacks and defenses (class-project protocol).

Difference of two proportions (e.g. the success rates of two attacks, or adversarial
accuracies): F = p1 - p2, V = p1 (1 - p1) / n1 + p2 (1 - p2) / n2, 95% CI F ± 1.96 sqrt(V);
the two differ when the interval excludes 0.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

from bastion.core import ConfigError


@dataclass(frozen=True)
class ProportionDiff:
    """Result of `diff_proportions`: the difference, its variance, the interval and the
    verdict."""

    p1: float
    p2: float
    n1: int
    n2: int
    diff: float
    variance: float
    low: float
    high: float
    z: float

    @property
    def differ(self) -> bool:
        """True when the confidence interval excludes 0."""
        return self.low > 0 or self.high < 0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "differ": self.differ}


def diff_proportions(p1: float, n1: int, p2: float, n2: int | None = None,
                     z: float = 1.96) -> ProportionDiff:
    """Normal-approximation CI of p1 - p2 (default 95%, z = 1.96). n2 defaults to n1."""
    n2 = n1 if n2 is None else n2
    for name, p in (("p1", p1), ("p2", p2)):
        if not 0.0 <= p <= 1.0 or p != p:
            raise ConfigError(f"{name} must be a proportion in [0, 1], got {p}")
    if n1 < 1 or n2 < 1:
        raise ConfigError(f"sample sizes must be >= 1, got n1={n1}, n2={n2}")
    if z <= 0:
        raise ConfigError(f"z must be positive, got {z}")
    f = p1 - p2
    v = p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2
    half = z * math.sqrt(v)
    return ProportionDiff(p1=p1, p2=p2, n1=int(n1), n2=int(n2), diff=f, variance=v,
                          low=f - half, high=f + half, z=z)


def compare_success(a: torch.Tensor, b: torch.Tensor, z: float = 1.96) -> ProportionDiff:
    """CI of the difference between two per-example boolean outcomes (e.g. success)."""
    a, b = a.detach().cpu().float(), b.detach().cpu().float()
    if a.numel() == 0 or b.numel() == 0:
        raise ConfigError("compare_success needs non-empty outcome vectors")
    return diff_proportions(float(a.mean()), a.numel(), float(b.mean()), b.numel(), z)
