"""Out-of-distribution detection: per-input scores (higher = more likely OOD) and
thresholds calibrated on in-distribution inputs, plus OOD sets that need no download.

Detectors:

- `MaxSoftmax` (Hendrycks & Gimpel 2017): score = -max softmax probability.
- `ODIN` (Liang, Li & Srikant 2018): temperature scaling (T = 1000) and a small input
  perturbation (epsilon = 0.0014) that raises the max softmax of in-distribution inputs
  more than that of OOD inputs; score = -max softmax(f(x~) / T).
- `Mahalanobis` (Lee et al. 2018): class-conditional Gaussians with a shared covariance
  fitted on penultimate features of training inputs; score = the smallest Mahalanobis
  distance to a class mean (with optional input pre-processing of size `epsilon`).
- `XEnsembleFlag`: XEnsemble's disagreement as the score (1 - share of agreeing votes)
  and its flag as the decision.

OOD sets (`ood_set`): 'uniform' and 'gaussian' noise, 'inverted' (1 - x of the
in-distribution test images), 'digits' (scikit-learn's 8 x 8 digits upsampled to the
image size), 'patches' (crops of the photos bundled with scikit-learn, or scikit-image's
when installed, grey-scaled and resized), or any data set name Bastion loads (e.g.
'fashion-mnist' when its files are on disk).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from bastion.core import Classifier, ConfigError, InputSpec, check_inputs, require
from bastion.defenses.detect.base import DEFAULT_FPR, check_fpr, quantile_threshold

OOD_SETS = ("uniform", "gaussian", "inverted", "digits", "patches")


class OODDetector:
    """Base class: `score(x)` [N] (higher = more OOD), `calibrate(x_in, fpr)` sets the
    threshold at the (1 - fpr) quantile of in-distribution scores, `flag(x)`."""

    name: ClassVar[str] = "ood"

    def __init__(self, classifier: Classifier, fpr: float = DEFAULT_FPR) -> None:
        if not isinstance(classifier, Classifier):
            raise ConfigError(f"{self.name}: needs a bastion Classifier, got {type(classifier).__name__}")
        self.classifier = classifier
        self.fpr = check_fpr(fpr, self.name)
        self.threshold: float | None = None

    def _score_batch(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def score(self, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        check_inputs(x, self.classifier.spec)
        dev = self.classifier.device
        outs = [self._score_batch(x[i:i + batch_size].to(dev)).detach().cpu()
                for i in range(0, x.shape[0], batch_size)]
        return torch.cat(outs) if outs else torch.empty(0)

    def calibrate(self, x_in: torch.Tensor, fpr: float | None = None) -> float:
        fpr = self.fpr if fpr is None else check_fpr(fpr, self.name)
        need = math.ceil(1.0 / fpr)
        require(x_in.shape[0] >= need, f"{self.name}: calibrating at fpr {fpr:g} needs at least {need} inputs")
        self.threshold = quantile_threshold(self.score(x_in), fpr)
        self.fpr = fpr
        return self.threshold

    def flag(self, x: torch.Tensor) -> torch.Tensor:
        if self.threshold is None:
            raise ConfigError(f"{self.name}: no threshold yet; call calibrate(x_in_distribution) first")
        return self.score(x) > self.threshold


class MaxSoftmax(OODDetector):
    """Hendrycks & Gimpel (2017): the negative maximum softmax probability."""

    name = "max-softmax"

    def _score_batch(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return -self.classifier(x).softmax(-1).max(-1).values


class ODIN(OODDetector):
    """Liang, Li & Srikant (2018). Args: temperature T (1000), epsilon (0.0014, in the
    input's [0, 1] scale; the perturbed input is clipped to the model's bounds)."""

    name = "odin"

    def __init__(self, classifier: Classifier, temperature: float = 1000.0, epsilon: float = 0.0014,
                 fpr: float = DEFAULT_FPR) -> None:
        super().__init__(classifier, fpr)
        require(isinstance(temperature, (int, float)) and temperature > 0, f"odin: temperature must be > 0, got {temperature!r}")
        require(isinstance(epsilon, (int, float)) and epsilon >= 0, f"odin: epsilon must be >= 0, got {epsilon!r}")
        self.temperature, self.epsilon = float(temperature), float(epsilon)

    def _score_batch(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = self.classifier.spec.bounds
        xx = x.detach().clone()
        if self.epsilon > 0:
            xx.requires_grad_(True)
            with torch.enable_grad():
                logp = F.log_softmax(self.classifier(xx) / self.temperature, -1)
                loss = -logp.max(-1).values.sum()
                (g,) = torch.autograd.grad(loss, xx)
            xx = (x - self.epsilon * g.sign()).clamp(lo, hi)
        with torch.no_grad():
            return -(self.classifier(xx) / self.temperature).softmax(-1).max(-1).values


def _last_linear(module: nn.Module) -> nn.Linear:
    lin = [m for m in module.modules() if isinstance(m, nn.Linear)]
    if not lin:
        raise ConfigError("mahalanobis needs a network whose last layer is nn.Linear (its input is the "
                          "penultimate feature)")
    return lin[-1]


class Mahalanobis(OODDetector):
    """Lee, Lee, Lee & Shin (2018) on the penultimate features (the input of the last
    linear layer). `fit(x_train, y_train)` estimates the class means and the shared
    covariance (with a small ridge). Args: epsilon, the input pre-processing step that
    lowers the distance to the closest class (0 = off)."""

    name = "mahalanobis"

    def __init__(self, classifier: Classifier, epsilon: float = 0.0, fpr: float = DEFAULT_FPR,
                 ridge: float = 1e-3) -> None:
        super().__init__(classifier, fpr)
        require(isinstance(epsilon, (int, float)) and epsilon >= 0, f"mahalanobis: epsilon must be >= 0, got {epsilon!r}")
        self.epsilon, self.ridge = float(epsilon), float(ridge)
        self.layer = _last_linear(classifier.module)
        self.means: torch.Tensor | None = None
        self.precision: torch.Tensor | None = None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        box: list[torch.Tensor] = []
        h = self.layer.register_forward_hook(lambda m, inp, out: box.append(inp[0]))
        try:
            self.classifier(x)
        finally:
            h.remove()
        return box[0].flatten(1)

    def fit(self, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> Mahalanobis:
        check_inputs(x, self.classifier.spec)
        dev = self.classifier.device
        with torch.no_grad():
            f = torch.cat([self.features(x[i:i + batch_size].to(dev)) for i in range(0, x.shape[0], batch_size)]).double()
        yy = y.to(dev)
        c = self.classifier.num_classes
        present = torch.unique(yy)
        require(present.numel() >= 2, "mahalanobis: fit needs inputs of at least 2 classes")
        means = torch.stack([f[yy == k].mean(0) if bool((yy == k).any()) else torch.full_like(f[0], float("inf"))
                             for k in range(c)])
        centred = f - means[yy]
        cov = centred.T @ centred / f.shape[0]
        cov += self.ridge * torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)
        self.means, self.precision = means.float(), torch.linalg.inv(cov).float()
        return self

    def _dist(self, x: torch.Tensor) -> torch.Tensor:
        assert self.means is not None and self.precision is not None
        f = self.features(x)
        ok = torch.isfinite(self.means[:, 0])
        d = f[:, None, :] - self.means[ok][None]
        m = torch.einsum("ncd,de,nce->nc", d, self.precision, d)
        return m.min(-1).values

    def _score_batch(self, x: torch.Tensor) -> torch.Tensor:
        if self.means is None:
            raise ConfigError("mahalanobis: call fit(x_train, y_train) before scoring")
        xx = x
        if self.epsilon > 0:
            lo, hi = self.classifier.spec.bounds
            xg = x.detach().clone().requires_grad_(True)
            with torch.enable_grad():
                (g,) = torch.autograd.grad(self._dist(xg).sum(), xg)
            xx = (x - self.epsilon * g.sign()).clamp(lo, hi)
        with torch.no_grad():
            return self._dist(xx)


class XEnsembleFlag(OODDetector):
    """XEnsemble as an OOD detector: score = 1 - the share of votes for the top label;
    `flag` is XEnsemble's own flag (no calibration needed)."""

    name = "xensemble"

    def __init__(self, xensemble: Classifier, fpr: float = DEFAULT_FPR) -> None:
        from bastion.defenses.xensemble import XEnsemble

        if not isinstance(xensemble, XEnsemble):
            raise ConfigError(f"xensemble OOD detector needs an XEnsemble, got {type(xensemble).__name__}")
        super().__init__(xensemble, fpr)

    def score(self, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        return 1.0 - self.classifier.agreement(x, batch_size).cpu()  # type: ignore[operator]

    def flag(self, x: torch.Tensor) -> torch.Tensor:
        if self.threshold is not None:
            return self.score(x) > self.threshold
        return self.classifier.detect(x).cpu()  # type: ignore[operator]


DETECTORS: dict[str, type[OODDetector]] = {"max-softmax": MaxSoftmax, "odin": ODIN, "mahalanobis": Mahalanobis,
                                           "xensemble": XEnsembleFlag}


def _photos() -> list[torch.Tensor]:
    """Grey-scale photos in [0, 1] (H x W): scikit-image's bundled ones when installed,
    else scikit-learn's two sample images."""
    try:
        from skimage import color, data  # type: ignore[import-not-found]

        out = []
        for name in ("camera", "astronaut", "coffee", "chelsea", "rocket", "coins", "moon", "page"):
            img = getattr(data, name)()
            img = color.rgb2gray(img) if img.ndim == 3 else img / 255.0
            out.append(torch.as_tensor(img, dtype=torch.float32))
        return out
    except ImportError:
        from sklearn.datasets import load_sample_images

        imgs = load_sample_images().images
        return [torch.tensor(i, dtype=torch.float32).mean(-1) / 255.0 for i in imgs]


def ood_set(name: str, spec: InputSpec, n: int = 500, seed: int = 0, x_in: torch.Tensor | None = None,
            root: str | None = None) -> torch.Tensor:
    """n OOD inputs shaped like `spec` (values in its bounds). 'inverted' needs `x_in`, the
    in-distribution images to invert; any other name is loaded as a data set (test split)."""
    require(isinstance(n, int) and n >= 1, f"an OOD set needs n >= 1 inputs, got {n!r}")
    g = torch.Generator().manual_seed(seed)
    lo, hi = spec.bounds
    shape = (n, *spec.shape)
    if name == "uniform":
        return lo + (hi - lo) * torch.rand(shape, generator=g)
    if name == "gaussian":
        mid, sd = (lo + hi) / 2, (hi - lo) / 4
        return (mid + sd * torch.randn(shape, generator=g)).clamp(lo, hi)
    if name == "inverted":
        require(x_in is not None, "the inverted OOD set needs the in-distribution images (x_in)")
        assert x_in is not None
        return (hi + lo - x_in[:n]).clamp(lo, hi)
    image = len(spec.shape) == 3
    if name in ("digits", "patches"):
        require(image, f"the {name} OOD set needs image inputs (C, H, W), the model takes {spec.shape}")
        c, h, w = spec.shape
        if name == "digits":
            from sklearn.datasets import load_digits

            x = torch.as_tensor(load_digits().images, dtype=torch.float32)[:, None] / 16.0
            idx = torch.randperm(x.shape[0], generator=g)[:n]
            x = F.interpolate(x[idx], size=(h, w), mode="bilinear", align_corners=False)
        else:
            photos = _photos()
            crops = []
            for i in range(n):
                img = photos[i % len(photos)]
                size = int(torch.randint(min(img.shape) // 8, min(img.shape) // 2, (1,), generator=g))
                top = int(torch.randint(0, img.shape[0] - size + 1, (1,), generator=g))
                left = int(torch.randint(0, img.shape[1] - size + 1, (1,), generator=g))
                crop = img[top:top + size, left:left + size][None, None]
                crops.append(F.interpolate(crop, size=(h, w), mode="area"))
            x = torch.cat(crops)
        x = x.clamp(0, 1).expand(-1, c, -1, -1).contiguous()
        return lo + (hi - lo) * x
    from bastion.data import load

    try:
        ds = load(name, "test", root=root)
    except ConfigError as e:
        raise ConfigError(f"unknown OOD set {name!r} ({e}); built-in sets: {', '.join(OOD_SETS)}") from None
    require(tuple(ds.input_shape) == spec.shape, f"OOD set {name} has inputs {ds.input_shape}, the model takes {spec.shape}")
    return ds.x[:n]


def build_ood_detector(name: str, classifier: Classifier, **params: Any) -> OODDetector:
    from bastion.core import unknown_name

    cls = DETECTORS.get(name)
    if cls is None:
        raise unknown_name("OOD detector", name, list(DETECTORS))
    try:
        return cls(classifier, **params)
    except TypeError as e:
        raise ConfigError(f"OOD detector {name!r}: invalid parameters ({e})") from None
