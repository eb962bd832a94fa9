"""Neural Cleanse's two mitigations (Wang et al. 2019), given a reversed trigger:

- unlearning: fine-tune on clean data of which a share (20%) is stamped with the reversed
  trigger while keeping the true labels, so the network stops associating the trigger
  with the target;
- neuron pruning: rank the penultimate-layer neurons by how much more the reversed
  trigger activates them than clean inputs do, and zero the top ones (their weights into
  the output layer) until the reversed trigger stops working or a cap is reached.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from bastion.attacks.poisoning.features import last_linear, penultimate_batched
from bastion.core import Classifier, ConfigError, check_number
from bastion.data.dataset import Dataset
from bastion.defenses.backdoor.neural_cleanse import stamp
from bastion.training.fit import SCHEDULES, TrainConfig, fit


@dataclass(frozen=True)
class UnlearnConfig:
    """Unlearning settings. stamp_fraction: share of the clean data stamped with the
    reversed trigger (Wang et al.: 20%); epochs, lr, batch_size, schedule: the
    fine-tuning (Adam at a constant learning rate). Wang et al. fine-tune for one epoch
    on 10% of the training set; the defaults (two epochs at 3e-4) are set for a defender
    with a few hundred clean images, where one epoch is only a dozen steps."""

    stamp_fraction: float = 0.2
    epochs: int = 2
    lr: float = 3e-4
    batch_size: int = 64
    schedule: str = "constant"
    seed: int = 0

    def validate(self) -> None:
        check_number(self.stamp_fraction, "stamp_fraction", low=0.0, high=1.0)
        check_number(self.epochs, "epochs", low=1, high=10_000, integer=True)
        check_number(self.lr, "lr", low=0.0, low_open=True)
        check_number(self.batch_size, "batch_size", low=1, high=65_536, integer=True)
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"unknown schedule {self.schedule!r}; valid: {', '.join(SCHEDULES)}")


def unlearn(clf: Classifier, clean: Dataset, mask: torch.Tensor, pattern: torch.Tensor,
            cfg: UnlearnConfig = UnlearnConfig()) -> dict[str, Any]:
    """Fine-tune `clf` in place on `clean` with a share stamped by the reversed trigger
    (true labels kept). Returns the training facts."""
    cfg.validate()
    gen = torch.Generator().manual_seed(cfg.seed)
    n = len(clean)
    idx = torch.randperm(n, generator=gen)[: round(cfg.stamp_fraction * n)]
    x = clean.x.clone()
    x[idx] = stamp(x[idx], mask.cpu(), pattern.cpu()).clamp(*clf.spec.bounds)
    ds = Dataset(x, clean.y.clone(), clean.num_classes, list(clean.class_names), clean.name, clean.split)
    res = fit(clf, ds, None, TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                                         schedule=cfg.schedule, seed=cfg.seed, progress=False))
    clf.eval()
    return {"stamped": int(idx.numel()), "epochs": cfg.epochs, "lr": cfg.lr, "schedule": cfg.schedule,
            "wall_time_s": res.wall_time}


def prune_neurons(clf: Classifier, x_clean: torch.Tensor, mask: torch.Tensor, pattern: torch.Tensor,
                  target: int, max_fraction: float = 0.3, stop_success: float = 0.1,
                  step_fraction: float = 0.01) -> dict[str, Any]:
    """Zero, in place, the penultimate neurons the reversed trigger excites most, in steps
    of `step_fraction`, until the reversed trigger's success on clean inputs falls below
    `stop_success` or `max_fraction` of the neurons are pruned. Needs a network whose last
    layer is an nn.Linear producing the logits."""
    check_number(max_fraction, "max_fraction", low=0.0, high=1.0)
    check_number(stop_success, "stop_success", low=0.0, high=1.0)
    check_number(step_fraction, "step_fraction", low=0.0, high=1.0, low_open=True)
    layer = last_linear(clf)
    if layer.out_features != clf.num_classes:
        raise ConfigError("neuron pruning needs the last nn.Linear to produce the logits")
    trig = stamp(x_clean, mask.cpu(), pattern.cpu()).clamp(*clf.spec.bounds)
    f_clean = penultimate_batched(clf, x_clean)
    f_trig = penultimate_batched(clf, trig)
    order = (f_trig.mean(0) - f_clean.mean(0)).argsort(descending=True)
    d = order.numel()
    w, b = layer.weight.detach().cpu(), layer.bias.detach().cpu() if layer.bias is not None else None
    keep = torch.ones(d)
    step = max(1, round(step_fraction * d))
    pruned, success = 0, float("nan")
    while True:
        logits = (f_trig * keep) @ w.T + (0 if b is None else b)
        success = float((logits.argmax(-1) == target).float().mean())
        if success < stop_success or pruned + step > int(max_fraction * d):
            break
        keep[order[pruned:pruned + step]] = 0
        pruned += step
    with torch.no_grad():
        layer.weight.mul_(keep.to(layer.weight.device)[None])
    return {"pruned": pruned, "neurons": d, "pruned_fraction": pruned / d, "reversed_trigger_success": success,
            "pruned_index": order[:pruned].tolist()}
