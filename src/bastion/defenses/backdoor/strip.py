"""STRIP (Gao et al. 2019): superimpose an input on clean held-out images and look at the
entropy of the predictions. A clean input's predictions scatter (high entropy); a
triggered input stays at the target whatever it is blended with (low entropy). The
threshold is the entropy quantile of clean inputs at a chosen false rejection rate."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from bastion.core import Classifier, ConfigError, check_number, check_seed


@dataclass
class Strip:
    """STRIP detector. n_overlays: clean images blended with each input (Gao et al.: 100);
    frr: false rejection rate the threshold allows on clean inputs; alpha: blend weight of
    the overlay (the input keeps weight 1; the sum is clipped to the bounds, like the
    paper's image addition)."""

    clf: Classifier
    overlays: torch.Tensor
    n_overlays: int = 32
    frr: float = 0.01
    alpha: float = 1.0
    seed: int = 0
    threshold: float | None = None
    clean_entropy: torch.Tensor | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        check_number(self.n_overlays, "n_overlays", low=1, high=100_000, integer=True)
        check_number(self.frr, "frr", low=0.0, high=1.0)
        check_number(self.alpha, "alpha", low=0.0, high=1.0, low_open=True)
        check_seed(self.seed)
        if self.overlays.shape[0] < 1:
            raise ConfigError("STRIP needs at least one clean overlay image")

    def entropy(self, x: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Mean prediction entropy (nats) of each input over its superimposed copies."""
        gen = torch.Generator().manual_seed(self.seed)
        lo, hi = self.clf.spec.bounds
        out = []
        n_o = self.n_overlays
        for i in range(0, x.shape[0], batch_size):
            xb = x[i:i + batch_size]
            pick = torch.randint(0, self.overlays.shape[0], (xb.shape[0], n_o), generator=gen)
            mixed = (xb[:, None] + self.alpha * self.overlays[pick]).clamp(lo, hi).flatten(0, 1)
            p = self.clf.probs(mixed, batch_size=4096).cpu().reshape(xb.shape[0], n_o, -1)
            out.append(-(p * p.clamp_min(1e-12).log()).sum(-1).mean(1))
        return torch.cat(out) if out else torch.empty(0)

    def fit(self, x_clean: torch.Tensor) -> Strip:
        """Set the threshold at the frr-quantile of clean inputs' entropies."""
        self.clean_entropy = self.entropy(x_clean)
        self.threshold = float(self.clean_entropy.quantile(self.frr)) if self.frr > 0 else \
            float(self.clean_entropy.min()) - 1e-12
        return self

    def flag(self, x: torch.Tensor) -> torch.Tensor:
        """True where an input looks triggered (entropy below the threshold)."""
        if self.threshold is None:
            raise ConfigError("STRIP: call fit(x_clean) before flag()")
        return self.entropy(x) < self.threshold

    def summary(self) -> dict[str, Any]:
        return {"method": "strip", "threshold": self.threshold, "frr": self.frr, "n_overlays": self.n_overlays,
                "clean_entropy_mean": None if self.clean_entropy is None else float(self.clean_entropy.mean())}
