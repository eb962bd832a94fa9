"""Dirty-label poisoning by label flipping: a fraction p of the training set gets a wrong
label, either source -> target (only examples of the source class), all-to-one (any
non-target example -> target) or random (each flipped example gets a uniformly drawn
different class). The inputs are untouched."""

from __future__ import annotations

import torch

from bastion.attacks.poisoning.checks import (
    check_class,
    check_fraction,
    choose,
    count_for,
    replaced,
)
from bastion.attacks.poisoning.record import PoisonRecord, PoisonResult
from bastion.core import ConfigError
from bastion.data.dataset import Dataset

MODES = ("source-target", "all-to-one", "random")


def flip_labels(data: Dataset, fraction: float, mode: str = "source-target", source: int | None = None,
                target: int | None = None, seed: int = 0) -> PoisonResult:
    """Flip the labels of round(fraction * len(data)) examples.

    Args:
        data: the clean training set.
        fraction: share p of the whole training set to relabel, in [0, 1].
        mode: 'source-target' (needs source and target), 'all-to-one' (needs target) or 'random'.
        seed: seeds which examples are chosen (and the random labels).
    """
    check_fraction(fraction)
    if mode not in MODES:
        raise ConfigError(f"unknown label-flip mode {mode!r}; valid: {', '.join(MODES)}")
    k = count_for(fraction, len(data))
    y = data.y.clone()
    if mode == "source-target":
        if source is None or target is None:
            raise ConfigError("source-target label flipping needs both source and target classes")
        source, target = check_class(source, data, "source"), check_class(target, data, "target")
        if source == target:
            raise ConfigError(f"source and target classes must differ, both are {source}")
        cand, what = torch.nonzero(data.y == source).flatten(), f"examples of source class {source}"
    elif mode == "all-to-one":
        if target is None:
            raise ConfigError("all-to-one label flipping needs a target class")
        target = check_class(target, data, "target")
        cand, what = torch.nonzero(data.y != target).flatten(), f"examples outside target class {target}"
    else:
        if target is not None:
            check_class(target, data, "target")
        cand, what = torch.arange(len(data)), "examples"
    idx = choose(cand, k, seed, what)
    old = y[idx].clone()
    if mode == "random":
        gen = torch.Generator().manual_seed(seed + 1)
        shift = torch.randint(1, data.num_classes, (idx.numel(),), generator=gen)
        y[idx] = (old + shift) % data.num_classes
    else:
        y[idx] = int(target)  # type: ignore[arg-type]
    rec = PoisonRecord("label-flip", idx, old, y[idx].clone(), target=None if mode == "random" else target,
                       params={"fraction": fraction, "mode": mode, "source": source, "target": target, "seed": seed})
    return PoisonResult(replaced(data, y=y), rec)
