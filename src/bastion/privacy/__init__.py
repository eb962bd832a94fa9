"""Privacy accounting: epsilon of DP-SGD runs under six accountants, noise calibration."""

from bastion.privacy.accountants import (
    ACCOUNTANTS,
    LABELS,
    PrivacyLedger,
    compute_epsilon,
    compute_epsilons,
    noise_multiplier,
    rdp_subsampled_gaussian,
)

__all__ = ["ACCOUNTANTS", "LABELS", "PrivacyLedger", "compute_epsilon", "compute_epsilons",
           "noise_multiplier", "rdp_subsampled_gaussian"]
