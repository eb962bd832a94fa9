"""A synthetic but complete audit for report tests: results.json content and section
outputs with real PNG figures (drawn by bastion.audit.plots), a scorecard and notes."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from bastion.audit.plots import robustness_figure, roc_figure
from bastion.audit.sections import ReportFigure, ReportTable, ScoreRow, SectionOutput, fig_to_png

EVASION_COLUMNS = ["attack", "eps", "robust_accuracy", "success_rate", "mean_l2", "mean_linf", "mean_l0",
                   "queries_mean", "time_per_example_s", "mean_conf", "ssim", "psnr"]
LEAKAGE_COLUMNS = ["attack", "init", "defense", "n", "asr", "iterations_to_success", "mse", "nmse", "psnr",
                   "ssim", "label_accuracy", "iterations", "stop_reason", "seconds_per_attack"]


def scorecard() -> list[ScoreRow]:
    return [
        ScoreRow("evasion", "robust accuracy, Linf eps 0.1 (PGD-40)", 0.31, "fail",
                 "Most inputs can be flipped by a barely visible change; adversarially train.",
                 ci=(0.25, 0.38), threshold=0.7, section="evasion"),
        ScoreRow("evasion", "robust accuracy, L2 eps 1.0 (C&W)", 0.62, "warn",
                 "Moderate L2 robustness.", ci=(0.55, 0.68), threshold=0.7, section="evasion"),
        ScoreRow("membership", "TPR at 0.1% FPR (LiRA)", 0.004, "pass",
                 "Few training members are identifiable with confidence.", ci=(0.001, 0.012),
                 threshold=0.01, higher_is_better=False, section="membership"),
        ScoreRow("leakage", "reconstruction SSIM (DLG, batch 1)", 0.91, "fail",
                 "Shared gradients reveal the inputs almost exactly.", threshold=0.3,
                 higher_is_better=False, section="leakage"),
        ScoreRow("dp", "epsilon at delta 1e-5", None, "not measured",
                 "Trained without DP: no guarantee.", unit="eps", section="dp",
                 note="no privacy record in the checkpoint"),
    ]


CURVES = {"fgsm": [(0.05, 0.8), (0.1, 0.55), (0.3, 0.1)], "pgd": [(0.05, 0.7), (0.1, 0.31), (0.3, 0.0)],
          "cw-l2": [(0.5, 0.8), (1.0, 0.62)]}


@functools.lru_cache(maxsize=1)
def figures() -> tuple[bytes, bytes]:
    """(robust accuracy versus budget, membership ROC) as PNG, drawn once per session."""
    rng = np.random.default_rng(0)
    labels = np.r_[np.ones(500), np.zeros(500)]
    roc = roc_figure({"lira": (rng.normal(labels * 0.8, 1), labels), "yeom": (rng.normal(labels * 0.1, 1), labels)})
    rob = robustness_figure(CURVES, n=200, clean=0.97, norms={"cw-l2": "l2"})
    return fig_to_png(rob), fig_to_png(roc)


def synthetic_audit(with_scorecard: bool = True, in_results: bool = True) -> tuple[dict[str, Any], list[SectionOutput]]:
    rob, roc = figures()
    curves = {k: list(v) for k, v in CURVES.items()}
    rows = scorecard() if with_scorecard else []
    ev = SectionOutput(
        "evasion", "evasion", summary={"clean_accuracy": 0.97, "n": 200, "curves": curves},
        tables=[ReportTable("Evasion attacks", EVASION_COLUMNS, [
            ["fgsm", 0.1, 0.55, 0.43, 2.3, 0.1, 610.0, 1.0, 0.0004, 0.71, 0.52, 22.1],
            ["pgd", 0.1, 0.31, 0.68, 2.0, 0.1, 640.0, 40.0, 0.011, 0.93, 0.58, 23.0],
            ["cw-l2", None, 0.0, 1.0, 1.1, 0.31, 700.0, 1000.0, 0.9, 0.55, 0.86, 27.5],
        ], caption="Linf budgets on inputs in [0, 1]; robust accuracy over all 200 examples.")],
        figures=[ReportFigure("Robust accuracy versus budget", rob, "One panel per norm.")],
        scorecard=[r for r in rows if r.threat == "evasion"],
        threat_model="White-box attacker with the model's gradients, Linf and L2 budgets.",
        advice="Adversarial training with PGD (Madry et al. 2018) is the first thing to try.",
        notes=["C&W ran with 100 iterations instead of the paper's 10,000: its figures are an upper bound."])
    mem = SectionOutput(
        "membership", "membership",
        summary={"threat_model": {"attacker_data": "pool", "candidates": {"members": 500, "nonmembers": 500},
                                  "shadows": 16, "pool_size": 4000, "augment": "none"}},
        tables=[ReportTable("Membership inference (low-FPR)",
                            ["attack", "auc", "advantage", "balanced_accuracy", "tpr@0.1%fpr", "tpr@1%fpr", "time_s"],
                            [["lira", 0.71, 0.32, 0.66, 0.004, 0.05, 12.0], ["yeom", 0.53, 0.05, 0.52, 0.0, 0.012, 0.01]])],
        figures=[ReportFigure("Membership inference ROC (log-log)", roc, "Log-log ROC.")],
        scorecard=[r for r in rows if r.threat == "membership"])
    leak = SectionOutput(
        "leakage", "leakage", summary={"runs": []},
        tables=[ReportTable("Gradient leakage", LEAKAGE_COLUMNS, [
            ["dlg", "patterned", "none", 4, 1.0, 412.0, 0.0012, 0.01, 29.2, 0.91, 1.0, 500.0, "converged x3, max_iterations x1", 3.2],
            ["dlg", "patterned", "noise:0.01", 4, 0.25, None, 0.05, 0.4, 13.0, 0.21, 0.75, 1000.0, "max_iterations x4", 6.1],
            ["dlg", "random", "prune:0.9", 4, 0.0, None, 0.09, 0.7, 10.4, 0.08, 0.5, 1000.0, "max_iterations x4", 6.0],
        ])],
        scorecard=[r for r in rows if r.threat == "leakage"])
    dp = SectionOutput("dp", "dp", summary={"private": False, "epsilon": None,
                                            "note": "the checkpoint was trained without differential privacy"},
                       scorecard=[r for r in rows if r.threat == "dp"])
    sections = [ev, mem, leak, dp]
    results: dict[str, Any] = {
        "run_id": "0123abcd", "seed": 7, "device": "cpu", "threads": 2,
        "config": {"seed": 7, "batch_size": 250,
                   "data": {"name": None, "split": "test", "n": 200, "only_correct": True, "root": None},
                   "sections": [
                       {"kind": "evasion", "name": "evasion", "attacks": [
                           {"attack": "fgsm", "eps": [0.05, 0.1, 0.3]},
                           {"attack": "pgd", "eps": [0.05, 0.1, 0.3], "params": {"steps": 40, "alpha": 0.01}},
                           {"attack": "cw-l2", "eps": [0.5, 1.0], "params": {"max_iter": 100}}]},
                       {"kind": "membership", "name": "membership", "attacks": ["lira", "yeom"], "shadows": 16},
                       {"kind": "leakage", "name": "leakage", "attack": "dlg", "n": 4,
                        "defenses": ["none", "noise:0.01", "prune:0.9"]},
                       {"kind": "dp", "name": "dp"}]},
        "versions": {"bastion": "0.1.0", "torch": "2.13.0"},
        "model": {"checkpoint": "models/cnn7.st", "name": "cnn7", "arch": "cnn7", "num_classes": 10},
        "data": {"name": "mnist-5k", "split": "test", "n": 200},
        "clean_accuracy": 0.97, "steps": {"cached": 0, "new": 12},
        "finished": "2026-01-01T00:00:00+00:00", "wall_time_s": 81.5,
        "sections": {s.name: {"kind": s.kind, "summary": s.summary, "tables": []} for s in sections},
    }
    if with_scorecard and in_results:
        from dataclasses import asdict
        results["scorecard"] = [asdict(r) for r in rows]
        results["verdict"] = "fail"
    return results, sections
