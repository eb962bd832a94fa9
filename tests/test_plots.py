"""Shared report figures: log-log ROC with operating points, robust accuracy versus budget
with confidence bands, one panel per norm."""

from __future__ import annotations

import numpy as np
import pytest

from bastion.audit.plots import robustness_figure, roc_figure, tpr_at, wilson_band
from bastion.audit.sections import fig_to_png
from bastion.core import ConfigError


def test_roc_figure_is_log_log_with_operating_points() -> None:
    rng = np.random.default_rng(0)
    labels = np.r_[np.ones(300), np.zeros(300)]
    fig = roc_figure({"strong": (rng.normal(labels * 2, 1), labels), "weak": (rng.normal(0, 1, 600), labels)})
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert ax.get_xlim() == pytest.approx((1e-4, 1)) and ax.get_ylim() == pytest.approx((1e-4, 1))
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(t.startswith("strong: TPR@0.1%") and "TPR@1%" in t for t in texts)
    assert any("chance" in t for t in texts) and any("1/300 non-members" in t for t in texts)
    # operating-point markers at 0.1% and 1% FPR, one set per curve
    marks = [ln for ln in ax.lines if ln.get_linestyle() == "None"]
    assert len(marks) == 2 and all(list(m.get_xdata()) == [0.001, 0.01] for m in marks)
    strong, weak = (m.get_ydata() for m in marks)
    assert strong[1] > weak[1]                           # the separable scores find more members
    assert fig_to_png(fig)[:4] == b"\x89PNG"


def test_tpr_at_is_conservative() -> None:
    fpr = np.array([0.0, 0.0005, 0.002, 0.01, 1.0])
    tpr = np.array([0.0, 0.1, 0.3, 0.5, 1.0])
    assert tpr_at(fpr, tpr, 0.001) == 0.1 and tpr_at(fpr, tpr, 0.01) == 0.5


def test_robustness_figure_panels_per_norm_with_bands() -> None:
    curves = {"fgsm": [(0.1, 0.6), (0.05, 0.8)], "pgd": [(0.05, 0.7), (0.1, 0.4)], "cw-l2": [(0.5, 0.7), (1.0, 0.3)]}
    fig = robustness_figure(curves, n=100, clean=0.95, norms={"cw-l2": "l2"})
    linf, l2 = fig.axes[:2]
    assert "Linf" in linf.get_xlabel() and "L2" in l2.get_xlabel()
    assert [ln.get_label() for ln in linf.lines] == ["fgsm", "pgd"] and [ln.get_label() for ln in l2.lines] == ["cw-l2"]
    fgsm = linf.lines[0]
    assert list(fgsm.get_xdata()) == [0.0, 0.05, 0.1] and list(fgsm.get_ydata()) == [0.95, 0.8, 0.6]
    assert len(linf.collections) == 2                    # one confidence band per curve
    lo, hi = wilson_band(np.array([0.6]), 100)
    assert lo[0] < 0.6 < hi[0] and hi[0] - lo[0] == pytest.approx(0.19, abs=0.01)
    with pytest.raises(ConfigError):
        robustness_figure({}, n=10)
    with pytest.raises(ConfigError):
        robustness_figure(curves, n=0)
