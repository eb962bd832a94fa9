"""Adversarial training: PGD (Madry et al., 2018), fast FGSM with random start (Wong et al.,
2020) and TRADES (Zhang et al., 2019).

Each minibatch is handled in two phases. The inner maximisation runs with the model in
eval mode (batch-norm statistics frozen, dropout off) and computes gradients with respect
to the input only (`torch.autograd.grad`), never weight gradients; the outer minimisation
switches back to train mode and takes one optimiser step on the adversarial loss. The PGD
inner loop is the project's own attack step (`bastion.attacks.evasion.fastpath.pgd_step`,
the step `bastion.attacks.evasion.PGD` runs), so training and evaluation use the same
arithmetic. Everything stays on the model's device.

Shared hyper-parameters (epochs, batch size, optimiser, schedule, seed, progress) come
from `bastion.training.TrainConfig`, exactly as for `fit`. The defense is recorded in
`clf.meta["defense"]`, which `bastion.models.save_classifier` writes into the checkpoint
metadata.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Union

import torch
import torch.nn.functional as F

from bastion.attacks.evasion.fastpath import pgd_step
from bastion.attacks.evasion.pgd import random_start
from bastion.core import Classifier, ConfigError, seed_everything
from bastion.data.dataset import Dataset
from bastion.progress import task
from bastion.training.fit import TrainConfig, check_finite_loss, make_optimizer, minibatches

NORMS = ("linf", "l2")


def _check_eps(name: str, eps: float, norm: str) -> None:
    if norm not in NORMS:
        raise ConfigError(f"{name}: norm {norm!r} not supported; valid: {', '.join(NORMS)}")
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps >= 0):
        raise ConfigError(f"{name}: eps must be a finite number >= 0, got {eps}")


def _check_ramp(name: str, ramp: int) -> None:
    if ramp < 0:
        raise ConfigError(f"{name}: eps_ramp_epochs must be >= 0, got {ramp}")


@dataclass(frozen=True)
class PGDTraining:
    """PGD adversarial training (Madry et al., 2018): minimise the loss at the worst point
    PGD finds in the eps-ball around each training input.

    Attributes:
        eps: perturbation budget in input units (Madry et al. MNIST: Linf 0.3).
        steps: PGD steps per minibatch (Madry et al. MNIST: 40; 7-10 is the common cheaper
            choice and reaches most of the robustness).
        step_size: step length; None = 2.5 * eps / steps (the Madry-lab rule, which lets
            the walk cross the ball 2.5 times at any step count; Madry et al.'s MNIST run
            used 0.01 with 40 steps).
        random_start: start from a uniform point of the ball (Madry et al.: yes).
        norm: 'linf' or 'l2'.
        clean_fraction: share of each minibatch kept clean (Kurakin et al., 2017's mixed
            batches; 0 = every example adversarial, as in Madry et al.). Costs no extra pass.
        eps_ramp_epochs: grow eps linearly from 0 to `eps` over this many epochs (0 = off);
            helps small data sets, where full-budget training from scratch can stall.
    """

    eps: float = 0.3
    steps: int = 40
    step_size: float | None = None
    random_start: bool = True
    norm: str = "linf"
    clean_fraction: float = 0.0
    eps_ramp_epochs: int = 0

    name = "pgd-at"

    def validate(self) -> None:
        _check_eps(self.name, self.eps, self.norm)
        if self.steps < 1:
            raise ConfigError(f"{self.name}: steps must be >= 1, got {self.steps}")
        if self.step_size is not None and not self.step_size > 0:
            raise ConfigError(f"{self.name}: step_size must be positive, got {self.step_size}")
        if not 0.0 <= self.clean_fraction < 1.0:
            raise ConfigError(f"{self.name}: clean_fraction must lie in [0, 1), got "
                              f"{self.clean_fraction}")
        _check_ramp(self.name, self.eps_ramp_epochs)

    def alpha(self, eps: float) -> float:
        return self.step_size * eps / self.eps if self.step_size is not None and self.eps > 0 \
            else 2.5 * eps / self.steps

    @property
    def passes(self) -> int:
        """Forward+backward passes per minibatch (attack steps + the update)."""
        return self.steps + 1


@dataclass(frozen=True)
class FastTraining:
    """Fast adversarial training (Wong, Rice and Kolter, 2020, "Fast is better than free"):
    one FGSM step of size alpha from a uniform random start in the Linf ball, projected
    back onto it.

    Attributes:
        eps: Linf budget (their MNIST: 0.3).
        alpha: step size; None = 1.25 * eps (the paper's choice; larger alphas lead to
            catastrophic overfitting).
        clean_fraction, eps_ramp_epochs: as for `PGDTraining`.
    """

    eps: float = 0.3
    alpha: float | None = None
    clean_fraction: float = 0.0
    eps_ramp_epochs: int = 0

    name = "fast-at"
    norm = "linf"

    def validate(self) -> None:
        _check_eps(self.name, self.eps, "linf")
        if self.alpha is not None and not self.alpha > 0:
            raise ConfigError(f"{self.name}: alpha must be positive, got {self.alpha}")
        if not 0.0 <= self.clean_fraction < 1.0:
            raise ConfigError(f"{self.name}: clean_fraction must lie in [0, 1), got "
                              f"{self.clean_fraction}")
        _check_ramp(self.name, self.eps_ramp_epochs)

    def step(self, eps: float) -> float:
        return self.alpha * eps / self.eps if self.alpha is not None and self.eps > 0 else 1.25 * eps

    @property
    def passes(self) -> int:
        return 2


@dataclass(frozen=True)
class TRADES:
    """TRADES (Zhang et al., 2019): minimise CE(f(x), y) + beta * KL(f(x) || f(x')), where
    x' maximises the KL term inside the Linf ball (PGD on the KL, started at
    x + 0.001 * N(0, 1)).

    Attributes:
        beta: weight of the robustness term (the paper's headline setting: 6; larger trades
            clean accuracy for robustness).
        eps, steps, step_size: inner maximisation (the paper's MNIST: 0.3, 40, 0.01).
        eps_ramp_epochs: as for `PGDTraining`.
    """

    beta: float = 6.0
    eps: float = 0.3
    steps: int = 40
    step_size: float = 0.01
    eps_ramp_epochs: int = 0

    name = "trades"
    norm = "linf"

    def validate(self) -> None:
        _check_eps(self.name, self.eps, "linf")
        if self.steps < 1:
            raise ConfigError(f"{self.name}: steps must be >= 1, got {self.steps}")
        if not self.step_size > 0:
            raise ConfigError(f"{self.name}: step_size must be positive, got {self.step_size}")
        if not (math.isfinite(self.beta) and self.beta >= 0):
            raise ConfigError(f"{self.name}: beta must be a finite number >= 0, got {self.beta}")
        _check_ramp(self.name, self.eps_ramp_epochs)

    @property
    def passes(self) -> int:
        return self.steps + 2  # attack steps, the clean forward of the target, the update


Defense = Union[PGDTraining, FastTraining, TRADES]
DEFENSES: dict[str, type] = {"pgd-at": PGDTraining, "fast-at": FastTraining, "trades": TRADES}


@dataclass
class AdvTrainResult:
    """Per-epoch history (loss, adversarial train accuracy, eps used, clean test accuracy),
    final accuracies, wall time, and the defense record stored in the checkpoint."""

    history: list[dict[str, float]] = field(default_factory=list)
    test_accuracy: float | None = None
    train_accuracy: float | None = None
    wall_time: float = 0.0
    config: dict[str, Any] = field(default_factory=dict)
    defense: dict[str, Any] = field(default_factory=dict)

    def metadata(self) -> dict[str, Any]:
        """Keyword arguments for `save_classifier(path, clf, **result.metadata())`."""
        return {"defense": self.defense, "training": self.config, "history": self.history,
                "test_accuracy": self.test_accuracy, "train_accuracy": self.train_accuracy}


# --------------------------------------------------------------------------- inner attacks


def _box(x0: torch.Tensor, eps: float, lo: float, hi: float) -> tuple[torch.Tensor, torch.Tensor]:
    return (x0 - eps).clamp(lo, hi), (x0 + eps).clamp(lo, hi)


def pgd_examples(clf: Classifier, x0: torch.Tensor, y: torch.Tensor, eps: float, steps: int,
                 alpha: float, norm: str = "linf", rand_init: bool = True,
                 gen: torch.Generator | None = None) -> torch.Tensor:
    """Untargeted PGD examples for a training batch (the attack's own step function)."""
    lo, hi = clf.spec.bounds
    if eps == 0:
        return x0
    step = pgd_step(clf, norm, alpha, eps, lo, hi, targeted=False)
    x = random_start(x0, norm, eps, gen, lo, hi) if rand_init else x0.clone()
    box_lo, box_hi = _box(x0, eps, lo, hi) if norm == "linf" else (x0, x0)
    for _ in range(steps):
        (x,) = step(x, x0, y, box_lo, box_hi)
    return x.detach()


def fgsm_rs_examples(clf: Classifier, x0: torch.Tensor, y: torch.Tensor, eps: float,
                     alpha: float, gen: torch.Generator | None = None) -> torch.Tensor:
    """Wong et al. (2020): uniform start in the Linf ball, one signed step of `alpha`,
    projection back onto the ball and the bounds."""
    lo, hi = clf.spec.bounds
    if eps == 0:
        return x0
    box_lo, box_hi = _box(x0, eps, lo, hi)
    step = pgd_step(clf, "linf", alpha, eps, lo, hi, targeted=False)
    (x,) = step(random_start(x0, "linf", eps, gen, lo, hi), x0, y, box_lo, box_hi)
    return x.detach()


def trades_examples(clf: Classifier, x0: torch.Tensor, p_clean: torch.Tensor, eps: float,
                    steps: int, alpha: float, gen: torch.Generator | None = None) -> torch.Tensor:
    """TRADES inner maximisation: Linf PGD ascent on KL(p_clean || f(x')), from
    x0 + 0.001 * N(0, 1) (Zhang et al., 2019)."""
    lo, hi = clf.spec.bounds
    if eps == 0:
        return x0
    box_lo, box_hi = _box(x0, eps, lo, hi)
    noise = torch.randn(x0.shape, generator=gen, device=x0.device)
    x = torch.max(torch.min(x0 + 0.001 * noise, box_hi), box_lo)
    for _ in range(steps):
        x = x.detach().requires_grad_(True)
        kl = F.kl_div(F.log_softmax(clf(x), -1), p_clean, reduction="sum")
        (g,) = torch.autograd.grad(kl, x)
        x = torch.max(torch.min(x.detach() + alpha * g.sign(), box_hi), box_lo)
    return x.detach()


# --------------------------------------------------------------------------- the loop


def _ramped(eps: float, ramp_epochs: int, progress: float) -> float:
    """eps after `progress` epochs (fractional) of a linear ramp over `ramp_epochs`."""
    if ramp_epochs <= 0:
        return eps
    return eps * min(1.0, progress / ramp_epochs)


BatchLoss = Callable[[torch.Tensor, torch.Tensor, float], tuple[torch.Tensor, torch.Tensor]]


def _batch_loss(clf: Classifier, defense: Defense, gen: torch.Generator) -> BatchLoss:
    """(x, y, eps) -> (loss, logits): the attack in eval mode, then the training forward."""

    def pgd_like(x: torch.Tensor, y: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        n_clean = int(defense.clean_fraction * x.shape[0])  # type: ignore[union-attr]
        xa, ya = x[n_clean:], y[n_clean:]
        clf.eval()
        if isinstance(defense, PGDTraining):
            adv = pgd_examples(clf, xa, ya, eps, defense.steps, defense.alpha(eps), defense.norm,
                               defense.random_start, gen)
        else:
            adv = fgsm_rs_examples(clf, xa, ya, eps, defense.step(eps), gen)
        clf.train()
        batch = torch.cat([x[:n_clean], adv]) if n_clean else adv
        logits = clf(batch)
        return F.cross_entropy(logits, y), logits

    def trades(x: torch.Tensor, y: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        assert isinstance(defense, TRADES)
        clf.eval()
        with torch.no_grad():
            p_clean = clf(x).softmax(-1)
        adv = trades_examples(clf, x, p_clean, eps, defense.steps,
                              defense.step_size * (eps / defense.eps if defense.eps else 1.0), gen)
        clf.train()
        logits = clf(torch.cat([x, adv]))
        nat, rob = logits[: x.shape[0]], logits[x.shape[0]:]
        kl = F.kl_div(F.log_softmax(rob, -1), F.softmax(nat, -1), reduction="batchmean")
        return F.cross_entropy(nat, y) + defense.beta * kl, nat

    return trades if isinstance(defense, TRADES) else pgd_like


def check_data(clf: Classifier, train: Dataset) -> None:
    if tuple(train.input_shape) != clf.spec.shape:
        raise ConfigError(f"data shape {train.input_shape} does not match the model's {clf.spec.shape}")
    if train.num_classes > clf.num_classes:
        raise ConfigError(f"data has {train.num_classes} classes, the model {clf.num_classes}")


StepFn = Callable[[torch.Tensor, float], tuple[torch.Tensor, torch.Tensor, dict[str, float]]]


def train_loop(clf: Classifier, train: Dataset, test: Dataset | None, cfg: TrainConfig,
               step_fn: StepFn, label: str,
               on_epoch: Callable[[dict[str, float]], None] | None = None
               ) -> tuple[list[dict[str, float]], float]:
    """The minibatch loop of `fit` (seeded shuffling, optimiser, cosine schedule, progress,
    per-epoch clean test accuracy) around `step_fn(index, epochs_done) -> (loss, logits,
    info)`, which computes the training loss of one minibatch (logits: for the running
    training accuracy). Runs in the model's fastest memory layout. Returns (history, wall)."""
    gen = seed_everything(cfg.seed)
    dev = clf.device
    y = train.y.to(dev)
    opt = make_optimizer(clf.parameters(), cfg)
    steps = (len(train) + cfg.batch_size - 1) // cfg.batch_size
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * steps)
             if cfg.schedule == "cosine" else None)
    history: list[dict[str, float]] = []
    start = time.perf_counter()
    with clf.fast_layout(), task(f"{label} {clf.name}", cfg.epochs * steps, cfg.progress) as bar:
        for epoch in range(1, cfg.epochs + 1):
            total, correct, loss_sum = 0, 0, 0.0
            info: dict[str, float] = {}
            for b, idx in enumerate(minibatches(len(train), cfg.batch_size, gen)):
                idx = idx.to(dev)
                clf.train()
                loss, logits, info = step_fn(idx, epoch - 1 + (b + 1) / steps)
                check_finite_loss(loss, epoch, cfg.lr)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if sched is not None:
                    sched.step()
                loss_sum += float(loss.detach()) * idx.numel()
                correct += int((logits.detach().argmax(-1) == y[idx]).sum())
                total += idx.numel()
                bar.advance(1, info=f"epoch {epoch} loss {loss_sum / total:.3f}")
            clf.eval()
            row = {"epoch": epoch, **info, "loss": loss_sum / total, "train_accuracy": correct / total}
            if test is not None:
                row["test_accuracy"] = clf.accuracy(test.x, test.y)
            history.append(row)
            if on_epoch:
                on_epoch(row)
    clf.eval()
    return history, time.perf_counter() - start


def adversarial_fit(clf: Classifier, train: Dataset, test: Dataset | None = None,
                    defense: Defense = PGDTraining(), cfg: TrainConfig = TrainConfig(),
                    on_epoch: Callable[[dict[str, float]], None] | None = None) -> AdvTrainResult:
    """Train `clf` in place with adversarial training (`defense`: `PGDTraining`,
    `FastTraining` or `TRADES`) and the loop settings of `cfg`. All inputs are validated
    before training starts. Records the defense in `clf.meta['defense']` (saved by
    `save_classifier`) and returns the per-epoch history; `train_accuracy` in the history
    is measured on the adversarial (training) batches."""
    if not isinstance(defense, (PGDTraining, FastTraining, TRADES)):
        raise ConfigError(f"unknown adversarial-training defense {defense!r}; valid: "
                          f"{', '.join(DEFENSES)}")
    defense.validate()
    cfg.validate()
    check_data(clf, train)
    if defense.eps > clf.spec.value_range and defense.norm == "linf":
        raise ConfigError(f"{defense.name}: eps {defense.eps} exceeds the input range "
                          f"{clf.spec.bounds}; give eps in input units (e.g. 0.3, not 76)")
    dev = clf.device
    attack_gen = torch.Generator(device=dev).manual_seed(cfg.seed + 1)
    x, y = train.x.to(dev), train.y.to(dev)
    batch_loss = _batch_loss(clf, defense, attack_gen)

    def step_fn(idx: torch.Tensor, done: float) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        eps = _ramped(defense.eps, defense.eps_ramp_epochs, done)
        loss, logits = batch_loss(x[idx], y[idx], eps)
        return loss, logits, {"eps": eps}

    record = {"name": defense.name, **asdict(defense)}
    history, wall = train_loop(clf, train, test, cfg, step_fn, defense.name, on_epoch)
    return finish_training(clf, train, test, cfg, record, history, wall)


def finish_training(clf: Classifier, train: Dataset, test: Dataset | None, cfg: TrainConfig,
                    record: dict[str, Any], history: list[dict[str, float]], wall: float) -> AdvTrainResult:
    """The result of a training-time defense's run: final clean accuracies, and the defense
    `record` (completed with epochs and wall time) stored in `clf.meta['defense']`."""
    result = AdvTrainResult(history=history, config=asdict(cfg), defense=record, wall_time=wall)
    result.train_accuracy = clf.accuracy(train.x, train.y)
    result.test_accuracy = clf.accuracy(test.x, test.y) if test is not None else None
    record.update(epochs=len(history), wall_time_s=wall)
    clf.meta["defense"] = record
    return result
