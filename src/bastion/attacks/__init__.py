"""Attacks: evasion (`bastion.attacks.evasion`) and privacy (`bastion.attacks.privacy`)."""

from bastion.attacks.base import Attack, RunOutput
from bastion.attacks.registry import create, describe, get, names

__all__ = ["Attack", "RunOutput", "create", "describe", "get", "names"]
