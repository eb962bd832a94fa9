"""Report figures shared by the audit sections (matplotlib, Agg backend; each function
returns a figure for `bastion.audit.sections.fig_to_png`).

- `roc_figure`: membership-inference ROC on log-log axes from FPR 1e-4, the chance line,
  the operating points at 0.1% and 1% FPR marked, and the FPR range the number of
  non-members cannot resolve shaded (Carlini et al. 2022 argue for exactly this view).
- `robustness_figure`: robust accuracy versus budget, one panel per norm (budgets of
  different norms are not on one scale), one curve per attack, each with its 95% Wilson
  band over the evaluated examples and the clean accuracy as the budget-0 point.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from bastion.core import ConfigError

OPERATING_FPRS = (0.001, 0.01)
FPR_FLOOR = 1e-4
Z95 = 1.959963984540054


def _plt() -> Any:
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    return plt


def wilson_band(p: np.ndarray, n: int, z: float = Z95) -> tuple[np.ndarray, np.ndarray]:
    """Element-wise Wilson score interval of proportions `p` over `n` examples (Wilson 1927)."""
    p = np.asarray(p, dtype=float)
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return np.clip(centre - half, 0, 1), np.clip(centre + half, 0, 1)


def tpr_at(fpr: np.ndarray, tpr: np.ndarray, at: float) -> float:
    """Largest TPR whose FPR does not exceed `at` (the conservative operating point)."""
    ok = fpr <= at + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


def roc_figure(curves: Mapping[str, tuple[Any, Any]], title: str = "Membership inference ROC",
               fpr_floor: float = FPR_FLOOR, operating_fprs: Sequence[float] = OPERATING_FPRS) -> Any:
    """Log-log ROC of each attack `name -> (scores, labels)` (labels: 1 = member).

    Axes run from `fpr_floor` to 1; a TPR of 0 is drawn at the floor. Each curve's
    operating points at `operating_fprs` are marked and listed in the legend; FPRs below
    1 / (non-members) are shaded: with that few non-members no threshold reaches them.
    """
    from bastion.metrics.membership import roc_curve

    if not curves:
        raise ConfigError("roc_figure needs at least one curve")
    if not 0 < fpr_floor < 1:
        raise ConfigError(f"fpr_floor must be in (0, 1), got {fpr_floor}")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    markers = ("o", "s", "^", "D", "v", "P")
    resolvable = fpr_floor
    for i, (name, (scores, labels)) in enumerate(curves.items()):
        f, t, _ = roc_curve(scores, labels)
        lab = np.asarray(labels).astype(bool)
        resolvable = max(resolvable, 1.0 / max(int((~lab).sum()), 1))
        ops = [(a, tpr_at(f, t, a)) for a in operating_fprs]
        text = ", ".join(f"TPR@{100 * a:g}% {100 * v:.2g}%" for a, v in ops)
        line, = ax.plot(np.clip(f, fpr_floor, 1), np.clip(t, fpr_floor, 1), lw=1.5, label=f"{name}: {text}")
        ax.plot([a for a, _ in ops], [max(v, fpr_floor) for _, v in ops], linestyle="none",
                marker=markers[i % len(markers)], color=line.get_color(), ms=6, mec="black", mew=0.6)
    grid = np.logspace(np.log10(fpr_floor), 0, 50)
    ax.plot(grid, grid, "k--", lw=0.8, label="chance (TPR = FPR)")
    for a in operating_fprs:
        ax.axvline(a, color="grey", lw=0.6, ls=":")
    if resolvable > fpr_floor:
        ax.axvspan(fpr_floor, resolvable, color="grey", alpha=0.12, lw=0,
                   label=f"below 1/{round(1 / resolvable)} non-members: not measurable")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(fpr_floor, 1)
    ax.set_ylim(fpr_floor, 1)
    ax.set_xlabel("false-positive rate (non-members flagged)")
    ax.set_ylabel("true-positive rate (members found)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.25, which="both", lw=0.4)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def robustness_figure(curves: Mapping[str, Sequence[tuple[float, float]]], n: int, clean: float | None = None,
                      norms: Mapping[str, str] | None = None, title: str = "Robust accuracy versus budget") -> Any:
    """Robust accuracy against budget: `curves` maps an attack label to (budget, accuracy)
    points measured on `n` examples; `norms` maps a label to its norm ("linf", "l2", ...;
    default "linf"). One panel per norm, a shaded 95% Wilson band per curve; `clean`
    (the accuracy without attack) is drawn as the point at budget 0."""
    if not curves:
        raise ConfigError("robustness_figure needs at least one curve")
    if n < 1:
        raise ConfigError(f"robustness_figure: n must be >= 1, got {n}")
    norms = dict(norms or {})
    by_norm: dict[str, list[str]] = {}
    for label in curves:
        by_norm.setdefault(norms.get(label, "linf"), []).append(label)
    plt = _plt()
    order = sorted(by_norm, key=lambda k: ("linf", "l2", "l1", "l0").index(k) if k in ("linf", "l2", "l1", "l0") else 9)
    fig, axes = plt.subplots(1, len(order), figsize=(5.2 * len(order), 4), squeeze=False)
    pretty = {"linf": "Linf", "l2": "L2", "l1": "L1", "l0": "L0"}
    for ax, norm in zip(axes[0], order):
        for label in by_norm[norm]:
            pts = sorted((float(e), float(a)) for e, a in curves[label])
            xs = np.array(([0.0] if clean is not None else []) + [e for e, _ in pts])
            ys = np.array(([clean] if clean is not None else []) + [a for _, a in pts])
            lo, hi = wilson_band(ys, n)
            line, = ax.plot(xs, ys, marker="o", ms=4, lw=1.5, label=label)
            ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15, lw=0)
        ax.set_xlabel(f"{pretty.get(norm, norm)} budget (eps, inputs in [0, 1])")
        ax.set_ylabel("robust accuracy")
        ax.set_ylim(0, 1.02)
        ax.set_xlim(left=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title(f"{title}, {pretty.get(norm, norm)}" if len(order) > 1 else title, fontsize=10)
    fig.text(0.99, 0.01, f"bands: 95% Wilson intervals, n = {n}", ha="right", va="bottom", fontsize=7,
             color="grey")
    fig.tight_layout()
    return fig


__all__ = ["robustness_figure", "roc_figure", "tpr_at", "wilson_band"]
