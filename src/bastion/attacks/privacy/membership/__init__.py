"""Membership inference: does a model reveal who was in its training set?

Attacks are pure functions over `SignalMatrix` (samples x models signals + a membership
matrix), computed once from the target and from cached shadow models
(`bastion.training.shadow`). Scores: higher = more likely a member; evaluate them with
`bastion.metrics.membership`.

- `lira_online`, `lira_offline`: Carlini et al. 2022.
- `rmia`: Zarifzadeh et al. 2024 (offline, reference models).
- `ShokriAttack` / `shokri`: Shokri et al. 2017.
- `loss_scores`, `threshold_attack`, `bounded_loss_attack`: Yeom et al. 2018.
- `gap_attack`: label-only baseline.
- `membership_experiment`: the membership game and its advantage.
- `audit_membership`: the end-to-end audit used by the CLI and the audit section.
"""

from bastion.attacks.privacy.membership.experiment import ExperimentResult, membership_experiment
from bastion.attacks.privacy.membership.gap import gap_attack
from bastion.attacks.privacy.membership.lira import LiRAConfig, lira_offline, lira_online
from bastion.attacks.privacy.membership.rmia import RMIAConfig, rmia
from bastion.attacks.privacy.membership.runner import (
                                                        ATTACKS,
                                                        MembershipReport,
                                                        MIAConfig,
                                                        audit_membership,
)
from bastion.attacks.privacy.membership.shokri import ShokriAttack, ShokriConfig, shokri
from bastion.attacks.privacy.membership.signals import (
                                                        SignalMatrix,
                                                        compute_signals,
                                                        logit_confidence,
                                                        query_transforms,
)
from bastion.attacks.privacy.membership.yeom import (
                                                        bounded_loss_attack,
                                                        calibrate_threshold,
                                                        loss_scores,
                                                        threshold_attack,
)

__all__ = [
    "ATTACKS", "ExperimentResult", "LiRAConfig", "MIAConfig", "MembershipReport", "RMIAConfig",
    "ShokriAttack", "ShokriConfig", "SignalMatrix", "audit_membership", "bounded_loss_attack",
    "calibrate_threshold", "compute_signals", "gap_attack", "lira_offline", "lira_online",
    "logit_confidence", "loss_scores", "membership_experiment", "query_transforms", "rmia",
    "shokri", "threshold_attack",
]
