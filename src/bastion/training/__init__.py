"""Training loops: standard (`fit`), and the private / adversarial variants."""

from bastion.training.fit import TrainConfig, TrainResult, fit

__all__ = ["TrainConfig", "TrainResult", "fit"]

from bastion.training.dp import DPSGD, DPConfig, DPTrainResult, train_dp

__all__ += ["DPSGD", "DPConfig", "DPTrainResult", "train_dp"]
