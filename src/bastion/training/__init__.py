"""Training loops: standard (`fit`), and the private / adversarial variants."""

from bastion.training.fit import TrainConfig, TrainResult, fit

__all__ = ["TrainConfig", "TrainResult", "fit"]
