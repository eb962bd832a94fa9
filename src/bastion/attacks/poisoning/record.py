"""What every poisoning attack returns: the poisoned data set and a record of the change."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from bastion.attacks.poisoning.trigger import Trigger
from bastion.data.dataset import Dataset


@dataclass
class PoisonRecord:
    """Which training examples an attack changed and how.

    Attributes:
        attack: attack name ('label-flip', 'badnets', 'clean-label', 'feature-collision').
        index: positions (in the returned data set) of the changed examples, sorted.
        original_labels, new_labels: labels before and after, one per changed example
            (equal for clean-label attacks).
        target: the attacker's target class (None for random flipping / all-to-all).
        trigger: the backdoor trigger stamped on the poisons (None for label flipping and
            feature collision).
        params: the attack's configuration (JSON-ready).
        extras: attack-specific outputs (e.g. the feature-collision target image).
    """

    attack: str
    index: torch.Tensor
    original_labels: torch.Tensor
    new_labels: torch.Tensor
    target: int | None = None
    trigger: Trigger | None = None
    params: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def n_poisoned(self) -> int:
        return int(self.index.numel())

    def mask(self, n: int) -> torch.Tensor:
        """Boolean [n] marking the poisoned positions."""
        m = torch.zeros(n, dtype=torch.bool)
        m[self.index] = True
        return m

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (indices as a list; tensors in extras are left out)."""
        return {"attack": self.attack, "n_poisoned": self.n_poisoned, "index": self.index.tolist(),
                "original_labels": self.original_labels.tolist(), "new_labels": self.new_labels.tolist(),
                "target": self.target, "trigger": None if self.trigger is None else self.trigger.to_dict(),
                "params": dict(self.params),
                "extras": {k: v for k, v in self.extras.items() if not isinstance(v, torch.Tensor)}}


@dataclass
class PoisonResult:
    """A poisoned copy of the training set plus the record of what was changed."""

    data: Dataset
    record: PoisonRecord

    @property
    def fraction(self) -> float:
        return self.record.n_poisoned / max(1, len(self.data))
