"""Defensive distillation (Papernot, McDaniel, Wu, Jha and Swami, 2016).

1. Train the teacher on hard labels with its softmax at temperature T (logits / T).
2. Label the training set with the teacher's soft labels softmax(z_teacher(x) / T).
3. Train the student (same architecture in the paper) on those soft labels, again at T.
4. Deploy the student at T = 1: its raw logits. Trained at high T, its logits are about T
   times larger than a normally trained model's, so the softmax saturates and the loss
   gradient with respect to the input nearly vanishes at T = 1.

That vanishing gradient is gradient masking, not robustness: Carlini and Wagner (2016,
"Defensive distillation is not robust to adversarial examples") break it with attacks on
the logits (C&W, or any margin loss) or by dividing the logits by T again. Evaluate a
distilled model with logit-margin attacks (`cw`, `apgd` with the DLR loss, `autoattack`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from bastion.core import Classifier, ConfigError
from bastion.data.dataset import Dataset
from bastion.training.adversarial import AdvTrainResult, check_data, train_loop
from bastion.training.fit import TrainConfig


@dataclass(frozen=True)
class DistillationConfig:
    """Defensive distillation parameters.

    Attributes:
        temperature: softmax temperature T for the teacher's training, its soft labels and
            the student's training (Papernot et al. test 1-100 on MNIST; 100 gave the lowest
            attack success, so it is the default).
        train_teacher: train the teacher at T first (the paper's procedure). False uses the
            teacher as given (already trained) and only computes its soft labels at T.
        label_batch_size: batch size for computing the soft labels.

    Training at T divides the logits by T, so the last layers must grow T times larger to
    fit the labels: with Adam, raise the learning rate (1e-2 instead of 1e-3 trains
    cnn-small at T = 50 in a few epochs; at 1e-3 it barely moves).
    """

    temperature: float = 100.0
    train_teacher: bool = True
    label_batch_size: int = 512

    name = "distillation"

    def validate(self) -> None:
        t = self.temperature
        if not (isinstance(t, (int, float)) and math.isfinite(t) and t > 0):
            raise ConfigError(f"distillation: temperature must be a finite number > 0, got {t}; "
                              "the paper uses 1-100 (default 100)")
        if self.label_batch_size < 1:
            raise ConfigError(f"distillation: label_batch_size must be >= 1, got "
                              f"{self.label_batch_size}")


@dataclass
class DistillationResult(AdvTrainResult):
    """Teacher and student histories, accuracies (student at T = 1) and the defense record;
    `metadata()` describes the student."""

    teacher_history: list[dict[str, float]] = field(default_factory=list)
    teacher_test_accuracy: float | None = None


def fit_at_temperature(clf: Classifier, train: Dataset, test: Dataset | None, cfg: TrainConfig,
                       temperature: float, soft_labels: torch.Tensor | None = None,
                       on_epoch: Callable[[dict[str, float]], None] | None = None
                       ) -> tuple[list[dict[str, float]], float]:
    """Train `clf` with its softmax at `temperature`: cross-entropy of softmax(z / T)
    against the hard labels, or against `soft_labels` ([N, classes] probabilities)."""
    dev = clf.device
    x, y = train.x.to(dev), train.y.to(dev)
    soft = None if soft_labels is None else soft_labels.to(dev)

    def step_fn(idx: torch.Tensor, done: float) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        logits = clf(x[idx])
        scaled = logits / temperature
        if soft is None:
            loss = F.cross_entropy(scaled, y[idx])
        else:
            loss = -(soft[idx] * F.log_softmax(scaled, -1)).sum(-1).mean()
        return loss, logits, {}

    return train_loop(clf, train, test, cfg, step_fn, f"T={temperature:g}", on_epoch)


def soft_labels(teacher: Classifier, x: torch.Tensor, temperature: float,
                batch_size: int = 512) -> torch.Tensor:
    """softmax(z_teacher(x) / T), batched, without gradients."""
    return teacher.logits(x, batch_size).div(temperature).softmax(-1)


def defensive_distillation(teacher: Classifier, student: Classifier, train: Dataset,
                           test: Dataset | None = None,
                           cfg: DistillationConfig = DistillationConfig(),
                           train_cfg: TrainConfig = TrainConfig(),
                           on_epoch: Callable[[dict[str, float]], None] | None = None
                           ) -> DistillationResult:
    """Papernot et al. (2016): train `teacher` at temperature T (unless
    `cfg.train_teacher` is False), then `student` on the teacher's soft labels at T, both in
    place. The student is used at T = 1 (its logits as they are); its test accuracy is
    measured that way. The defense is recorded in `student.meta['defense']`."""
    cfg.validate()
    train_cfg.validate()
    check_data(teacher, train)
    check_data(student, train)
    if teacher.num_classes != student.num_classes:
        raise ConfigError(f"teacher has {teacher.num_classes} classes, student "
                          f"{student.num_classes}; they must match")
    if teacher is student:
        raise ConfigError("teacher and student must be two different models (build the "
                          "student as a fresh copy of the architecture)")
    T = float(cfg.temperature)
    result = DistillationResult(config=asdict(train_cfg))
    wall = 0.0
    if cfg.train_teacher:
        result.teacher_history, wall = fit_at_temperature(teacher, train, test, train_cfg, T)
    labels = soft_labels(teacher, train.x, T, cfg.label_batch_size)
    result.history, w = fit_at_temperature(student, train, test, train_cfg, T, labels, on_epoch)
    result.wall_time = wall + w
    result.teacher_test_accuracy = teacher.accuracy(test.x, test.y) if test is not None else None
    result.test_accuracy = student.accuracy(test.x, test.y) if test is not None else None
    result.train_accuracy = student.accuracy(train.x, train.y)
    result.defense = {"name": cfg.name, **asdict(cfg), "deploy_temperature": 1.0,
                      "epochs": len(result.history), "wall_time_s": result.wall_time}
    student.meta["defense"] = result.defense
    return result
