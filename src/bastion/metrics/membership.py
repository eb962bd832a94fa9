"""Membership-inference metrics (pure functions, no I/O).

Scores follow one convention: higher means "more likely a member"; labels are True for
members. Following Carlini et al. (2022), report the true-positive rate at low false-
positive rates (0.1%, 1%) and a log-log ROC curve, not only AUC and accuracy: an attack
that is confident about a few examples is a real privacy risk even at AUC 0.5.

- `roc_curve`: FPR/TPR at every distinct threshold (ties are grouped, so the curve never
  credits an arbitrary order among equal scores).
- `tpr_at_fpr`: the highest TPR among ROC points whose FPR <= the target.
- `advantage`: max over thresholds of TPR - FPR (Yeom et al. 2018's membership advantage);
  `balanced_accuracy` = (1 + advantage) / 2.
- `decision_metrics`: TPR, FPR, precision, recall, accuracy and advantage (with a 95%
  normal-approximation interval) for hard member/non-member decisions.
- `sliced`: any of the above per slice (class, correctly / incorrectly classified).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from bastion.core import InputError

Array = np.ndarray | torch.Tensor | Sequence[float]
DEFAULT_FPRS = (0.001, 0.01)


def _np(a: Array, dtype: Any = np.float64) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=dtype).reshape(-1)


def _trapz(y: np.ndarray, x: np.ndarray) -> float:
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2))


def _check(scores: Array, labels: Array) -> tuple[np.ndarray, np.ndarray]:
    s, lab = _np(scores), _np(labels, dtype=bool)
    if s.shape != lab.shape:
        raise InputError(f"scores and labels must have the same length, got {s.size} and {lab.size}")
    if np.isnan(s).any():
        raise InputError("membership scores contain NaN")
    if lab.all() or not lab.any():
        raise InputError("labels need both members (True) and non-members (False) for ROC metrics")
    return s, lab


def roc_curve(scores: Array, labels: Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds): predicting member when score >= threshold. Starts at (0, 0)
    with threshold +inf and ends at (1, 1)."""
    s, lab = _check(scores, labels)
    order = np.argsort(-s, kind="mergesort")
    s, lab = s[order], lab[order]
    last = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]  # last index of each tie group
    tps = np.cumsum(lab)[last]
    fps = (last + 1) - tps
    tpr = np.r_[0.0, tps / lab.sum()]
    fpr = np.r_[0.0, fps / (~lab).sum()]
    return fpr, tpr, np.r_[np.inf, s[last]]


def auc(scores: Array, labels: Array) -> float:
    """Area under the ROC curve (0.5 = chance)."""
    fpr, tpr, _ = roc_curve(scores, labels)
    return float(_trapz(tpr, fpr))


def tpr_at_fpr(scores: Array, labels: Array, fpr: float = 0.001) -> float:
    """Highest TPR among thresholds whose FPR does not exceed `fpr`."""
    if not 0 <= fpr <= 1:
        raise InputError(f"fpr must lie in [0, 1], got {fpr}")
    f, t, _ = roc_curve(scores, labels)
    return float(t[f <= fpr + 1e-12].max())


def advantage(scores: Array, labels: Array) -> float:
    """Membership advantage max_t TPR(t) - FPR(t) (Yeom et al.): 0 = chance, 1 = perfect."""
    f, t, _ = roc_curve(scores, labels)
    return float((t - f).max())


def balanced_accuracy(scores: Array, labels: Array) -> float:
    """Best accuracy over thresholds on a balanced member/non-member set."""
    return 0.5 * (1.0 + advantage(scores, labels))


def decision_metrics(decisions: Array, labels: Array, z: float = 1.96) -> dict[str, float]:
    """Metrics of hard decisions (True = 'member'): TPR (= recall), FPR, precision,
    accuracy, balanced accuracy and the advantage TPR - FPR with a normal-approximation
    confidence interval (z = 1.96 for 95%)."""
    d, lab = _np(decisions, dtype=bool), _np(labels, dtype=bool)
    if d.shape != lab.shape:
        raise InputError(f"decisions and labels must have the same length, got {d.size} and {lab.size}")
    p, n = int(lab.sum()), int((~lab).sum())
    if p == 0 or n == 0:
        raise InputError("labels need both members and non-members")
    tp, fp = int((d & lab).sum()), int((d & ~lab).sum())
    tpr, fpr = tp / p, fp / n
    adv = tpr - fpr
    half = z * math.sqrt(tpr * (1 - tpr) / p + fpr * (1 - fpr) / n)
    return {"tpr": tpr, "fpr": fpr, "recall": tpr, "precision": tp / (tp + fp) if tp + fp else float("nan"),
            "accuracy": float((d == lab).mean()), "balanced_accuracy": 0.5 * (1 + adv),
            "advantage": adv, "advantage_ci_low": adv - half, "advantage_ci_high": adv + half,
            "n_members": p, "n_nonmembers": n}


def summary(scores: Array, labels: Array, fprs: Sequence[float] = DEFAULT_FPRS) -> dict[str, float]:
    """AUC, advantage, balanced accuracy, TPR at each FPR in `fprs` and counts."""
    s, lab = _check(scores, labels)
    f, t, _ = roc_curve(s, lab)
    out: dict[str, float] = {"auc": float(_trapz(t, f)), "advantage": float((t - f).max())}
    out["balanced_accuracy"] = 0.5 * (1 + out["advantage"])
    for a in fprs:
        out[f"tpr@{fpr_label(a)}"] = float(t[f <= a + 1e-12].max())
    out["n_members"], out["n_nonmembers"] = int(lab.sum()), int((~lab).sum())
    return out


def fpr_label(a: float) -> str:
    """0.001 -> '0.1%fpr'."""
    return f"{100 * a:g}%fpr"


def class_slices(labels: Array, correct: Array | None = None, num_classes: int | None = None) -> dict[str, np.ndarray]:
    """Boolean masks per class ('class 3') and, when `correct` is given, per correctly /
    incorrectly classified example."""
    y = _np(labels, dtype=np.int64)
    k = int(num_classes if num_classes is not None else y.max() + 1)
    out = {f"class {c}": y == c for c in range(k)}
    if correct is not None:
        c = _np(correct, dtype=bool)
        out["correct"], out["incorrect"] = c, ~c
    return out


def sliced(scores: Array, labels: Array, slices: Mapping[str, Array],
           metric: Callable[[Array, Array], Any] = summary) -> dict[str, Any]:
    """`metric(scores[mask], labels[mask])` per slice; slices without both members and
    non-members give None."""
    s, lab = _np(scores), _np(labels, dtype=bool)
    out: dict[str, Any] = {}
    for name, mask in slices.items():
        m = _np(mask, dtype=bool)
        if m.shape != s.shape:
            raise InputError(f"slice {name!r} has {m.size} entries, expected {s.size}")
        sub = lab[m]
        out[name] = metric(s[m], sub) if sub.any() and not sub.all() else None
    return out
