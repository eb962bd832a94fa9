"""Bastion: attack, defend and audit deep-learning models for security and privacy."""

__version__ = "0.1.0"

from bastion.core import (
    AttackResult,
    BastionError,
    Classifier,
    ConfigError,
    InputSpec,
    default_device,
)

__all__ = ["AttackResult", "BastionError", "Classifier", "ConfigError", "InputSpec", "__version__",
           "default_device"]
