"""Certified defenses: randomized smoothing (Cohen et al. 2019) and denoised smoothing
(Salman et al. 2020), PixelDP (Lecuyer et al. 2019), and Linf bound propagation (IBP,
CROWN, CROWN-IBP) with IBP training (Gowal et al. 2018). Every certified model is a
`Classifier`; certificates are result objects (`Certificates`, `PixelDPCertificates`,
`Verification`)."""

from bastion.defenses.certify.bounds import IBPTraining, ibp_fit, layers_of, verify
from bastion.defenses.certify.smoothing import (
    ABSTAIN,
    Certificates,
    GaussianAugmentation,
    SmoothedClassifier,
    certified_accuracy_curve,
    gaussian_augmentation_fit,
)

__all__ = ["ABSTAIN", "Certificates", "GaussianAugmentation", "IBPTraining", "SmoothedClassifier",
           "certified_accuracy_curve", "gaussian_augmentation_fit", "ibp_fit", "layers_of", "verify"]
