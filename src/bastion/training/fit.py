"""Standard (non-private) supervised training with seeding, progress, per-epoch test
accuracy and optional early stopping that restores the best weights."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from bastion.core import Classifier, ConfigError, check_number, check_seed, seed_everything
from bastion.data.dataset import Dataset
from bastion.progress import task

OPTIMIZERS = ("adam", "sgd")
MAX_EPOCHS = 10_000
MAX_BATCH_SIZE = 65_536


def check_finite_loss(loss: torch.Tensor, epoch: int, lr: float) -> None:
    """Stop training at the first non-finite loss, before it reaches the weights."""
    if not bool(torch.isfinite(loss)):
        raise DivergedError(f"training diverged: non-finite loss ({float(loss)}) at epoch "
                            f"{epoch}; lower the learning rate (now {lr:g}) or check "
                            "the data; nothing was saved")


class DivergedError(ConfigError):
    """Training produced a non-finite loss (learning rate too high, or bad data)."""
SCHEDULES = ("cosine", "constant")


@dataclass(frozen=True)
class TrainConfig:
    """Training hyper-parameters.

    Attributes:
        epochs: passes over the training set (5 reaches >= 97% for cnn7 on mnist-5k).
        batch_size: minibatch size.
        lr: learning rate (Adam default 1e-3; use ~0.05 with SGD).
        optimizer: 'adam' or 'sgd' (momentum 0.9).
        weight_decay: L2 penalty.
        seed: seeds initial shuffling and everything stochastic.
        patience: early stop after this many epochs without test-accuracy gain (None = off);
            the best weights are restored.
        schedule: learning-rate schedule, 'cosine' (anneal to 0 over all steps; steadies
            the final epochs) or 'constant'.
        progress: show a progress bar (None = only on an interactive terminal).
    """

    epochs: int = 5
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    seed: int = 0
    patience: int | None = None
    schedule: str = "cosine"
    progress: bool | None = None

    def validate(self) -> None:
        check_number(self.epochs, "epochs", low=1, high=MAX_EPOCHS, integer=True)
        check_number(self.batch_size, "batch_size", low=1, high=MAX_BATCH_SIZE, integer=True)
        check_number(self.lr, "lr", low=0.0, low_open=True)
        check_number(self.weight_decay, "weight_decay", low=0.0)
        check_seed(self.seed)
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"unknown schedule {self.schedule!r}; valid: {', '.join(SCHEDULES)}")
        if self.patience is not None and self.patience < 1:
            raise ConfigError(f"patience must be >= 1, got {self.patience}")


@dataclass
class TrainResult:
    history: list[dict[str, float]] = field(default_factory=list)
    test_accuracy: float | None = None
    train_accuracy: float | None = None
    best_epoch: int = 0
    wall_time: float = 0.0
    config: dict[str, Any] = field(default_factory=dict)


def minibatches(n: int, batch_size: int, gen: torch.Generator, shuffle: bool = True) -> Iterator[torch.Tensor]:
    order = torch.randperm(n, generator=gen) if shuffle else torch.arange(n)
    for i in range(0, n, batch_size):
        yield order[i:i + batch_size]


def make_optimizer(params: Any, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)


def fit(clf: Classifier, train: Dataset, test: Dataset | None = None, cfg: TrainConfig = TrainConfig(),
        on_epoch: Callable[[dict[str, float]], None] | None = None) -> TrainResult:
    """Train `clf` in place with cross-entropy. Returns per-epoch history
    (loss, train accuracy, test accuracy) and the final/best test accuracy."""
    cfg.validate()
    if tuple(train.input_shape) != clf.spec.shape:
        raise ConfigError(f"data shape {train.input_shape} does not match the model's {clf.spec.shape}")
    if train.num_classes > clf.num_classes:
        raise ConfigError(f"data has {train.num_classes} classes, the model {clf.num_classes}")
    gen = seed_everything(cfg.seed)
    dev = clf.device
    x, y = train.x.to(dev), train.y.to(dev)
    opt = make_optimizer(clf.parameters(), cfg)
    steps = (len(train) + cfg.batch_size - 1) // cfg.batch_size
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * steps)
             if cfg.schedule == "cosine" else None)
    result = TrainResult(config=asdict(cfg))
    best_acc, best_state, stale = -1.0, None, 0
    start = time.perf_counter()
    with task(f"train {clf.name}", cfg.epochs * steps, cfg.progress) as bar:
        for epoch in range(1, cfg.epochs + 1):
            clf.train()
            total, correct, loss_sum = 0, 0, 0.0
            for idx in minibatches(len(train), cfg.batch_size, gen):
                idx = idx.to(dev)
                logits = clf(x[idx])
                loss = F.cross_entropy(logits, y[idx])
                check_finite_loss(loss, epoch, cfg.lr)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if sched is not None:
                    sched.step()
                loss_sum += float(loss.detach()) * idx.numel()
                correct += int((logits.argmax(-1) == y[idx]).sum())
                total += idx.numel()
                bar.advance(1, info=f"epoch {epoch} loss {loss_sum / total:.3f}")
            clf.eval()
            row = {"epoch": epoch, "loss": loss_sum / total, "train_accuracy": correct / total}
            if test is not None:
                row["test_accuracy"] = clf.accuracy(test.x, test.y)
            result.history.append(row)
            if on_epoch:
                on_epoch(row)
            score = row.get("test_accuracy", row["train_accuracy"])
            if score > best_acc:
                best_acc, result.best_epoch, stale = score, epoch, 0
                if cfg.patience is not None:
                    best_state = copy.deepcopy(clf.state_dict())
            else:
                stale += 1
                if cfg.patience is not None and stale >= cfg.patience:
                    break
    if best_state is not None:
        clf.load_state_dict(best_state)
    clf.eval()
    result.wall_time = time.perf_counter() - start
    result.train_accuracy = clf.accuracy(train.x, train.y)
    result.test_accuracy = clf.accuracy(test.x, test.y) if test is not None else None
    return result
