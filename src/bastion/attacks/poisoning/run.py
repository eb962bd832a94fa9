"""Build a poisoning attack from plain settings (the CLI's and the audit's), apply it, and
write the result as an .npz (x, y, poisoned_index, metadata; plus the clean x_test /
y_test so `bastion train --data poisoned.npz` evaluates on clean data)."""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bastion.attacks.poisoning.badnets import badnets
from bastion.attacks.poisoning.checks import check_class, check_fraction
from bastion.attacks.poisoning.clean_label import clean_label
from bastion.attacks.poisoning.feature_collision import feature_collision
from bastion.attacks.poisoning.label_flip import flip_labels
from bastion.attacks.poisoning.record import PoisonResult
from bastion.attacks.poisoning.trigger import Trigger
from bastion.core import Classifier, ConfigError, unknown_name
from bastion.data.dataset import Dataset

ATTACKS = ("label-flip", "badnets", "clean-label", "feature-collision")
NEEDS_MODEL = ("clean-label", "feature-collision")


@dataclass(frozen=True)
class PoisonSettings:
    """Plain settings of one attack (see each attack for the meaning).

    attack: one of ATTACKS; fraction: share of the training set (feature collision:
    ignored, see n_poisons); target: target class (label-flip target, backdoor target,
    feature-collision base class); source: label-flip source class; mode: label-flip
    'source-target' | 'all-to-one' | 'random', BadNets 'all-to-one' | 'all-to-all';
    trigger_*: the trigger; eps, steps: clean-label PGD; target_index: the test input
    feature collision aims at; n_poisons, opacity: feature collision.
    """

    attack: str = "badnets"
    fraction: float = 0.05
    target: int | None = 0
    source: int | None = None
    mode: str | None = None
    trigger_kind: str = "pattern"
    trigger_size: int = 3
    trigger_position: str | tuple[int, int] = "bottom-right"
    eps: float = 0.3
    steps: int = 20
    target_index: int = 0
    n_poisons: int = 50
    opacity: float = 0.3
    seed: int = 0

    def trigger(self) -> Trigger:
        return Trigger(kind=self.trigger_kind, size=self.trigger_size, position=self.trigger_position)

    def validate(self, data: Dataset, test: Dataset | None = None) -> None:
        """All checks that need no model: ConfigError naming the constraint."""
        if self.attack not in ATTACKS:
            raise unknown_name("poisoning attack", self.attack, ATTACKS)
        check_fraction(self.fraction)
        if self.target is not None:
            check_class(self.target, data, "target")
        if self.source is not None:
            check_class(self.source, data, "source")
        if self.attack in ("badnets", "clean-label"):
            self.trigger().mask_pattern(tuple(data.input_shape))
        if self.attack == "feature-collision" and test is not None and not 0 <= self.target_index < len(test):
            raise ConfigError(f"target_index must lie in [0, {len(test) - 1}] (a test input), got {self.target_index}")


def apply_poison(train: Dataset, s: PoisonSettings, model: Classifier | None = None,
                 test: Dataset | None = None) -> PoisonResult:
    """Run the configured attack on `train` (clean-label and feature collision need the
    attacker's `model`; feature collision takes its target image from `test`)."""
    s.validate(train, test)
    if s.attack in NEEDS_MODEL and model is None:
        raise ConfigError(f"{s.attack} needs a model trained on clean data (the attacker's surrogate): pass --model")
    if s.attack == "label-flip":
        return flip_labels(train, s.fraction, mode=s.mode or "source-target", source=s.source, target=s.target,
                           seed=s.seed)
    if s.attack == "badnets":
        return badnets(train, s.fraction, target=s.target, trigger=s.trigger(), mode=s.mode or "all-to-one",
                       seed=s.seed)
    if s.attack == "clean-label":
        if s.target is None:
            raise ConfigError("clean-label needs a target class")
        return clean_label(train, model, s.fraction, target=s.target, trigger=s.trigger(), eps=s.eps,  # type: ignore[arg-type]
                           steps=s.steps, seed=s.seed)
    if test is None:
        raise ConfigError("feature collision needs the test split (its target image)")
    if s.target is None:
        raise ConfigError("feature collision needs a base class (--target)")
    res = feature_collision(train, model, test.x[s.target_index], base_class=s.target,  # type: ignore[arg-type]
                            n_poisons=s.n_poisons, opacity=s.opacity, seed=s.seed)
    res.record.extras["target_index"] = s.target_index
    res.record.extras["target_true_class"] = int(test.y[s.target_index])
    return res


def settings_dict(s: PoisonSettings) -> dict[str, Any]:
    d = asdict(s)
    if not isinstance(d["trigger_position"], str):
        d["trigger_position"] = list(d["trigger_position"])
    return d


def npz_bytes(res: PoisonResult, test: Dataset | None, metadata: dict[str, Any]) -> bytes:
    """The poisoned set as .npz bytes: x (float32), y, poisoned_index, class_names,
    metadata (a JSON string) and, when given, the clean x_test / y_test."""
    arrays: dict[str, np.ndarray] = {
        "x": res.data.x.numpy().astype(np.float32), "y": res.data.y.numpy().astype(np.int64),
        "poisoned_index": res.record.index.numpy().astype(np.int64),
        "class_names": np.array(res.data.class_names, dtype=str),
        "metadata": np.array(json.dumps({**metadata, "record": res.record.to_dict()}))}
    if test is not None:
        arrays["x_test"] = test.x.numpy().astype(np.float32)
        arrays["y_test"] = test.y.numpy().astype(np.int64)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def read_poison_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata and poisoned indices of a file written by `npz_bytes` (no pickles)."""
    with np.load(Path(path), allow_pickle=False) as z:
        meta = json.loads(str(z["metadata"])) if "metadata" in z.files else {}
        meta["poisoned_index"] = z["poisoned_index"].tolist() if "poisoned_index" in z.files else []
    return meta


def poisoned_mask(n: int, index: list[int] | torch.Tensor) -> torch.Tensor:
    m = torch.zeros(n, dtype=torch.bool)
    m[torch.as_tensor(index, dtype=torch.long)] = True
    return m
