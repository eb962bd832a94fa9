"""Bastion: attack, defend and audit deep-learning models for security and privacy."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

from bastion.errors import BastionError, ConfigError

__all__ = ["AttackResult", "BastionError", "Classifier", "ConfigError", "InputSpec", "__version__",
           "default_device"]

# torch-backed names load on first use, so `bastion --help` starts without importing torch
_LAZY = {"AttackResult", "Classifier", "InputSpec", "default_device"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from bastion import core

        return getattr(core, name)
    raise AttributeError(f"module 'bastion' has no attribute {name!r}")
