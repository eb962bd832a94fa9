"""Training loops: standard (`fit`), and the private / adversarial variants."""

from bastion.training.fit import TrainConfig, TrainResult, fit

__all__ = ["TrainConfig", "TrainResult", "fit"]

from bastion.training.dp import DPSGD, DPConfig, DPTrainResult, train_dp

__all__ += ["DPSGD", "DPConfig", "DPTrainResult", "train_dp"]

from bastion.training.adversarial import (  # noqa: E402
    TRADES,
    AdvTrainResult,
    FastTraining,
    PGDTraining,
    adversarial_fit,
)
from bastion.training.distillation import (  # noqa: E402
    DistillationConfig,
    DistillationResult,
    defensive_distillation,
)

__all__ += ["TRADES", "AdvTrainResult", "DistillationConfig", "DistillationResult", "FastTraining",
            "PGDTraining", "adversarial_fit", "defensive_distillation"]

from bastion.training.private import PrivacyEngine  # noqa: E402

__all__ += ["PrivacyEngine"]
