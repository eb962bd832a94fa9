"""Randomized smoothing (Cohen, Rosenfeld and Kolter, 2019).

The smoothed classifier g(x) = argmax_c P(f(x + e) = c), e ~ N(0, sigma^2 I), is robust in
L2: if the top class has probability at least pA > 1/2 under the noise, g is constant on
the ball of radius sigma * PhiInv(pA) around x. `SmoothedClassifier` implements the two
Monte Carlo procedures of the paper:

- PREDICT: n draws, the two most frequent labels, a two-sided binomial test at level alpha;
  abstain (label -1) when the test cannot tell them apart. The probability of returning a
  label other than g(x) is at most alpha.
- CERTIFY: n0 selection draws pick the candidate class, n estimation draws give a one-sided
  (1 - alpha) Clopper-Pearson lower bound pA on its probability; radius sigma * PhiInv(pA),
  abstain when pA <= 1/2. With probability at least 1 - alpha the radius is not overstated.

Counting is batched: the noisy copies of several inputs share one forward pass, the noise is
drawn on the model's device, and the label counts stay on the device until the end (no host
synchronisation per forward). Each input's noise comes from its own generator seeded from
(seed, input index, phase), drawn in fixed blocks of `noise_block` copies, so certificates
are reproducible under a seed and do not depend on how inputs are grouped into batches.

As a `Classifier`, `forward(x)` is the base model on one noisy draw of x (a random model):
attacks should target `adaptive()` (EOT over the noise, Athalye et al. 2018; Salman et al.
2019's attack on smoothed classifiers averages the same way).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from bastion.attacks.evasion.adaptive import EOT, _Wrapper
from bastion.core import Classifier, ConfigError, seed_everything
from bastion.data.dataset import Dataset
from bastion.training.fit import TrainConfig

if TYPE_CHECKING:
    from bastion.training.adversarial import AdvTrainResult

ABSTAIN = -1
PHASE_SELECT, PHASE_ESTIMATE, PHASE_PREDICT = 0, 1, 2


# --------------------------------------------------------------------------- validation


def check_sigma(sigma: Any, name: str = "sigma") -> float:
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) \
            or sigma <= 0:
        raise ConfigError(f"{name} must be a finite number > 0, got {sigma!r}")
    return float(sigma)


def check_alpha(alpha: Any) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 < alpha < 0.5:
        raise ConfigError(f"alpha must lie in (0, 0.5), got {alpha!r}")
    return float(alpha)


def check_count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


# --------------------------------------------------------------------------- statistics


def lower_confidence_bound(k: np.ndarray, n: int, alpha: float) -> np.ndarray:
    """One-sided (1 - alpha) Clopper-Pearson lower bound on a binomial proportion (k of n)."""
    from scipy.stats import beta

    k = np.asarray(k, dtype=np.float64)
    lb = beta.ppf(alpha, np.maximum(k, 1e-300), n - k + 1)
    return np.where(k > 0, lb, 0.0)


def upper_confidence_bound(k: np.ndarray, n: int, alpha: float) -> np.ndarray:
    """One-sided (1 - alpha) Clopper-Pearson upper bound on a binomial proportion."""
    from scipy.stats import beta

    k = np.asarray(k, dtype=np.float64)
    ub = beta.ppf(1 - alpha, k + 1, np.maximum(n - k, 1e-300))
    return np.where(k < n, ub, 1.0)


def noise_seed(seed: int, index: int, phase: int) -> int:
    """The generator seed of one input's noise stream (independent across inputs and phases)."""
    return int(np.random.SeedSequence([int(seed) % 2**63, int(index), int(phase)]).generate_state(
        1, np.uint64)[0] % 2**63)


