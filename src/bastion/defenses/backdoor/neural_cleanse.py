"""Neural Cleanse (Wang et al. 2019): reverse-engineer, for every class k, the smallest
trigger (mask m_k, pattern p_k) that sends clean inputs to k,

    min_{m,p}  CE(f((1 - m) * x + m * p), k) + lambda_k * |m|_1,

with m = tanh(.)/2 + 1/2 and p = tanh(.)/2 + 1/2 (so both stay in [0, 1]), Adam, and the
paper's cost schedule: lambda_k starts at init_cost and, once per epoch of mini-batches,
is multiplied by 1.5 after `patience` epochs in which the trigger reaches the attack
success threshold (0.99) and divided by 1.5^1.5 after `patience` epochs below it. The
best (smallest-L1) mask that reaches the threshold is kept. A backdoor target needs a
much smaller trigger than the other classes: the MAD anomaly index of the L1 norms
(|l - median| / (1.4826 MAD)) above 2, on the small side, flags it.

All classes are optimised in one batched run: the K masks and patterns are stacked and
every mini-batch of clean inputs is stamped with all K triggers in one forward pass.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from bastion.core import Classifier, ConfigError, check_number, check_seed
from bastion.metrics.poisoning import anomaly_index
from bastion.progress import task


@dataclass(frozen=True)
class NeuralCleanseConfig:
    """Neural Cleanse settings (defaults: Wang et al.'s released code, shortened epochs).

    Attributes:
        epochs: passes of `steps_per_epoch` mini-batches (the cost schedule runs per epoch).
        steps_per_epoch: mini-batches per epoch.
        batch_size: clean inputs per mini-batch (each stamped with all K triggers).
        lr: Adam learning rate (betas 0.5, 0.9 as in the paper's code).
        init_cost: the starting L1 weight lambda.
        cost_multiplier: lambda *= m when the trigger works, /= m^1.5 when it does not.
        patience: epochs of success (or failure) before lambda changes.
        early_stop_patience: stop a class after this many epochs without a smaller mask
            (once its cost is set); all classes stop when all have.
        success_threshold: attack success a reversed trigger must reach.
        anomaly_threshold: anomaly index above which a class is flagged (2, p ~ 0.05 under
            a normal model of the norms).
        classes: the classes to reverse (None = all).
        mask_init: 'small' (every mask starts near 0, so it grows only where the target
            needs it: fewer steps to a small trigger) or 'random' (uniform in tanh
            space, as in the paper's code).
        seed: seeds the initial masks and the mini-batch order.
    """

    epochs: int = 20
    steps_per_epoch: int = 10
    batch_size: int = 32
    lr: float = 0.1
    init_cost: float = 1e-3
    cost_multiplier: float = 1.5
    patience: int = 3
    early_stop_patience: int = 6
    success_threshold: float = 0.99
    anomaly_threshold: float = 2.0
    classes: tuple[int, ...] | None = None
    mask_init: str = "small"
    seed: int = 0

    def validate(self) -> None:
        check_number(self.epochs, "epochs", low=1, high=100_000, integer=True)
        check_number(self.steps_per_epoch, "steps_per_epoch", low=1, high=100_000, integer=True)
        check_number(self.batch_size, "batch_size", low=1, high=65_536, integer=True)
        check_number(self.lr, "lr", low=0.0, low_open=True)
        check_number(self.init_cost, "init_cost", low=0.0)
        check_number(self.cost_multiplier, "cost_multiplier", low=1.0, low_open=True)
        check_number(self.patience, "patience", low=1, high=100_000, integer=True)
        check_number(self.early_stop_patience, "early_stop_patience", low=1, high=100_000, integer=True)
        check_number(self.success_threshold, "success_threshold", low=0.0, high=1.0)
        check_number(self.anomaly_threshold, "anomaly_threshold", low=0.0)
        if self.mask_init not in ("small", "random"):
            raise ConfigError(f"mask_init must be 'small' or 'random', got {self.mask_init!r}")
        check_seed(self.seed)


@dataclass
class NeuralCleanseResult:
    """Reversed triggers and the anomaly analysis.

    masks [K, 1, H, W] and patterns [K, C, H, W] are the best triggers per class; l1 the
    masks' L1 norms; success their attack success on the clean inputs; anomaly the MAD
    index; flagged the classes with anomaly > threshold and a norm below the median.
    """

    classes: list[int]
    masks: torch.Tensor
    patterns: torch.Tensor
    l1: torch.Tensor
    success: torch.Tensor
    anomaly: torch.Tensor
    flagged: list[int]
    threshold: float
    wall_time: float = 0.0
    epochs_run: int = 0
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def suspected(self) -> int | None:
        """The class with the largest anomaly among those below the median norm (None if none flagged)."""
        if not self.flagged:
            return None
        return max(self.flagged, key=lambda k: float(self.anomaly[self.classes.index(k)]))

    @property
    def smallest(self) -> int:
        """The class whose reversed trigger has the smallest L1 norm (flagged or not)."""
        return self.classes[int(self.l1.argmin())]

    def trigger(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        i = self.classes.index(k)
        return self.masks[i], self.patterns[i]

    def summary(self) -> dict[str, Any]:
        return {"method": "neural-cleanse", "classes": self.classes, "l1": self.l1.tolist(),
                "success": self.success.tolist(), "anomaly": self.anomaly.tolist(), "flagged": self.flagged,
                "suspected_target": self.suspected, "smallest_trigger_class": self.smallest,
                "smallest_to_median": float(self.l1.min() / self.l1.double().quantile(0.5).clamp_min(1e-12)),
                "threshold": self.threshold,
                "wall_time_s": self.wall_time, "epochs_run": self.epochs_run, "config": self.config}


def stamp(x: torch.Tensor, mask: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
    """(1 - m) * x + m * p for a batch x [N, C, H, W] and one trigger."""
    return (1 - mask) * x + mask * pattern


def _squash(t: torch.Tensor) -> torch.Tensor:
    return torch.tanh(t) / (2 - 1e-7) + 0.5


def neural_cleanse(clf: Classifier, x: torch.Tensor, cfg: NeuralCleanseConfig = NeuralCleanseConfig(),
                   progress: bool | None = None) -> NeuralCleanseResult:
    """Reverse-engineer a trigger for every class from clean inputs x [N, C, H, W] (in the
    model's bounds; a few hundred suffice) and compute the anomaly index."""
    cfg.validate()
    n_cls = clf.num_classes if cfg.classes is None else len(cfg.classes)
    if n_cls < 3:
        raise ConfigError("the anomaly index needs at least 3 classes")
    start = time.perf_counter()
    classes, masks, patterns, success, epochs_run = reverse_triggers(clf, x, cfg, progress)
    l1 = masks.flatten(1).sum(1)
    anomaly = anomaly_index(l1)
    med = l1.double().quantile(0.5)
    flagged = [classes[i] for i in range(len(classes))
               if float(anomaly[i]) > cfg.anomaly_threshold and float(l1[i]) < med]
    cfg_d = asdict(cfg)
    cfg_d["classes"] = None if cfg.classes is None else list(cfg.classes)
    return NeuralCleanseResult(classes, masks, patterns, l1, success, anomaly, flagged,
                               cfg.anomaly_threshold, time.perf_counter() - start, epochs_run, cfg_d)


def reverse_triggers(clf: Classifier, x: torch.Tensor, cfg: NeuralCleanseConfig,
                     progress: bool | None = None) -> tuple[list[int], torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """The batched optimisation: (classes, masks, patterns, success, epochs run) for the
    configured classes (all by default), on the CPU."""
    cfg.validate()
    if x.dim() != 4:
        raise ConfigError(f"Neural Cleanse needs image inputs [N, C, H, W], got shape {tuple(x.shape)}")
    if tuple(x.shape[1:]) != tuple(clf.spec.shape):
        raise ConfigError(f"inputs have shape {tuple(x.shape[1:])}, the model expects {clf.spec.shape}")
    if x.shape[0] < 1:
        raise ConfigError("Neural Cleanse needs at least one clean input")
    classes = list(range(clf.num_classes)) if cfg.classes is None else [int(k) for k in cfg.classes]
    if not classes or any(not 0 <= k < clf.num_classes for k in classes):
        raise ConfigError(f"classes must lie in [0, {clf.num_classes - 1}], got {cfg.classes}")
    dev = clf.device
    lo, hi = clf.spec.bounds
    gen = torch.Generator().manual_seed(cfg.seed)
    k, (c, h, w) = len(classes), x.shape[1:]
    mask_init = torch.rand(k, 1, h, w, generator=gen) * 4 - 2
    if cfg.mask_init == "small":
        mask_init = mask_init * 0.25 - 2.0          # m ~ 0.02 everywhere
    mask_p = mask_init.to(dev).requires_grad_(True)
    pat_p = (torch.rand(k, c, h, w, generator=gen) * 4 - 2).to(dev).requires_grad_(True)
    opt = torch.optim.Adam([mask_p, pat_p], lr=cfg.lr, betas=(0.5, 0.9))
    labels = torch.tensor(classes, device=dev)
    cost = torch.full((k,), float(cfg.init_cost), device=dev)
    best_l1 = torch.full((k,), float("inf"), device=dev)
    best_mask = torch.zeros(k, 1, h, w, device=dev)
    best_pat = torch.zeros(k, c, h, w, device=dev)
    up = torch.zeros(k, dtype=torch.long, device=dev)
    down = torch.zeros(k, dtype=torch.long, device=dev)
    stale = torch.zeros(k, dtype=torch.long, device=dev)
    xs = x.to(dev)
    was = clf.training
    clf.eval()
    grads = [p.requires_grad for p in clf.parameters()]
    for p in clf.parameters():
        p.requires_grad_(False)
    epochs_run = 0
    try:
        with clf.fast_layout(), task("neural cleanse", cfg.epochs, progress) as bar:
            for _ in range(cfg.epochs):
                epochs_run += 1
                acc_sum = torch.zeros(k, device=dev)
                for _ in range(cfg.steps_per_epoch):
                    idx = torch.randint(0, xs.shape[0], (min(cfg.batch_size, xs.shape[0]),), generator=gen)
                    xb = xs[idx.to(dev)]
                    m, pt = _squash(mask_p), _squash(pat_p) * (hi - lo) + lo
                    adv = ((1 - m[:, None]) * xb[None] + m[:, None] * pt[:, None]).reshape(-1, c, h, w)
                    logits = clf(adv).reshape(k, xb.shape[0], -1)
                    ce = F.cross_entropy(logits.transpose(1, 2), labels[:, None].expand(k, xb.shape[0]),
                                         reduction="none").mean(1)
                    l1 = m.flatten(1).sum(1)
                    loss = (ce + cost * l1).sum()
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    acc_sum += (logits.argmax(-1) == labels[:, None]).float().mean(1).detach()
                acc = acc_sum / cfg.steps_per_epoch
                with torch.no_grad():
                    m, pt = _squash(mask_p), _squash(pat_p) * (hi - lo) + lo
                    l1 = m.flatten(1).sum(1)
                    ok = acc >= cfg.success_threshold
                    better = ok & (l1 < best_l1)
                    best_l1 = torch.where(better, l1, best_l1)
                    best_mask[better], best_pat[better] = m[better], pt[better]
                    stale = torch.where(better, torch.zeros_like(stale), stale + 1)
                    up = torch.where(ok, up + 1, torch.zeros_like(up))
                    down = torch.where(ok, torch.zeros_like(down), down + 1)
                    raise_ = up >= cfg.patience
                    lower = down >= cfg.patience
                    cost = torch.where(raise_, cost * cfg.cost_multiplier, cost)
                    cost = torch.where(lower, cost / cfg.cost_multiplier ** 1.5, cost)
                    up[raise_] = 0
                    down[lower] = 0
                bar.advance(1)
                if bool((torch.isfinite(best_l1) & (stale >= cfg.early_stop_patience)).all()):
                    break
    finally:
        for p, g in zip(clf.parameters(), grads):
            p.requires_grad_(g)
        clf.train(was)
    with torch.no_grad():
        never = ~torch.isfinite(best_l1)
        m, pt = _squash(mask_p), _squash(pat_p) * (hi - lo) + lo
        best_mask[never], best_pat[never] = m[never], pt[never]
        success = torch.stack([_success(clf, xs, best_mask[i], best_pat[i], classes[i]) for i in range(k)])
    return classes, best_mask.cpu(), best_pat.cpu(), success.cpu(), epochs_run


def _success(clf: Classifier, x: torch.Tensor, mask: torch.Tensor, pattern: torch.Tensor, k: int) -> torch.Tensor:
    pred = clf.predict(stamp(x, mask, pattern))
    return (pred == k).float().mean()
