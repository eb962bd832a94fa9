"""PixelDP (Lecuyer, Atlidakis, Geambasu, Hsu and Jana, 2019): certified robustness from
differential privacy.

A noise layer makes the network's scores (epsilon, delta)-differentially private with
respect to small changes of the input: Gaussian noise for L2 attacks, Laplace noise for L1
attacks, placed directly after the image or after the first layer (a `Conv2d` or `Linear`).
The noise scale follows the mechanism's calibration for a construction bound L (the attack
size the guarantee is built for) and the sensitivity Delta of the pre-noise layers:

    Gaussian: sigma = sqrt(2 ln(1.25 / delta)) * Delta_{p,2} * L / epsilon   (epsilon <= 1)
    Laplace:  b     = Delta_{p,1} * L / epsilon                               (delta = 0)

Delta is 1 after the image. After a layer it is that layer's operator norm, kept <= 1 by
renormalising its weights after every optimiser step (`sensitivity='normalize'`: L1 column
norms for Laplace, the spectral bound sqrt(patches per input) * ||W||_2 for Gaussian) or by a
Parseval projection W <- (1 + beta) W - beta W W^T W followed by the same renormalisation
(`sensitivity='parseval'`, Cisse et al. 2017). Certification always uses the sensitivity
computed from the weights as they are, so a model whose weights drift never gets a larger
certificate than it deserves.

Prediction is the expected label histogram over Monte Carlo draws of the noise. Its entries
get one-sided Clopper-Pearson bounds at level eta / K (Bonferroni over the K labels). The
robustness test for attack size T: with epsilon_T the privacy level the fixed noise gives at
size T (epsilon * T / L under the construction sensitivity), the prediction is robust when

    lower(E[top label]) > e^{2 epsilon_T} * max_{j != top} upper(E[label j]) + (1 + e^{epsilon_T}) delta.

L_max is the largest T that passes (the largest certified attack size of the input).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bastion.attacks.evasion.adaptive import EOT
from bastion.core import Classifier, ConfigError, Normalize, unknown_name
from bastion.data.dataset import Dataset
from bastion.defenses.certify.smoothing import (
    ABSTAIN,
    check_count,
    lower_confidence_bound,
    noise_generator,
    upper_confidence_bound,
)
from bastion.training.fit import TrainConfig

if TYPE_CHECKING:
    from bastion.training.adversarial import AdvTrainResult

MECHANISMS = {"gaussian": "l2", "laplace": "l1"}
POSITIONS = ("image", "first-layer")
SENSITIVITY = ("normalize", "parseval")
PRE_NOISE_LAYERS = ("Conv2d", "Linear")


@dataclass(frozen=True)
class PixelDPConfig:
    """PixelDP settings (defaults: the seed paper's L2 setting on small images).

    Attributes:
        mechanism: 'gaussian' (L2 attacks) or 'laplace' (L1 attacks).
        position: 'image' (noise on the input) or 'first-layer' (after the first Conv2d or
            Linear layer; Lecuyer et al. found it the better trade-off for larger nets).
        epsilon, delta: the privacy level at the construction bound (Lecuyer et al.: 1.0,
            0.05; delta is ignored by the Laplace mechanism).
        construction_bound: L, the attack size (L2 or L1 norm in input units) the noise is
            calibrated for (Lecuyer et al. use 0.03 to 1.0 on images in [0, 1]).
        sensitivity: 'normalize' or 'parseval' (pre-noise weight control; first-layer only).
        parseval_beta: step of the Parseval projection (Cisse et al. 2017: 0.0003 to 0.001).
    """

    mechanism: str = "gaussian"
    position: str = "image"
    epsilon: float = 1.0
    delta: float = 0.05
    construction_bound: float = 0.1
    sensitivity: str = "normalize"
    parseval_beta: float = 0.001

    name = "pixeldp"

    def validate(self) -> None:
        if self.mechanism not in MECHANISMS:
            raise unknown_name("PixelDP mechanism", str(self.mechanism), tuple(MECHANISMS))
        if self.position not in POSITIONS:
            raise unknown_name("PixelDP noise position", str(self.position), POSITIONS)
        if self.sensitivity not in SENSITIVITY:
            raise unknown_name("PixelDP sensitivity control", str(self.sensitivity), SENSITIVITY)
        if not (math.isfinite(self.epsilon) and self.epsilon > 0):
            raise ConfigError(f"pixeldp: epsilon must be > 0, got {self.epsilon}")
        if self.mechanism == "gaussian":
            if self.epsilon > 1.0:
                raise ConfigError(f"pixeldp: the Gaussian mechanism needs epsilon <= 1, got {self.epsilon}")
            if not 0.0 < self.delta < 1.0:
                raise ConfigError(f"pixeldp: delta must lie in (0, 1), got {self.delta}")
        if not (math.isfinite(self.construction_bound) and self.construction_bound > 0):
            raise ConfigError(f"pixeldp: construction_bound (L) must be > 0, got {self.construction_bound}")
        if not 0.0 < self.parseval_beta < 0.5:
            raise ConfigError(f"pixeldp: parseval_beta must lie in (0, 0.5), got {self.parseval_beta}")

    @property
    def norm(self) -> str:
        return MECHANISMS[self.mechanism]

    @property
    def dp_delta(self) -> float:
        return self.delta if self.mechanism == "gaussian" else 0.0

    def noise_scale(self, sensitivity: float = 1.0) -> float:
        """Gaussian standard deviation or Laplace scale for the construction bound."""
        if self.mechanism == "gaussian":
            return math.sqrt(2 * math.log(1.25 / self.delta)) * sensitivity * self.construction_bound / self.epsilon
        return sensitivity * self.construction_bound / self.epsilon


# --------------------------------------------------------------------------- sensitivity


def layer_sensitivity(layer: nn.Module, norm: str, scale: float = 1.0) -> float:
    """Upper bound on the operator norm ||layer||_{p->q} (p = q = 2 for 'l2', 1 for 'l1') of
    the linear part of `layer`, times `scale` (the normalisation's 1/std in front of it)."""
    w = layer.weight.detach()
    if isinstance(layer, nn.Linear):
        s = (torch.linalg.matrix_norm(w, ord=2) if norm == "l2" else w.abs().sum(0).max())
    else:
        if layer.groups != 1:
            raise ConfigError("pixeldp: grouped convolutions before the noise are not supported")
        if norm == "l2":   # each input value falls in at most ceil(k/s) patches per axis
            kh, kw = w.shape[2:]
            sh, sw = layer.stride
            s = math.sqrt(math.ceil(kh / sh) * math.ceil(kw / sw)) * torch.linalg.matrix_norm(
                w.flatten(1), ord=2)
        else:              # an input value meets each weight of its channel at most once
            s = w.abs().sum(dim=(0, 2, 3)).max()
    return float(s) * scale


def _normalize_scale(norm_layer: nn.Module) -> float:
    return float((1.0 / norm_layer.std.abs()).max()) if isinstance(norm_layer, Normalize) else 1.0


class NoiseLayer(nn.Module):
    """Adds Gaussian (std `scale`) or Laplace (scale `scale`) noise, in training and at
    prediction alike (the noise is part of the PixelDP network)."""

    def __init__(self, mechanism: str, scale: float) -> None:
        super().__init__()
        self.mechanism, self.scale = mechanism, float(scale)
        self.generator: torch.Generator | None = None

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.mechanism == "gaussian":
            return z + self.scale * torch.randn(z.shape, generator=self.generator, device=z.device,
                                                dtype=z.dtype)
        u = torch.rand(z.shape, generator=self.generator, device=z.device, dtype=z.dtype) - 0.5
        return z - self.scale * u.sign() * torch.log1p(-2 * u.abs().clamp_max(0.5 - 1e-7))


def _chain(module: nn.Module) -> list[nn.Module]:
    from bastion.models.zoo import Net

    if isinstance(module, Net):
        return [*_chain(module.features), nn.Flatten(), *_chain(module.head)]
    if isinstance(module, nn.Sequential):
        return [m for c in module for m in _chain(c)]
    if isinstance(module, nn.Identity):
        return []
    return [module]


# --------------------------------------------------------------------------- the model


class PixelDPClassifier(Classifier):
    """A PixelDP network built from a classifier's architecture (its weights are the
    starting point; train it with `pixeldp_fit`).

    Args:
        model: the classifier whose network receives the noise layer. With
            position='first-layer' its module must be a zoo `Net` or an `nn.Sequential`
            whose first layer (after any Flatten) is a Conv2d or Linear.
        cfg: the PixelDP settings.
    """

    def __init__(self, model: Classifier, cfg: PixelDPConfig = PixelDPConfig()) -> None:
        if not isinstance(model, Classifier):
            raise ConfigError(f"PixelDP builds on a bastion Classifier, got {type(model).__name__}")
        cfg.validate()
        if cfg.position == "image":
            pre: list[nn.Module] = []
            post = [model.normalize, *_chain(model.module)] if not isinstance(model.normalize, nn.Identity) \
                else [model.module]
        else:
            chain = _chain(model.module)
            lead = 0
            while lead < len(chain) and isinstance(chain[lead], nn.Flatten):
                lead += 1
            first = chain[lead] if lead < len(chain) else None
            if not isinstance(model.module, (nn.Sequential,)) and not type(model.module).__name__ == "Net":
                raise ConfigError(f"pixeldp: cannot place noise after the first layer of a "
                                  f"{type(model.module).__name__}; the network must be a zoo model or an "
                                  f"nn.Sequential (or use position='image')")
            if not isinstance(first, (nn.Conv2d, nn.Linear)):
                got = type(first).__name__ if first is not None else "nothing"
                raise ConfigError(f"pixeldp: the layer before the noise must have a bounded sensitivity; got "
                                  f"{got}; supported pre-noise layers: {', '.join(PRE_NOISE_LAYERS)} "
                                  "(or use position='image')")
            pre = [model.normalize, *chain[:lead + 1]]
            post = chain[lead + 1:]
        noise = NoiseLayer(cfg.mechanism, cfg.noise_scale(1.0))
        net = nn.Sequential(nn.Sequential(*pre), noise, nn.Sequential(*post))
        super().__init__(net, model.spec, model.num_classes, device=model.device,
                         name=f"pixeldp({model.name})", meta=dict(model.meta))
        self.normalize = nn.Identity()  # the normalisation now lives inside the network
        self.cfg = cfg
        self.noise = noise
        self.eot_samples = 16  # noise draws per input of the attack surrogate
        object.__setattr__(self, "_base", model)  # shares its layers; not a second submodule
        self.to(model.device)
        self.bound_sensitivity()
        self.meta["certified"] = {"method": "pixeldp", **asdict(cfg), "noise_scale": noise.scale}

    @property
    def pre_noise(self) -> nn.Sequential:
        return self.module[0]  # type: ignore[index,return-value]

    def _pre_layer(self) -> nn.Module | None:
        layers = [m for m in self.pre_noise if isinstance(m, (nn.Conv2d, nn.Linear))]
        return layers[0] if layers else None

    def sensitivity(self) -> float:
        """Delta_{p,q} of the pre-noise layers as their weights are now (1 after the image)."""
        layer = self._pre_layer()
        if layer is None:
            return 1.0
        return layer_sensitivity(layer, self.cfg.norm, _normalize_scale(self.pre_noise[0]))

    @torch.no_grad()
    def bound_sensitivity(self) -> None:
        """Bring the pre-noise layer's sensitivity to <= 1 (Parseval step, then rescaling)."""
        layer = self._pre_layer()
        if layer is None:
            return
        w = layer.weight
        if self.cfg.sensitivity == "parseval" and self.cfg.norm == "l2":
            m = w.flatten(1)
            b = self.cfg.parseval_beta
            w.copy_(((1 + b) * m - b * m @ m.T @ m).view_as(w))
        s = self.sensitivity()
        if s > 1.0:
            w.div_(s * (1 + 1e-6))

    def adaptive(self, eot_samples: int | None = None) -> Classifier:
        """Attack surrogate: EOT over the noise layer (mean softmax)."""
        return EOT(self, samples=eot_samples or self.eot_samples, reduce="probs")

    # ------------------------------------------------------------------ certification
    def label_counts(self, x: torch.Tensor, draws: int, seed: int = 0, offset: int = 0,
                     batch_size: int = 1000) -> torch.Tensor:
        """Label histogram [N, K] over `draws` noise draws per input (on the device). Each
        input's noise comes from its own generator (seed, offset + index)."""
        check_count(draws, "draws")
        dev = self.device
        x = x.to(dev)
        n, k = x.shape[0], self.num_classes
        counts = torch.zeros(n * k, dtype=torch.int64, device=dev)
        per = max(1, min(draws, batch_size))
        self.eval()
        with torch.inference_mode():
            for i in range(n):
                self.noise.generator = noise_generator(dev, seed, offset + i, 3)
                done = 0
                while done < draws:
                    m = min(per, draws - done)
                    pred = self.module(x[i:i + 1].expand((m, *x.shape[1:]))).argmax(-1)
                    counts.index_add_(0, i * k + pred, torch.ones_like(pred))
                    done += m
        self.noise.generator = None
        return counts.view(n, k)

    def certify(self, x: torch.Tensor, draws: int = 300, eta: float = 0.05, seed: int = 0,
                offset: int = 0, batch_size: int = 1000) -> PixelDPCertificates:
        """Expected-label prediction, Bonferroni-corrected Clopper-Pearson bounds at level
        eta, and the largest certified attack size L_max of every input."""
        from bastion.defenses.certify.smoothing import check_alpha

        eta = check_alpha(eta)
        start = time.perf_counter()
        counts = self.label_counts(x, draws, seed, offset, batch_size).cpu().numpy()
        k = self.num_classes
        lower = lower_confidence_bound(counts, draws, eta / k)
        upper = upper_confidence_bound(counts, draws, eta / k)
        top = counts.argmax(1)
        rows = np.arange(counts.shape[0])
        lb = lower[rows, top]
        others = upper.copy()
        others[rows, top] = -np.inf
        ub = others.max(1)
        sens = self.sensitivity()
        l_max = _largest_size(lb, ub, self.cfg, self.noise.scale, sens)
        return PixelDPCertificates(label=torch.from_numpy(top), l_max=torch.from_numpy(l_max).float(),
                                   lower=torch.from_numpy(lb).float(), upper=torch.from_numpy(ub).float(),
                                   counts=torch.from_numpy(counts),
                                   params={"method": "pixeldp", **asdict(self.cfg), "draws": draws, "eta": eta,
                                           "seed": seed, "noise_scale": self.noise.scale,
                                           "sensitivity": sens},
                                   wall_time=time.perf_counter() - start)


def epsilon_at(size: float | np.ndarray, cfg: PixelDPConfig, noise_scale: float, sensitivity: float
               ) -> float | np.ndarray:
    """The privacy level epsilon_T the network's fixed noise gives at attack size T."""
    if cfg.mechanism == "gaussian":
        return math.sqrt(2 * math.log(1.25 / cfg.delta)) * sensitivity * np.asarray(size) / noise_scale
    return sensitivity * np.asarray(size) / noise_scale


def robust_at(lb: np.ndarray, ub: np.ndarray, size: float, cfg: PixelDPConfig, noise_scale: float,
              sensitivity: float) -> np.ndarray:
    """The PixelDP robustness test for attack size `size` (Lecuyer et al. 2019, Prop. 1)."""
    eps = float(epsilon_at(size, cfg, noise_scale, sensitivity))
    if cfg.mechanism == "gaussian" and eps > 1.0:
        return np.zeros_like(lb, dtype=bool)
    return lb > math.exp(2 * eps) * ub + (1 + math.exp(eps)) * cfg.dp_delta


def _largest_size(lb: np.ndarray, ub: np.ndarray, cfg: PixelDPConfig, noise_scale: float,
                  sensitivity: float) -> np.ndarray:
    """L_max per input: the largest T passing `robust_at` (0 when none does)."""
    d = cfg.dp_delta
    cap = 1.0 if cfg.mechanism == "gaussian" else 50.0
    ok0 = lb > ub + 2 * d
    lo_e, hi_e = np.zeros_like(lb), np.full_like(lb, cap)
    full = lb > math.exp(2 * cap) * ub + (1 + math.exp(cap)) * d
    for _ in range(60):   # the test is monotone in epsilon: bisect
        mid = (lo_e + hi_e) / 2
        passes = lb > np.exp(2 * mid) * ub + (1 + np.exp(mid)) * d
        lo_e = np.where(passes, mid, lo_e)
        hi_e = np.where(passes, hi_e, mid)
    eps = np.where(full, cap, lo_e)
    per_eps = float(epsilon_at(1.0, cfg, noise_scale, sensitivity))
    return np.where(ok0, eps / per_eps, 0.0)


@dataclass
class PixelDPCertificates:
    """Per-input PixelDP results: the expected-label prediction, the bounds of the top
    label (lower) and of the best other label (upper), the label counts and L_max."""

    label: torch.Tensor
    l_max: torch.Tensor
    lower: torch.Tensor
    upper: torch.Tensor
    counts: torch.Tensor
    params: dict[str, Any] = field(default_factory=dict)
    wall_time: float = 0.0

    @property
    def n(self) -> int:
        return int(self.label.shape[0])

    def robust(self, size: float) -> torch.Tensor:
        """Inputs certified robust to attacks of size `size` (L_max >= size)."""
        return self.l_max >= size if size > 0 else self.l_max > 0

    def curves(self, y: torch.Tensor, thresholds: list[float]) -> dict[str, list[float]]:
        """Conventional accuracy, robust accuracy and robust precision at each threshold T."""
        correct = self.label == y.cpu()
        acc = float(correct.float().mean()) if self.n else float("nan")
        rob_acc, rob_prec = [], []
        for t in thresholds:
            r = self.robust(t)
            rob_acc.append(float((r & correct).float().mean()) if self.n else float("nan"))
            rob_prec.append(float((r & correct).sum() / r.sum()) if bool(r.any()) else float("nan"))
        return {"threshold": list(thresholds), "accuracy": [acc] * len(thresholds),
                "robust_accuracy": rob_acc, "robust_precision": rob_prec}

    def rows(self, y: torch.Tensor | None = None) -> list[dict[str, Any]]:
        out = []
        for i in range(self.n):
            rec: dict[str, Any] = {"index": i, "label": int(self.label[i]), "l_max": float(self.l_max[i]),
                                   "lower": float(self.lower[i]), "upper": float(self.upper[i])}
            if y is not None:
                rec["true"] = int(y[i])
                rec["correct"] = int(self.label[i]) == int(y[i])
            out.append(rec)
        return out


_ = ABSTAIN  # PixelDP never abstains: an input it cannot certify gets L_max = 0


def pixeldp_fit(clf: PixelDPClassifier, train: Dataset, test: Dataset | None = None,
                cfg: TrainConfig = TrainConfig(),
                on_epoch: Callable[[dict[str, float]], None] | None = None) -> AdvTrainResult:
    """Train a PixelDP network with its noise on, bounding the pre-noise sensitivity after
    every optimiser step; records the defense in `clf.meta['defense']`."""
    from bastion.training.adversarial import check_data, finish_training, train_loop

    if not isinstance(clf, PixelDPClassifier):
        raise ConfigError(f"pixeldp_fit trains a PixelDPClassifier, got {type(clf).__name__}")
    cfg.validate()
    check_data(clf, train)
    dev = clf.device
    x, y = train.x.to(dev), train.y.to(dev)

    def step_fn(idx: torch.Tensor, done: float) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        clf.bound_sensitivity()          # after the previous optimiser step
        logits = clf(x[idx])
        return F.cross_entropy(logits, y[idx]), logits, {}

    history, wall = train_loop(clf, train, test, cfg, step_fn, "pixeldp", on_epoch)
    clf.bound_sensitivity()
    record = {"name": "pixeldp", **asdict(clf.cfg), "noise_scale": clf.noise.scale}
    return finish_training(clf, train, test, cfg, record, history, wall)
