"""The gap attack (label-only; Yeom et al. 2018 as the baseline of Choquette-Choo et al.
2021): predict "member" exactly when the target classifies the example correctly. Its
advantage is the train-test accuracy gap; scores are 1 (correct) or 0, so the ROC has a
single operating point.
"""

from __future__ import annotations

import torch

from bastion.attacks.privacy.membership.signals import SignalMatrix
from bastion.core import InputError


def gap_attack(target: SignalMatrix) -> torch.Tensor:
    """Scores [N]: 1.0 where the target's prediction is correct, else 0.0."""
    if target.m != 1:
        raise InputError(f"the target signal matrix must have one model column, got {target.m}")
    return target.correct[:, 0].float()
