"""Server-side aggregation rules for the federated simulation.

An aggregator maps the round's client updates (each a dict of parameter deltas
w_after - w_before plus the number of local examples) to one global delta. They are plain
callables, so robust rules for poisoning experiments or noisy rules for federated DP plug
in without touching the simulation.

- `fedavg`: example-weighted mean (McMahan et al., 2017).
- `mean`: unweighted mean.
- `median`: coordinate-wise median (Yin et al., 2018).
- `trimmed_mean(beta)`: coordinate-wise mean after dropping the beta fraction of largest
  and smallest values (Yin et al., 2018).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from bastion.core import ConfigError, unknown_name

Tensors = dict[str, torch.Tensor]


@dataclass
class ClientUpdate:
    """What a client uploads after local training.

    Attributes:
        client: client index; round: federated round.
        delta: parameter name -> w_after - w_before.
        num_examples: local examples used (FedAvg weight).
        lr: local learning rate; local_steps: local SGD steps taken.
        meta: free-form (loss, transforms applied, ...).
    """

    client: int
    round: int
    delta: Tensors
    num_examples: int
    lr: float
    local_steps: int
    meta: dict[str, Any] = field(default_factory=dict)


Aggregator = Callable[[Sequence[ClientUpdate]], Tensors]


def _stack(updates: Sequence[ClientUpdate], name: str) -> torch.Tensor:
    return torch.stack([u.delta[name] for u in updates])


def _check(updates: Sequence[ClientUpdate]) -> list[str]:
    if not updates:
        raise ConfigError("aggregation needs at least one client update")
    return list(updates[0].delta)


def fedavg(updates: Sequence[ClientUpdate]) -> Tensors:
    """Mean of the deltas weighted by each client's number of examples, accumulated update
    by update (no [clients, ...] stack: one pass over the deltas, no large allocation)."""
    names = _check(updates)
    total = float(sum(u.num_examples for u in updates))
    if total <= 0:
        raise ConfigError("fedavg needs at least one client update with examples")
    out = [torch.zeros_like(updates[0].delta[n]) for n in names]
    for u in updates:
        torch._foreach_add_(out, [u.delta[n].to(o.dtype) for n, o in zip(names, out, strict=True)],
                            alpha=u.num_examples / total)
    return dict(zip(names, out, strict=True))


def mean(updates: Sequence[ClientUpdate]) -> Tensors:
    names = _check(updates)
    return {n: _stack(updates, n).mean(0) for n in names}


def median(updates: Sequence[ClientUpdate]) -> Tensors:
    names = _check(updates)
    return {n: _stack(updates, n).median(0).values for n in names}


def trimmed_mean(beta: float = 0.1) -> Aggregator:
    """Coordinate-wise mean without the beta fraction of extremes at each end."""
    if not 0 <= beta < 0.5:
        raise ConfigError(f"trimmed-mean beta must be in [0, 0.5), got {beta}")

    def agg(updates: Sequence[ClientUpdate]) -> Tensors:
        names = _check(updates)
        k = int(beta * len(updates))
        out = {}
        for n in names:
            s = _stack(updates, n).sort(0).values
            out[n] = s[k: len(updates) - k].mean(0)
        return out
    return agg


AGGREGATORS: dict[str, Callable[..., Aggregator] | Aggregator] = {
    "fedavg": fedavg, "mean": mean, "median": median, "trimmed-mean": trimmed_mean,
}
# names whose registry entry is a factory called with get_aggregator's keyword arguments
# (robust.py and detect.py add theirs: krum, multi-krum, bulyan, norm-clip, fltrust, detector)
FACTORIES: set[str] = {"trimmed-mean"}


def get_aggregator(name: str, **kwargs: Any) -> Aggregator:
    """Aggregator by name ('fedavg', 'mean', 'median', 'trimmed-mean' with beta=, and the
    robust rules: 'krum' f=, 'multi-krum' f= m=, 'bulyan' f=, 'norm-clip' bound= noise_std=,
    'fltrust' model= root=, 'detector' threshold=)."""
    if name not in AGGREGATORS:
        raise unknown_name("aggregator", name, AGGREGATORS)
    if name in FACTORIES:
        try:
            return AGGREGATORS[name](**kwargs)  # type: ignore[call-arg,return-value]
        except TypeError as e:
            raise ConfigError(f"aggregator {name!r}: {e}") from None
    if kwargs:
        raise ConfigError(f"aggregator {name!r} takes no arguments, got {sorted(kwargs)}")
    return AGGREGATORS[name]  # type: ignore[return-value]
