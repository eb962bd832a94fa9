"""Denoised smoothing (Salman, Sun, Yang, Kapoor and Kolter, 2020): certify an off-the-shelf
classifier without retraining it by smoothing base(denoiser(x)), with a small denoiser
trained on the data to undo the Gaussian noise.

The denoiser is a DnCNN-style residual network (Zhang et al. 2017): conv-ReLU layers that
predict the noise, subtracted from the input. It is trained with either objective of
Salman et al.: 'mse' (||D(x + e) - x||^2, needs no access to the classifier) or
'stability' (cross-entropy between f(D(x + e)) and f(x), through a frozen classifier;
the paper's better choice for certification), or 'mse' first then 'stability'
('mse+stability').
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bastion.core import Classifier, ConfigError, unknown_name
from bastion.data.dataset import Dataset
from bastion.defenses.certify.smoothing import check_sigma
from bastion.training.fit import minibatches

OBJECTIVES = ("mse", "stability", "mse+stability")


class Denoiser(nn.Module):
    """DnCNN-style residual denoiser for [C, H, W] or flat inputs: x - net(x)."""

    def __init__(self, channels: int, width: int = 32, depth: int = 4, image: bool = True,
                 features: int | None = None) -> None:
        super().__init__()
        layers: list[nn.Module]
        if image:
            layers = [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU()]
            for _ in range(depth - 2):
                layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU()]
            layers.append(nn.Conv2d(width, channels, 3, padding=1))
        else:
            assert features is not None
            layers = [nn.Linear(features, 4 * width), nn.ReLU(), nn.Linear(4 * width, features)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.net(x)


class Denoised(Classifier):
    """base(denoiser(x)): the classifier to smooth (its own weights untouched)."""

    def __init__(self, base: Classifier, denoiser: Denoiser) -> None:
        if not isinstance(base, Classifier):
            raise ConfigError(f"Denoised wraps a bastion Classifier, got {type(base).__name__}")
        super().__init__(base, base.spec, base.num_classes, device=base.device,
                         name=f"denoised({base.name})", meta=dict(base.meta))
        self.normalize = nn.Identity()
        self.denoiser = denoiser.to(base.device)

    @property
    def device(self) -> torch.device:
        return self.module.device  # type: ignore[union-attr]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(self.denoiser(x))


@dataclass(frozen=True)
class DenoiserConfig:
    """Denoiser training (Salman et al. 2020 use Adam, 1e-3, noise at the certification
    sigma; the smaller defaults here suit small images).

    Attributes:
        sigma: the noise level to remove (certify with the same sigma).
        objective: 'mse', 'stability' or 'mse+stability' (half the epochs each).
        epochs, batch_size, lr, seed: the training loop.
        width, depth: DnCNN channels and conv layers.
    """

    sigma: float = 0.25
    objective: str = "stability"
    epochs: int = 3
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0
    width: int = 32
    depth: int = 4

    def validate(self) -> None:
        check_sigma(self.sigma)
        if self.objective not in OBJECTIVES:
            raise unknown_name("denoiser objective", str(self.objective), OBJECTIVES)
        for name in ("epochs", "batch_size", "width", "depth"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"denoiser: {name} must be an integer >= 1, got {v!r}")
        if self.depth < 2:
            raise ConfigError(f"denoiser: depth must be >= 2, got {self.depth}")
        if not self.lr > 0:
            raise ConfigError(f"denoiser: lr must be > 0, got {self.lr}")


def train_denoiser(base: Classifier, train: Dataset, cfg: DenoiserConfig = DenoiserConfig()
                   ) -> tuple[Denoised, dict[str, Any]]:
    """Train a denoiser in front of the frozen `base`; returns base(denoiser(.)) and a record
    (objective, per-epoch loss, wall time)."""
    cfg.validate()
    if tuple(train.input_shape) != base.spec.shape:
        raise ConfigError(f"data shape {train.input_shape} does not match the model's {base.spec.shape}")
    dev = base.device
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    shape = base.spec.shape
    image = len(shape) == 3
    den = Denoiser(shape[0], cfg.width, cfg.depth, image=image,
                   features=None if image else int(torch.tensor(shape).prod())).to(dev)
    opt = torch.optim.Adam(den.parameters(), lr=cfg.lr)
    for p in base.parameters():
        p.requires_grad_(False)
    base.eval()
    x, _y = train.x.to(dev), train.y.to(dev)
    history = []
    start = time.perf_counter()
    try:
        for epoch in range(cfg.epochs):
            obj = cfg.objective if cfg.objective != "mse+stability" else \
                ("mse" if epoch < max(1, cfg.epochs // 2) else "stability")
            total = 0.0
            for idx in minibatches(len(train), cfg.batch_size, gen):
                xb = x[idx.to(dev)]
                noisy = xb + cfg.sigma * torch.randn(xb.shape, generator=gen).to(dev)
                out = den(noisy)
                if obj == "mse":
                    loss = F.mse_loss(out, xb)
                else:
                    with torch.no_grad():
                        target = base(xb).argmax(-1)
                    loss = F.cross_entropy(base(out), target)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * idx.numel()
            history.append({"epoch": epoch + 1, "objective": obj, "loss": total / len(train)})
    finally:
        for p in base.parameters():
            p.requires_grad_(True)
    den.eval()
    record = {"name": "denoiser", **asdict(cfg), "history": history,
              "wall_time_s": time.perf_counter() - start}
    model = Denoised(base, den)
    model.meta["denoiser"] = record
    return model, record
