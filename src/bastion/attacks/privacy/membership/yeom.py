"""Yeom et al., "Privacy Risk in Machine Learning: Analyzing the Connection to
Overfitting" (CSF 2018): membership from the loss alone.

- Bounded-loss attack A_1: for a loss bounded by B, output "non-member" with probability
  loss / B (else "member"). Its advantage equals the generalisation gap R_gen / B
  (Theorem 2), where R_gen = E_D[loss] - E_S[loss]. Cross-entropy is unbounded, so the loss
  is clipped at B.
- Threshold attack: "member" when loss <= tau, with tau the average training loss L_S
  (the paper's assumption about the attacker's knowledge), or calibrated on reference
  data: the mean IN loss of shadow models (an estimate of L_S), or the OUT-loss quantile
  that gives a chosen false-positive rate.

Scores for ROC analysis are -loss (a global threshold sweep: the "LOSS attack").
"""

from __future__ import annotations

import torch

from bastion.attacks.privacy.membership.signals import SignalMatrix
from bastion.core import ConfigError, InputError

CALIBRATIONS = ("train-loss", "fpr")


def _target_loss(target: SignalMatrix) -> torch.Tensor:
    if target.m != 1:
        raise InputError(f"the target signal matrix must have one model column, got {target.m}")
    return target.loss[:, 0, 0]


def loss_scores(target: SignalMatrix) -> torch.Tensor:
    """-loss of the clean query, [N]: higher = more likely member."""
    return -_target_loss(target)


def threshold_attack(target: SignalMatrix, threshold: float) -> torch.Tensor:
    """Hard decisions [N] (True = member): loss <= threshold."""
    if not threshold >= 0:
        raise ConfigError(f"loss threshold must be >= 0, got {threshold}")
    return _target_loss(target) <= threshold


def calibrate_threshold(reference: SignalMatrix, rule: str = "train-loss", fpr: float = 0.01) -> float:
    """A loss threshold from reference (shadow) models: 'train-loss' = the mean loss of the
    models on their own training examples (the attacker's estimate of L_S); 'fpr' = the
    `fpr`-quantile of OUT losses (so about `fpr` of non-members fall below it)."""
    if rule not in CALIBRATIONS:
        raise ConfigError(f"unknown calibration {rule!r}; valid: {', '.join(CALIBRATIONS)}")
    loss = reference.loss[..., 0]
    if rule == "train-loss":
        if not bool(reference.member.any()):
            raise ConfigError("'train-loss' calibration needs reference models with known IN examples")
        return float(loss[reference.member].mean())
    if not 0 < fpr < 1:
        raise ConfigError(f"fpr must lie in (0, 1), got {fpr}")
    out = loss[~reference.member]
    if out.numel() == 0:
        raise ConfigError("'fpr' calibration needs OUT examples in the reference signals")
    return float(torch.quantile(out.double(), fpr))


def bounded_loss_attack(target: SignalMatrix, bound: float, generator: torch.Generator | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Yeom's randomised attack A_1. Returns (p_member [N], decisions [N]); p_member =
    1 - min(loss, B) / B and the decisions are Bernoulli(p_member) draws."""
    if not bound > 0:
        raise ConfigError(f"loss bound B must be positive, got {bound}")
    p_member = 1.0 - _target_loss(target).clamp(0, bound) / bound
    return p_member, torch.bernoulli(p_member, generator=generator).bool()
