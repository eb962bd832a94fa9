"""Consensus of an ensemble's members' prediction vectors.

`probs` is [M, N, C] (members, examples, classes) of probability vectors. Every method
returns an [N, C] distribution, whose argmax is the ensemble's label:

- `plurality`: the share of members voting for each class (ties broken by the mean
  probability);
- `soft`: the mean probability vector (soft vote);
- `weighted-plurality` / `weighted-soft`: the same with per-member weights (e.g. each
  member's validation accuracy), normalised to sum to 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from bastion.core import ConfigError, require

METHODS = ("plurality", "soft", "weighted-plurality", "weighted-soft")
TIE_BREAK = 1e-4


def check_method(method: str, weights: Sequence[float] | None, m: int | None = None) -> None:
    if method not in METHODS:
        raise ConfigError(f"unknown consensus {method!r}; valid: {', '.join(METHODS)}")
    if method.startswith("weighted"):
        require(weights is not None, f"consensus {method} needs one weight per member")
    if weights is not None:
        w = list(weights)
        require(all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in w)
                and sum(w) > 0, f"ensemble weights must be non-negative numbers, not all 0, got {w}")
        if m is not None:
            require(len(w) == m, f"{len(w)} ensemble weights for {m} members")


def votes(probs: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """[N, C] (weighted) share of members whose label is each class."""
    m, _, c = probs.shape
    onehot = torch.nn.functional.one_hot(probs.argmax(-1), c).to(probs.dtype)  # [M, N, C]
    w = (torch.full((m,), 1.0 / m, dtype=probs.dtype, device=probs.device) if weights is None
         else weights.to(probs) / weights.sum())
    return torch.einsum("m,mnc->nc", w, onehot)


def combine(probs: torch.Tensor, method: str = "soft", weights: Sequence[float] | torch.Tensor | None = None
            ) -> torch.Tensor:
    """The consensus distribution [N, C] of member probabilities [M, N, C]."""
    wl = None if weights is None else [float(v) for v in weights]
    check_method(method, wl, int(probs.shape[0]))
    w = None if wl is None or not method.startswith("weighted") else torch.tensor(wl)
    if method in ("soft", "weighted-soft"):
        if w is None:
            return probs.mean(0)
        w = w.to(probs) / w.sum()
        return torch.einsum("m,mnc->nc", w, probs)
    v = votes(probs, w)
    mean = probs.mean(0)
    out = v + TIE_BREAK * mean
    return out / out.sum(-1, keepdim=True)
