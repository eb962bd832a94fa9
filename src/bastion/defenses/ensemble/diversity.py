"""Diversity of classifier teams, measured on a chosen set of (benign or adversarial)
examples.

Pairwise measures take the predicted labels of two models and, for the oracle-based ones,
the true labels (Kuncheva & Whitaker 2003):

- Cohen's kappa (Cohen 1960) on the two label vectors: agreement corrected for chance;
  the degree-of-disagreement measure XEnsemble ranks teams by (Wei et al. 2020; lower
  kappa = more diverse). Agrees with `sklearn.metrics.cohen_kappa_score`.
- Yule's Q statistic and the correlation coefficient rho of the two correct/incorrect
  (oracle) vectors; disagreement = the share of examples exactly one of the two gets right.

Team measures: the mean pairwise value of any of the above, and the generalized diversity
of Partridge & Krzanowski (1997) from the distribution of the number of members that fail.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import torch

from bastion.core import ConfigError, require

PAIRWISE = ("kappa", "q", "correlation", "disagreement")


def _labels(a: torch.Tensor | Sequence[int], name: str) -> torch.Tensor:
    t = torch.as_tensor(a).detach().cpu().long().flatten()
    require(t.numel() > 0, f"{name}: needs at least one example")
    return t


def cohen_kappa(a: torch.Tensor | Sequence[int], b: torch.Tensor | Sequence[int],
                num_classes: int | None = None) -> float:
    """Cohen's kappa between two label vectors: (p_o - p_e) / (1 - p_e), p_o the observed
    agreement, p_e the agreement expected from the two marginal label distributions.
    1 when both vectors are identical and not constant; 0 (not NaN) when p_e = 1."""
    x, y = _labels(a, "kappa"), _labels(b, "kappa")
    require(x.numel() == y.numel(), f"kappa: label vectors differ in length ({x.numel()} vs {y.numel()})")
    k = int(max(int(x.max()), int(y.max())) + 1) if num_classes is None else int(num_classes)
    n = x.numel()
    conf = torch.bincount(x * k + y, minlength=k * k).view(k, k).double() / n
    po = float(conf.diagonal().sum())
    pe = float((conf.sum(1) * conf.sum(0)).sum())
    if abs(1.0 - pe) < 1e-12:
        return 1.0 if po >= 1.0 - 1e-12 else 0.0
    return (po - pe) / (1.0 - pe)


def _oracle_table(ca: torch.Tensor, cb: torch.Tensor) -> tuple[float, float, float, float]:
    """(n11, n10, n01, n00): both right, only a right, only b right, both wrong."""
    ca, cb = ca.bool(), cb.bool()
    return (float((ca & cb).sum()), float((ca & ~cb).sum()), float((~ca & cb).sum()),
            float((~ca & ~cb).sum()))


def q_statistic(correct_a: torch.Tensor, correct_b: torch.Tensor) -> float:
    """Yule's Q = (n11 n00 - n01 n10) / (n11 n00 + n01 n10) of two correctness vectors
    (1: the members always fail together or succeed together; negative: they err apart).
    0 when the denominator is 0."""
    n11, n10, n01, n00 = _oracle_table(correct_a, correct_b)
    den = n11 * n00 + n01 * n10
    return 0.0 if den == 0 else (n11 * n00 - n01 * n10) / den


def correlation(correct_a: torch.Tensor, correct_b: torch.Tensor) -> float:
    """The correlation coefficient rho of two correctness vectors; 0 when either is
    constant."""
    n11, n10, n01, n00 = _oracle_table(correct_a, correct_b)
    den = math.sqrt((n11 + n10) * (n01 + n00) * (n11 + n01) * (n10 + n00))
    return 0.0 if den == 0 else (n11 * n00 - n01 * n10) / den


def disagreement(correct_a: torch.Tensor, correct_b: torch.Tensor) -> float:
    """The share of examples exactly one of the two members classifies correctly."""
    n11, n10, n01, n00 = _oracle_table(correct_a, correct_b)
    n = n11 + n10 + n01 + n00
    return (n10 + n01) / n if n else 0.0


def generalized_diversity(correct: torch.Tensor) -> float:
    """Generalized diversity of Partridge & Krzanowski (1997) for a team whose correctness
    matrix is `correct` [members, examples]: 1 - p(2) / p(1), with p(1) the probability that
    one randomly drawn member fails and p(2) that two drawn without replacement both fail.
    1 = a failure of one member is never shared; 0 = all fail together. 0 when no member
    ever fails."""
    c = torch.as_tensor(correct).bool()
    require(c.dim() == 2 and c.shape[0] >= 2, "generalized diversity needs a [members >= 2, examples] matrix")
    m = c.shape[0]
    fails = (~c).sum(0).double()  # failing members per example
    p1 = float((fails / m).mean())
    p2 = float((fails * (fails - 1) / (m * (m - 1))).mean())
    return 0.0 if p1 == 0 else 1.0 - p2 / p1


def pairwise_matrix(preds: torch.Tensor, y: torch.Tensor | None = None, measure: str = "kappa",
                    num_classes: int | None = None) -> torch.Tensor:
    """The symmetric [M, M] matrix of a pairwise measure over the members' predicted labels
    `preds` [M, N] (kappa matrices as in Wei et al. 2020, Tables 3.6-3.8). The oracle
    measures (q, correlation, disagreement) need the true labels `y`. Diagonal: the
    measure of a member with itself (1 for kappa, Q and rho; 0 for disagreement)."""
    fn = pair_function(measure, y is not None)
    p = torch.as_tensor(preds).detach().cpu().long()
    require(p.dim() == 2 and p.shape[0] >= 1, f"{measure}: predictions must be [members, examples]")
    m = p.shape[0]
    out = torch.zeros(m, m, dtype=torch.float64)
    yy = None if y is None else _labels(y, measure)
    if yy is not None:
        require(yy.numel() == p.shape[1], f"{measure}: {p.shape[1]} predictions per member but {yy.numel()} labels")
    for i in range(m):
        for j in range(i, m):
            v = (cohen_kappa(p[i], p[j], num_classes) if measure == "kappa"
                 else fn(p[i] == yy, p[j] == yy))  # type: ignore[operator]
            out[i, j] = out[j, i] = v
    return out


def pair_function(measure: str, has_labels: bool) -> Callable[..., float]:
    """The function of a pairwise measure name; oracle measures need labels."""
    table: dict[str, Callable[..., float]] = {"kappa": cohen_kappa, "q": q_statistic,
                                              "correlation": correlation, "disagreement": disagreement}
    if measure not in table:
        raise ConfigError(f"unknown diversity measure {measure!r}; valid: {', '.join(PAIRWISE)}")
    if measure != "kappa" and not has_labels:
        raise ConfigError(f"the {measure} measure compares correctness and needs the true labels y")
    return table[measure]


def team_score(matrix: torch.Tensor, team: Sequence[int]) -> float:
    """Mean of the pairwise values over all pairs of `team` (>= 2 members)."""
    require(len(team) >= 2, f"a team needs at least 2 members, got {list(team)}")
    vals = [float(matrix[i, j]) for i, j in itertools.combinations(team, 2)]
    return sum(vals) / len(vals)


def team_diversity(preds: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, float]:
    """Every measure for one team, from its members' predictions [n, N] (and labels):
    mean pairwise kappa, Q, rho, disagreement, and the generalized diversity."""
    p = torch.as_tensor(preds).long()
    team = list(range(p.shape[0]))
    out = {"kappa": team_score(pairwise_matrix(p, None, "kappa"), team)}
    if y is not None:
        for m in ("q", "correlation", "disagreement"):
            out[m] = team_score(pairwise_matrix(p, y, m), team)
        out["generalized_diversity"] = generalized_diversity(p == torch.as_tensor(y).long().view(1, -1))
    return out
