"""BadNets (Gu, Dolan-Gavitt & Garg 2017): stamp a trigger (one bright pixel or a small
pattern at a chosen position) on a fraction p of the training images and relabel them,
all-to-one (every poison -> the target class; poisons are drawn from the other classes)
or all-to-all (class c -> c + 1 mod K). A model trained on the result behaves normally on
clean inputs and predicts the attacker's label whenever the trigger is present."""

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
from bastion.attacks.poisoning.trigger import Trigger
from bastion.core import ConfigError
from bastion.data.dataset import Dataset

MODES = ("all-to-one", "all-to-all")


def backdoor_labels(y: torch.Tensor, num_classes: int, mode: str, target: int | None) -> torch.Tensor:
    """The labels a backdoored model should predict for triggered inputs of true class y."""
    if mode == "all-to-all":
        return (y + 1) % num_classes
    return torch.full_like(y, int(target))  # type: ignore[arg-type]


def badnets(data: Dataset, fraction: float, target: int | None = 0, trigger: Trigger | None = None,
            mode: str = "all-to-one", seed: int = 0) -> PoisonResult:
    """Poison round(fraction * len(data)) training examples with `trigger` (default: a 3 x 3
    pattern in the bottom-right corner) and the backdoor label.

    Args:
        data: clean training images [N, C, H, W] in [0, 1].
        fraction: share p of the training set to poison, in [0, 1].
        target: target class for all-to-one (ignored for all-to-all).
        mode: 'all-to-one' or 'all-to-all' (c -> c + 1).
        seed: seeds the choice of poisoned examples.
    """
    check_fraction(fraction)
    if mode not in MODES:
        raise ConfigError(f"unknown BadNets mode {mode!r}; valid: {', '.join(MODES)}")
    trigger = trigger or Trigger()
    trigger.mask_pattern(tuple(data.input_shape))          # fits the image, or ConfigError
    if mode == "all-to-one":
        target = check_class(target, data, "target")
        cand, what = torch.nonzero(data.y != target).flatten(), f"examples outside target class {target}"
    else:
        target, cand, what = None, torch.arange(len(data)), "examples"
    idx = choose(cand, count_for(fraction, len(data)), seed, what)
    x, y = data.x.clone(), data.y.clone()
    old = y[idx].clone()
    if idx.numel():
        x[idx] = trigger.apply(x[idx])
        y[idx] = backdoor_labels(old, data.num_classes, mode, target)
    rec = PoisonRecord("badnets", idx, old, y[idx].clone(), target=target, trigger=trigger,
                       params={"fraction": fraction, "mode": mode, "target": target, "seed": seed,
                               "trigger": trigger.to_dict()})
    return PoisonResult(replaced(data, x, y), rec)
