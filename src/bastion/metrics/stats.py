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


# --------------------------------------------------------------------------- intervals

def _check_counts(k: int, n: int) -> None:
    if isinstance(k, bool) or isinstance(n, bool) or n < 1 or not 0 <= k <= n:
        raise ConfigError(f"a proportion needs 0 <= successes <= trials and trials >= 1, got {k} of {n}")


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson (1927) score interval of a binomial proportion k / n (default 95%).

    Unlike the normal approximation it stays inside [0, 1] and is sensible at k = 0 or k = n.
    """
    _check_counts(k, n)
    p = k / n
    den = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, centre - half), min(1.0, centre + half)


def clopper_pearson(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Exact (Clopper and Pearson 1934) interval of a binomial proportion k / n: the
    alpha/2 and 1 - alpha/2 quantiles of Beta(k, n - k + 1) and Beta(k + 1, n - k).
    Conservative: its coverage is at least 1 - alpha."""
    from scipy.stats import beta

    _check_counts(k, n)
    if not 0 < alpha < 1:
        raise ConfigError(f"alpha must lie in (0, 1), got {alpha}")
    lo = 0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return lo, hi


def mean_interval(values: torch.Tensor | list[float], z: float = 1.96,
                  bounds: tuple[float, float] | None = None) -> tuple[float, float] | None:
    """Normal-approximation interval of a mean: m ± z s / sqrt(n) with the sample standard
    deviation s, clipped to `bounds`. None for fewer than two finite values."""
    v = torch.as_tensor(values, dtype=torch.float64).flatten()
    v = v[torch.isfinite(v)]
    if v.numel() < 2:
        return None
    m, half = float(v.mean()), z * float(v.std(unbiased=True)) / math.sqrt(v.numel())
    lo, hi = m - half, m + half
    if bounds is not None:
        lo, hi = max(bounds[0], lo), min(bounds[1], hi)
    return lo, hi


def auc_interval(auc: float, n_pos: int, n_neg: int, z: float = 1.96) -> tuple[float, float]:
    """Hanley and McNeil (1982) interval of a ROC AUC from its standard error
    SE^2 = (A(1-A) + (n1-1)(Q1-A^2) + (n0-1)(Q2-A^2)) / (n1 n0), Q1 = A/(2-A),
    Q2 = 2A^2/(1+A); clipped to [0, 1]."""
    if n_pos < 1 or n_neg < 1:
        raise ConfigError(f"an AUC interval needs positives and negatives, got {n_pos} and {n_neg}")
    if not 0.0 <= auc <= 1.0:
        raise ConfigError(f"AUC must lie in [0, 1], got {auc}")
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc * auc) + (n_neg - 1) * (q2 - auc * auc)) / (n_pos * n_neg)
    half = z * math.sqrt(max(var, 0.0))
    return max(0.0, auc - half), min(1.0, auc + half)
