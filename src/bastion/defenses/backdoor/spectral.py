"""Spectral signatures (Tran, Li & Madry 2018): in each class, centre the penultimate
representations, take the top right singular vector v and score every example by its
squared projection ((r - mean) . v)^2; poisons carry a detectable trace along v. Remove
the 1.5 * eps * n_c highest-scoring examples of each class, eps being an upper estimate
of the poisoned share of a class."""

from __future__ import annotations

from typing import Any

import torch

from bastion.attacks.poisoning.features import penultimate_batched
from bastion.core import Classifier, check_number


def spectral_signatures(clf: Classifier, x: torch.Tensor, y: torch.Tensor, eps: float = 0.1,
                        removal_factor: float = 1.5) -> dict[str, Any]:
    """Score the training inputs x (labels y) and flag the top removal_factor * eps share
    of each class. Returns per-class score statistics and the flagged indices into x."""
    check_number(eps, "eps", low=0.0, high=1.0)
    check_number(removal_factor, "removal_factor", low=0.0)
    feats = penultimate_batched(clf, x).double()
    scores = torch.zeros(x.shape[0], dtype=torch.float64)
    flagged: list[int] = []
    per_class = []
    yy = y.cpu()
    for k in range(clf.num_classes):
        idx = torch.nonzero(yy == k).flatten()
        if idx.numel() < 2:
            per_class.append({"class": k, "n": int(idx.numel()), "removed": 0, "top_singular_value": None})
            continue
        r = feats[idx] - feats[idx].mean(0)
        _, s, vh = torch.linalg.svd(r, full_matrices=False)
        sc = (r @ vh[0]).pow(2)
        scores[idx] = sc
        n_rm = min(idx.numel(), round(removal_factor * eps * idx.numel()))
        top = sc.argsort(descending=True)[:n_rm]
        flagged.extend(idx[top].tolist())
        per_class.append({"class": k, "n": int(idx.numel()), "removed": n_rm,
                          "top_singular_value": float(s[0]),
                          "score_ratio": float(sc.max() / sc.median().clamp_min(1e-12))})
    return {"method": "spectral", "per_class": per_class, "flagged_index": sorted(flagged),
            "scores": scores.float(), "config": {"eps": eps, "removal_factor": removal_factor}}
