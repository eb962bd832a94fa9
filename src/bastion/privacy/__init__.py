"""Privacy accounting: epsilon of DP-SGD runs under eight accountants (four guarantees,
four reference formulas), noise calibration, and the DP statement of a trained model."""

from bastion.privacy.accountants import (
    ACCOUNTANTS,
    GUARANTEES,
    KINDS,
    LABELS,
    REFERENCE_FORMULAS,
    Figure,
    PrivacyLedger,
    compute_epsilon,
    compute_epsilons,
    noise_multiplier,
    privacy_summary,
    rdp_subsampled_gaussian,
)

__all__ = ["ACCOUNTANTS", "GUARANTEES", "KINDS", "LABELS", "REFERENCE_FORMULAS", "Figure",
           "PrivacyLedger", "compute_epsilon", "compute_epsilons", "noise_multiplier",
           "privacy_summary", "rdp_subsampled_gaussian"]
