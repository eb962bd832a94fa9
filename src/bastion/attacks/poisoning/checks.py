"""Validation and index selection shared by the poisoning attacks."""

from __future__ import annotations

import torch

from bastion.core import ConfigError, check_seed
from bastion.data.dataset import Dataset


def check_fraction(fraction: float, name: str = "fraction") -> float:
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 <= float(fraction) <= 1.0:
        raise ConfigError(f"{name} must lie in [0, 1] (the share of the training set to poison), got {fraction!r}")
    return float(fraction)


def check_class(label: int | None, data: Dataset, name: str = "target") -> int:
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < data.num_classes:
        raise ConfigError(f"{name} class must be an integer label in [0, {data.num_classes - 1}] "
                          f"(the data set has {data.num_classes} classes), got {label!r}")
    return int(label)


def count_for(fraction: float, n: int) -> int:
    """Poisons for a fraction of a data set of n examples (rounded to nearest)."""
    return round(check_fraction(fraction) * n)


def choose(candidates: torch.Tensor, k: int, seed: int, what: str) -> torch.Tensor:
    """k distinct indices drawn (seeded) from `candidates`, sorted."""
    check_seed(seed)
    if k > candidates.numel():
        raise ConfigError(f"cannot poison {k} examples: only {candidates.numel()} {what} are available; "
                          "lower the fraction")
    gen = torch.Generator().manual_seed(seed)
    pick = candidates[torch.randperm(candidates.numel(), generator=gen)[:k]]
    return pick.sort().values


def replaced(data: Dataset, x: torch.Tensor | None = None, y: torch.Tensor | None = None) -> Dataset:
    """A copy of `data` with new inputs and/or labels."""
    return Dataset(data.x.clone() if x is None else x, data.y.clone() if y is None else y, data.num_classes,
                   list(data.class_names), data.name, data.split)
