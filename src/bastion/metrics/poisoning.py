"""Figures for poisoning and backdoors: clean accuracy, attack success rate (ASR) on
triggered non-target inputs, source-class recall, detection precision / recall / F1 over
the poisoned indices, and Neural Cleanse's MAD anomaly index (Wang et al. 2019)."""

from __future__ import annotations

from typing import Any

import torch

from bastion.core import Classifier


def clean_accuracy(clf: Classifier, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy on clean inputs."""
    return clf.accuracy(x, y)


def attack_success_rate(clf: Classifier, x: torch.Tensor, y: torch.Tensor, trigger: Any,
                        target: int | None = None, mode: str = "all-to-one") -> float:
    """Share of triggered inputs classified as the backdoor label, over the inputs whose
    true class is not already that label (all-to-one: y != target; all-to-all: every input,
    the label being y + 1 mod K)."""
    if mode == "all-to-all":
        keep = torch.ones_like(y, dtype=torch.bool)
        want = (y + 1) % clf.num_classes
    else:
        keep = y != int(target)  # type: ignore[arg-type]
        want = torch.full_like(y, int(target))  # type: ignore[arg-type]
    if not bool(keep.any()):
        return float("nan")
    pred = clf.predict(trigger.apply(x[keep])).cpu()
    return float((pred == want[keep]).float().mean())


def source_class_recall(clf: Classifier, x: torch.Tensor, y: torch.Tensor, source: int) -> float:
    """Recall of one class (the class a label-flipping attacker relabels)."""
    keep = y == int(source)
    if not bool(keep.any()):
        return float("nan")
    return float((clf.predict(x[keep]).cpu() == int(source)).float().mean())


def detection_scores(flagged: torch.Tensor | list[int], poisoned: torch.Tensor | list[int], n: int) -> dict[str, float]:
    """Precision, recall and F1 of flagged indices against the true poisoned indices among n."""
    f = torch.zeros(n, dtype=torch.bool)
    p = torch.zeros(n, dtype=torch.bool)
    f[torch.as_tensor(flagged, dtype=torch.long)] = True
    p[torch.as_tensor(poisoned, dtype=torch.long)] = True
    tp = int((f & p).sum())
    nf, npz = int(f.sum()), int(p.sum())
    precision = tp / nf if nf else float("nan")
    recall = tp / npz if npz else float("nan")
    f1 = 2 * tp / (nf + npz) if (nf + npz) else float("nan")
    return {"precision": precision, "recall": recall, "f1": f1, "flagged": nf, "poisoned": npz,
            "true_positives": tp}


MAD_CONSISTENCY = 1.4826  # makes the median absolute deviation consistent with a normal std


def anomaly_index(values: torch.Tensor) -> torch.Tensor:
    """|v - median| / (1.4826 * MAD) per entry (Wang et al. 2019's anomaly index over the
    per-class L1 norms of the reversed triggers; an index > 2 with a norm below the median
    marks a likely backdoor target)."""
    v = values.double().flatten()
    med = v.quantile(0.5)
    mad = MAD_CONSISTENCY * (v - med).abs().quantile(0.5)
    return ((v - med).abs() / mad.clamp_min(1e-12)).float()
