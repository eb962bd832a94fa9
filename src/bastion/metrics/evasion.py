"""Effect and cost metrics of evasion attacks (dissertation ch. 2, Table 2.4).

AE = adversarial example, SAE = successful AE, MAE = misclassified AE.

- ASR = #SAE / #AE; MR = #MAE / #AE (equal to ASR for untargeted attacks).
- MeanConf: mean probability of the adversarial class (the prediction of a SAE: the
  wrong class untargeted, the target class targeted) over SAEs.
- DistAATB: mean |p_adv(AE) - p_true(benign)| over SAEs (adversarial class on the AE
  against the true class on the clean input).
- DistAATA: mean |p_adv(AE) - p_true(AE)| over SAEs (both from the AE).
- DistACOC: mean (p_adv(AE) - highest other probability on the AE) over SAEs.
- DistPerturb: mean ||x_adv - x||_p, absolute and relative to ||x||_p, p in {0, 1, 2, inf},
  over SAEs, plus the fraction of changed values (l0_frac, Table 2.4's L0 column);
  SSIM and PSNR between x and x_adv over SAEs (images only).
- time per example, mean queries.

All functions are pure: they take a model and an `AttackResult` and return numbers.
"""

from __future__ import annotations

import math

import torch

from bastion.core import AttackResult, Classifier
from bastion.metrics.image import psnr, ssim


def _mean(v: torch.Tensor, mask: torch.Tensor | None = None) -> float | None:
    if mask is not None:
        v = v[mask]
    v = v[torch.isfinite(v)]
    return float(v.float().mean()) if v.numel() else None


def perturbation_norms(x: torch.Tensor, x_adv: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-example absolute and relative (to ||x||_p) L0, L1, L2 and Linf of x_adv - x."""
    d = (x_adv.detach() - x.detach()).flatten(1).float()
    xf = x.detach().flatten(1).float()
    out: dict[str, torch.Tensor] = {}
    for key, fn in (("l0", lambda t: (t.abs() > 1e-8).sum(1).float()),
                    ("l1", lambda t: t.abs().sum(1)),
                    ("l2", lambda t: t.norm(dim=1)),
                    ("linf", lambda t: t.abs().amax(1))):
        num, den = fn(d), fn(xf)
        out[f"{key}_abs"] = num
        out[f"{key}_rel"] = torch.where(den > 0, num / den.clamp_min(1e-12),
                                        torch.full_like(num, float("nan")))
    return out


def evasion_metrics(model: Classifier, result: AttackResult) -> dict[str, float | None]:
    """The dissertation's effect and cost metrics for one attack run (JSON-ready).

    `asr` counts over the initially correct inputs (an input the model already gets wrong
    is no attack success), the usual definition; `clean_error` is the share misclassified
    before the attack; `mr` is the misclassification rate over all inputs after it.
    Keys: n, asr, clean_error, mr, mean_conf, dist_aatb, dist_aata, dist_acoc, {l0,l1,l2,linf}_{abs,rel},
    l0_frac, ssim, psnr, time_per_example_s, queries_mean. Averages over successful AEs;
    None where there is none (or, for SSIM/PSNR, where inputs are not images).
    """
    n = result.n
    dev = model.device
    x, x_adv = result.x.to(dev), result.x_adv.to(dev)
    y = result.y.to(dev)
    p_clean = model.probs(x)
    p_adv = model.probs(x_adv)
    pred_adv = p_adv.argmax(-1)
    success = pred_adv == result.target.to(dev) if result.target is not None else pred_adv != y
    mis = pred_adv != y
    correct = p_clean.argmax(-1) == y
    n_correct = int(correct.sum())
    rows = torch.arange(n, device=dev)
    conf_adv = p_adv[rows, pred_adv]
    true_adv = p_adv[rows, y]
    true_clean = p_clean[rows, y]
    others = p_adv.clone()
    others[rows, pred_adv] = -1.0
    runner_up = others.amax(-1)
    out: dict[str, float | None] = {
        "n": float(n),
        "asr": float((success & correct).sum()) / n_correct if n_correct else None,
        "clean_error": 1.0 - n_correct / n if n else None,
        "mr": float(mis.float().mean()) if n else None,
        "mean_conf": _mean(conf_adv, success),
        "dist_aatb": _mean((conf_adv - true_clean).abs(), success),
        "dist_aata": _mean((conf_adv - true_adv).abs(), success),
        "dist_acoc": _mean(conf_adv - runner_up, success),
    }
    for k, v in perturbation_norms(x, x_adv).items():
        out[k] = _mean(v.to(dev), success)
    d = x[0].numel() if n else 1
    out["l0_frac"] = None if out["l0_abs"] is None else out["l0_abs"] / d
    if x.dim() == 4 and bool(success.any()):
        lo, hi = model.spec.bounds
        xs, xa = (x[success] - lo) / (hi - lo), (x_adv[success] - lo) / (hi - lo)
        out["ssim"] = _mean(ssim(xs, xa))
        out["psnr"] = _mean(psnr(xs, xa))
    else:
        out["ssim"] = out["psnr"] = None
    out["time_per_example_s"] = result.wall_time / max(n, 1)
    out["queries_mean"] = None if result.queries is None else float(result.queries.float().mean())
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()}


def per_class_success(result: AttackResult, num_classes: int) -> list[float | None]:
    """ASR per source (true) class; None for classes absent from the batch."""
    y, s = result.y.cpu(), result.success.cpu().float()
    out: list[float | None] = []
    for c in range(num_classes):
        m = y == c
        out.append(float(s[m].mean()) if bool(m.any()) else None)
    return out


def source_target_matrix(result: AttackResult, num_classes: int,
                         successful_only: bool = True) -> torch.Tensor:
    """Counts [C, C]: row = true class, column = adversarial prediction (over SAEs by
    default, else over all AEs). For targeted runs the columns are the reached targets."""
    y, p = result.y.cpu().long(), result.pred_adv.cpu().long()
    if successful_only:
        keep = result.success.cpu()
        y, p = y[keep], p[keep]
    m = torch.zeros(num_classes, num_classes, dtype=torch.long)
    m.index_put_((y, p), torch.ones_like(y), accumulate=True)
    return m


def target_success_matrix(result: AttackResult, num_classes: int) -> torch.Tensor:
    """Targeted runs: success rate [C, C] per (true class, target class); NaN where no
    example had that pair."""
    if result.target is None:
        raise ValueError("target_success_matrix needs a targeted AttackResult")
    y, t = result.y.cpu().long(), result.target.cpu().long()
    s = result.success.cpu().float()
    tot = torch.zeros(num_classes, num_classes)
    hit = torch.zeros(num_classes, num_classes)
    tot.index_put_((y, t), torch.ones_like(s), accumulate=True)
    hit.index_put_((y, t), s, accumulate=True)
    return torch.where(tot > 0, hit / tot.clamp_min(1), torch.full_like(tot, float("nan")))
