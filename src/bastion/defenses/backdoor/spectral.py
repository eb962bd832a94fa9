"""Spectral signatures (Tran, Li & Madry 2018): in each class, centre the penultimate
representations, take the top right singular vector v and score every example by its
squared projection ((r - mean) . v)^2; poisons carry a detectable trace along v. Remove
the 1.5 * eps * n_c highest-scoring examples of each class, eps being an upper estimate
of the poisoned share of a class.

The score relies on the poisons being a minority of their class: the poisoned and clean
sub-populations sit at (1 - eps) and eps times the distance between their means from the
class mean, so the poisons are the farther ones only while eps < 1/2. With `rounds` > 1
the removal budget is spent in that many equal steps, and the mean and v are recomputed
on the examples still kept after every step (the iterative filtering of robust mean
estimation, Diakonikolas et al. 2017, on which Tran et al.'s analysis builds): once a
step has removed more of one sub-population, it is the minority and the next steps
favour it. rounds=1 is the paper's one-shot removal."""

from __future__ import annotations

from typing import Any

import torch

from bastion.attacks.poisoning.features import penultimate_batched
from bastion.core import Classifier, check_number


def _top_direction_scores(r: torch.Tensor) -> tuple[torch.Tensor, float]:
    c = r - r.mean(0)
    _, s, vh = torch.linalg.svd(c, full_matrices=False)
    return (c @ vh[0]).pow(2), float(s[0])


def spectral_signatures(clf: Classifier, x: torch.Tensor, y: torch.Tensor, eps: float = 0.1,
                        removal_factor: float = 1.5, rounds: int = 1) -> dict[str, Any]:
    """Score the training inputs x (labels y) and flag the top removal_factor * eps share
    of each class, in `rounds` steps (1 = the paper). Returns per-class score statistics
    and the flagged indices into x; `scores` are the one-shot scores."""
    check_number(eps, "eps", low=0.0, high=1.0)
    check_number(removal_factor, "removal_factor", low=0.0)
    check_number(rounds, "rounds", low=1, high=10_000, integer=True)
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
        sc, s0 = _top_direction_scores(feats[idx])
        scores[idx] = sc
        n_rm = min(idx.numel(), round(removal_factor * eps * idx.numel()))
        keep = torch.ones(idx.numel(), dtype=torch.bool)
        removed = 0
        for t in range(rounds):
            step = (n_rm * (t + 1)) // rounds - removed
            alive = torch.nonzero(keep).flatten()
            if step <= 0 or alive.numel() == 0:
                continue
            cur = sc if t == 0 else (_top_direction_scores(feats[idx[alive]])[0] if alive.numel() > 1
                                     else torch.zeros(1, dtype=torch.float64))
            if t == 0:
                cur = cur[alive]
            keep[alive[cur.argsort(descending=True)[:step]]] = False
            removed += min(step, alive.numel())
        flagged.extend(idx[~keep].tolist())
        per_class.append({"class": k, "n": int(idx.numel()), "removed": int((~keep).sum()),
                          "top_singular_value": s0,
                          "score_ratio": float(sc.max() / sc.median().clamp_min(1e-12))})
    return {"method": "spectral", "per_class": per_class, "flagged_index": sorted(flagged),
            "scores": scores.float(), "config": {"eps": eps, "removal_factor": removal_factor, "rounds": rounds}}