def noise_generator(device: torch.device, seed: int, index: int, phase: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(noise_seed(seed, index, phase))


@contextmanager
def _inplace_relus(model: torch.nn.Module) -> Iterator[None]:
    """Run ReLUs in place for the duration (no autograd inside CERTIFY's inference mode):
    the same values, one activation-sized allocation and pass over memory fewer per layer
    (15% of a cnn7 forward at batch 1000 on one CPU thread). Only a ReLU that follows a
    layer producing a fresh tensor inside an `nn.Sequential` is switched, so no tensor
    another branch still reads (a residual input) is overwritten."""
    nn_ = torch.nn
    fresh = (nn_.Conv1d, nn_.Conv2d, nn_.Linear, nn_.BatchNorm1d, nn_.BatchNorm2d, nn_.GroupNorm,
             nn_.MaxPool2d, nn_.AvgPool2d)
    relus = [seq[i] for seq in model.modules() if isinstance(seq, nn_.Sequential)
             for i in range(1, len(seq))
             if isinstance(seq[i], nn_.ReLU) and not seq[i].inplace and isinstance(seq[i - 1], fresh)]
    for m in relus:
        m.inplace = True
    try:
        yield
    finally:
        for m in relus:
            m.inplace = False


# --------------------------------------------------------------------------- results


@dataclass
class Certificates:
    """Per-input CERTIFY results: predicted label (-1 = abstain), certified L2 radius (0 when
    abstaining), the lower bound pA, the estimation count of the predicted class, and the
    settings that produced them."""

    label: torch.Tensor
    radius: torch.Tensor
    p_lower: torch.Tensor
    count: torch.Tensor
    params: dict[str, Any] = field(default_factory=dict)
    wall_time: float = 0.0

    @property
    def n(self) -> int:
        return int(self.label.shape[0])

    @property
    def abstained(self) -> torch.Tensor:
        return self.label == ABSTAIN

    def certified_correct(self, y: torch.Tensor, radius: float = 0.0) -> torch.Tensor:
        """Inputs whose certified label is y with a radius of at least `radius`."""
        ok = (self.label == y.to(self.label.device)) & ~self.abstained
        return ok & (self.radius >= radius) if radius > 0 else ok

    def certified_accuracy(self, y: torch.Tensor, radii: list[float]) -> dict[float, float]:
        """Certified accuracy (fraction correct with radius >= r) at each r."""
        return {float(r): float(self.certified_correct(y, r).float().mean()) if self.n else float("nan")
                for r in radii}

    def rows(self, y: torch.Tensor | None = None) -> list[dict[str, Any]]:
        """One JSON-ready record per input."""
        out = []
        for i in range(self.n):
            lab = int(self.label[i])
            rec: dict[str, Any] = {"index": i, "label": None if lab == ABSTAIN else lab,
                                   "abstain": lab == ABSTAIN, "radius": float(self.radius[i]),
                                   "p_lower": float(self.p_lower[i])}
            if y is not None:
                rec["true"] = int(y[i])
                rec["correct"] = lab == int(y[i])
            out.append(rec)
        return out


def certified_accuracy_curve(radius: torch.Tensor, correct: torch.Tensor, radii: list[float]) -> list[float]:
    """Fraction of inputs that are correct with certified radius >= r, for each r in `radii`."""
    if radius.numel() == 0:
        return [float("nan")] * len(radii)
    return [float((correct & (radius >= r)).float().mean()) for r in radii]


# --------------------------------------------------------------------------- the model


class SmoothedClassifier(_Wrapper):
    """g(x): the Gaussian-smoothed version of a base Classifier (Cohen et al., 2019).

    Args:
        base: the base classifier f (trained with Gaussian augmentation at `sigma` for good
            certificates; see `gaussian_augmentation_fit`).
        sigma: noise level in input units (Cohen et al. use 0.12, 0.25, 0.5, 1.0).
        batch_size: noisy copies per forward pass (several inputs' copies share a pass).
        noise_block: copies drawn per generator call; fixes the noise stream of an input,
            so results do not depend on `batch_size`.
        eot_samples: noise draws the attack surrogate (`adaptive()`) averages over.
    """

    def __init__(self, base: Classifier, sigma: float, batch_size: int = 1000,
                 noise_block: int = 100, eot_samples: int = 16) -> None:
        sigma = check_sigma(sigma)
        check_count(batch_size, "batch_size")
        check_count(noise_block, "noise_block")
        check_count(eot_samples, "eot_samples")
        super().__init__(base, f"smoothed[sigma={sigma:g}]")
        self.sigma = sigma
        self.batch_size = int(batch_size)
        self.noise_block = int(noise_block)
        self.eot_samples = int(eot_samples)
        self.meta["certified"] = {"method": "smoothing", "sigma": sigma}

    @property
    def base(self) -> Classifier:
        return self.module  # type: ignore[return-value]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x + self.sigma * torch.randn_like(x))

    def adaptive(self, eot_samples: int | None = None) -> Classifier:
        """The attack surrogate: EOT over the noise (mean softmax, log-space output)."""
        return EOT(self, samples=eot_samples or self.eot_samples, reduce="probs")

    # ------------------------------------------------------------------ counting
    def sample_counts(self, x: torch.Tensor, num: int, seed: int, phase: int,
                      offset: int = 0) -> torch.Tensor:
        """Label counts [N, classes] of the base model over `num` noisy copies of each input
        (int64, on the model's device). Input i's noise stream is seeded by (seed, offset + i,
        phase)."""
        check_count(num, "number of noise draws")
        dev = self.device
        x = x.to(dev)
        n, c = x.shape[0], self.num_classes
        counts = torch.zeros(n * c, dtype=torch.int64, device=dev)
        if n == 0:
            return counts.view(0, c)
        block = min(self.noise_block, num)
        blocks = -(-num // block)
        group = max(1, self.batch_size // block)   # inputs whose copies share one forward
        shape = tuple(x.shape[1:])
        base = self.base
        with base.fast_layout(), _inplace_relus(base), torch.inference_mode():   # layout switch outside
            for g0 in range(0, n, group):
                ids = range(g0, min(n, g0 + group))
                gens = [noise_generator(dev, seed, offset + i, phase) for i in ids]
                rows = torch.arange(g0, g0 + len(gens), device=dev)
                for b in range(blocks):
                    k = min(block, num - b * block)
                    noise = torch.cat([torch.randn((block, *shape), generator=gen, device=dev)[:k]
                                       for gen in gens])
                    batch = x[g0:g0 + len(gens)].repeat_interleave(k, 0)
                    pred = base(batch + self.sigma * noise).argmax(-1)
                    counts.index_add_(0, rows.repeat_interleave(k) * c + pred,
                                      torch.ones_like(pred))
        return counts.view(n, c)

    # ------------------------------------------------------------------ PREDICT / CERTIFY
    def predict_smoothed(self, x: torch.Tensor, n: int = 100_000, alpha: float = 0.001,
                         seed: int = 0, offset: int = 0) -> torch.Tensor:
        """PREDICT (Cohen et al. 2019): the top label, or -1 (abstain) when a two-sided
        binomial test between the two most frequent labels is not significant at alpha."""
        from scipy.stats import binom

        check_count(n, "n")
        alpha = check_alpha(alpha)
        counts = self.sample_counts(x, n, seed, PHASE_PREDICT, offset).cpu()
        top2 = counts.topk(2, dim=1)
        na, nb = top2.values[:, 0].numpy(), top2.values[:, 1].numpy()
        # two-sided binomial test of na successes in na + nb trials at p = 1/2 (symmetric:
        # twice the smaller tail, as scipy.stats.binomtest computes it)
        pvalue = np.minimum(1.0, 2 * binom.cdf(np.minimum(na, nb), na + nb, 0.5))
        keep = torch.from_numpy(pvalue <= alpha)
        return torch.where(keep, top2.indices[:, 0], torch.full_like(top2.indices[:, 0], ABSTAIN))

    def certify(self, x: torch.Tensor, n0: int = 100, n: int = 100_000, alpha: float = 0.001,
                seed: int = 0, offset: int = 0) -> Certificates:
        """CERTIFY (Cohen et al. 2019) for every input of the batch `x`."""
        check_count(n0, "n0")
        check_count(n, "n")
        alpha = check_alpha(alpha)
        start = time.perf_counter()
        select = self.sample_counts(x, n0, seed, PHASE_SELECT, offset).argmax(1)
        est = self.sample_counts(x, n, seed, PHASE_ESTIMATE, offset)
        count = est.gather(1, select[:, None])[:, 0].cpu()
        select = select.cpu()
        p_lower = torch.from_numpy(lower_confidence_bound(count.numpy(), n, alpha)).float()
        from scipy.stats import norm

        radius = torch.from_numpy(self.sigma * norm.ppf(np.clip(p_lower.numpy(), 0.5, 1.0))).float()
        abstain = p_lower <= 0.5
        label = torch.where(abstain, torch.full_like(select, ABSTAIN), select)
        radius = torch.where(abstain, torch.zeros_like(radius), radius)
        return Certificates(label=label, radius=radius, p_lower=p_lower, count=count,
                            params={"method": "smoothing", "sigma": self.sigma, "n0": n0, "n": n,
                                    "alpha": alpha, "seed": seed},
                            wall_time=time.perf_counter() - start)


# --------------------------------------------------------------------------- training


@dataclass(frozen=True)
class GaussianAugmentation:
    """Gaussian data augmentation (Cohen et al. 2019, Lecuyer et al. 2019): train the base
    classifier on x + N(0, sigma^2 I), the noise its smoothed version will see.

    Attributes:
        sigma: noise level in input units (Cohen et al.: 0.12, 0.25, 0.5 or 1.0; certify
            with the same sigma).
    """

    sigma: float = 0.25

    name = "gaussian-aug"

    def validate(self) -> None:
        check_sigma(self.sigma, f"{self.name}: sigma")


def gaussian_augmentation_fit(clf: Classifier, train: Dataset, test: Dataset | None = None,
                              defense: GaussianAugmentation = GaussianAugmentation(),
                              cfg: TrainConfig = TrainConfig(),
                              on_epoch: Callable[[dict[str, float]], None] | None = None
                              ) -> AdvTrainResult:
    """Train `clf` in place on Gaussian-noise-augmented inputs; records the defense in
    `clf.meta['defense']`."""
    from bastion.training.adversarial import check_data, finish_training, train_loop

    if not isinstance(defense, GaussianAugmentation):
        raise ConfigError(f"gaussian_augmentation_fit needs a GaussianAugmentation, got {defense!r}")
    defense.validate()
    cfg.validate()
    check_data(clf, train)
    dev = clf.device
    gen = torch.Generator(device=dev).manual_seed(cfg.seed + 2)
    x, y = train.x.to(dev), train.y.to(dev)

    def step_fn(idx: torch.Tensor, done: float) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        xb = x[idx]
        noisy = xb + defense.sigma * torch.randn(xb.shape, generator=gen, device=dev)
        logits = clf(noisy)
        return F.cross_entropy(logits, y[idx]), logits, {"sigma": defense.sigma}

    seed_everything(cfg.seed)
    record = {"name": defense.name, **asdict(defense)}
    history, wall = train_loop(clf, train, test, cfg, step_fn, defense.name, on_epoch)
    return finish_training(clf, train, test, cfg, record, history, wall)
