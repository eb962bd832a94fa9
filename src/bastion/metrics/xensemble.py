"""Defense and out-of-distribution metrics of XEnsemble (Wei et al. 2020, section 3.4.1).

On a set of adversarial inputs, with the defense's labels and its flags:

- PSR (prevention success rate): answered (not flagged) and correct;
- TSR (detection success rate): flagged, where the defense's label would have been wrong;
- DSR = PSR + TSR: repaired or detected;
- FP: flagged although the defense's label was correct (a needless rejection).

On benign inputs PSR is the benign accuracy and the flagged share the benign false-flag
rate. For OOD detection (OOD inputs are the positives, score higher = more suspicious):
AUROC, the FPR on in-distribution inputs at 95% TPR, and the detection error
DError = 0.5 (1 - TPR) + 0.5 FPR (Liang et al. 2018), minimised over thresholds, or at a
detector's own operating point when its flags are given.
"""

from __future__ import annotations

from typing import Any

import torch

from bastion.core import require


def _bool(t: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(t).detach().cpu().bool().flatten()


def defense_rates(pred: torch.Tensor, flagged: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """PSR, TSR, DSR, FP (and the flagged share) of a defense's labels and flags."""
    p = torch.as_tensor(pred).detach().cpu().long().flatten()
    f = _bool(flagged)
    yy = torch.as_tensor(y).detach().cpu().long().flatten()
    require(p.numel() == f.numel() == yy.numel() and p.numel() > 0,
            f"defense rates need equal, non-empty label, flag and truth vectors ({p.numel()}, {f.numel()}, {yy.numel()})")
    correct = p == yy
    psr = float((~f & correct).float().mean())
    tsr = float((f & ~correct).float().mean())
    return {"psr": psr, "tsr": tsr, "dsr": psr + tsr, "fp": float((f & correct).float().mean()),
            "flagged": float(f.float().mean()), "n": int(p.numel())}


def benign_rates(pred: torch.Tensor, flagged: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Benign accuracy (answered and correct), the false-flag rate and the accuracy
    ignoring flags."""
    r = defense_rates(pred, flagged, y)
    p = torch.as_tensor(pred).detach().cpu().long().flatten()
    return {"accuracy": r["psr"], "false_flag_rate": r["flagged"],
            "accuracy_ignoring_flags": float((p == torch.as_tensor(y).cpu().long().flatten()).float().mean()),
            "n": r["n"]}


def auroc(score_in: torch.Tensor, score_out: torch.Tensor) -> float:
    """Area under the ROC curve of separating OOD (positives) from in-distribution inputs
    by score: P(score_out > score_in) + 0.5 P(equal) (Mann-Whitney)."""
    a = torch.as_tensor(score_in).detach().cpu().double().flatten()
    b = torch.as_tensor(score_out).detach().cpu().double().flatten()
    require(a.numel() > 0 and b.numel() > 0, "AUROC needs in-distribution and OOD scores")
    allv = torch.cat([a, b])
    order = allv.argsort(stable=True)
    ranks = torch.empty_like(allv)
    ranks[order] = torch.arange(1, allv.numel() + 1, dtype=torch.float64)
    # average ranks of ties
    uniq, inv = torch.unique(allv, return_inverse=True)
    sums = torch.zeros(uniq.numel(), dtype=torch.float64).index_add_(0, inv, ranks)
    cnt = torch.zeros(uniq.numel(), dtype=torch.float64).index_add_(0, inv, torch.ones_like(ranks))
    ranks = (sums / cnt)[inv]
    rb = float(ranks[a.numel():].sum())
    nb, na = b.numel(), a.numel()
    return (rb - nb * (nb + 1) / 2) / (na * nb)


def _roc(score_in: torch.Tensor, score_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    a = torch.as_tensor(score_in).detach().cpu().double().flatten()
    b = torch.as_tensor(score_out).detach().cpu().double().flatten()
    thr = torch.cat([torch.unique(torch.cat([a, b])), torch.tensor([float("inf")], dtype=torch.float64)])
    tpr = (b[None, :] >= thr[:, None]).double().mean(1)
    fpr = (a[None, :] >= thr[:, None]).double().mean(1)
    return tpr, fpr


def fpr_at_tpr(score_in: torch.Tensor, score_out: torch.Tensor, tpr: float = 0.95) -> float:
    """The smallest in-distribution false-positive rate at which at least `tpr` of the OOD
    inputs are detected (flag = score >= threshold)."""
    t, f = _roc(score_in, score_out)
    ok = t >= tpr - 1e-12
    return float(f[ok].min())


def detection_error(score_in: torch.Tensor, score_out: torch.Tensor) -> float:
    """min over thresholds of 0.5 (1 - TPR) + 0.5 FPR."""
    t, f = _roc(score_in, score_out)
    return float((0.5 * (1 - t) + 0.5 * f).min())


def ood_metrics(score_in: torch.Tensor, score_out: torch.Tensor, flag_in: torch.Tensor | None = None,
                flag_out: torch.Tensor | None = None) -> dict[str, Any]:
    """AUROC, FPR at 95% TPR and DError of a score; with flags also the TPR, FPR and
    DError at the detector's own operating point."""
    out: dict[str, Any] = {"auroc": auroc(score_in, score_out), "fpr_at_95_tpr": fpr_at_tpr(score_in, score_out),
                           "derror": detection_error(score_in, score_out),
                           "n_in": int(torch.as_tensor(score_in).numel()),
                           "n_out": int(torch.as_tensor(score_out).numel())}
    if flag_in is not None and flag_out is not None:
        tpr = float(_bool(flag_out).float().mean())
        fpr = float(_bool(flag_in).float().mean())
        out.update(flag_tpr=tpr, flag_fpr=fpr, flag_derror=0.5 * (1 - tpr) + 0.5 * fpr)
    return out
