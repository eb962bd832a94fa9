"""One entry point for every certification method, shared by `bastion certify` and the
audit's certify section: a checked settings object, and a run that returns a JSON-ready
summary (certified accuracy at the requested radii, abstain rate, time per input) and the
per-input certificates."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from bastion.core import Classifier, ConfigError, unknown_name
from bastion.defenses.certify.smoothing import check_alpha, check_count, check_sigma

METHODS = ("smoothing", "pixeldp", "ibp", "crown-ibp", "crown")
DEFAULT_RADII = (0.0, 0.25, 0.5, 0.75, 1.0)
DEFAULT_EPS = (0.0, 0.05, 0.1, 0.2, 0.3)
DEFAULT_THRESHOLDS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5)


@dataclass(frozen=True)
class CertifySettings:
    """What to certify and how.

    Attributes:
        method: smoothing (Cohen et al. 2019), pixeldp (Lecuyer et al. 2019), ibp, crown-ibp
            or crown (Linf bound propagation).
        sigma: smoothing noise level; None = the checkpoint's gaussian-aug sigma, else 0.25.
        n0, samples, alpha: CERTIFY's selection draws, estimation draws and error level
            (Cohen et al.: 100, 100,000, 0.001).
        radii: L2 radii (smoothing) or attack sizes T (pixeldp) the accuracy is reported at.
        eps: Linf radii the bounds are checked at (ibp / crown).
        draws, eta: PixelDP Monte Carlo draws and confidence (Lecuyer et al.: 300, 0.05).
        batch_size: noisy copies per forward pass.
        seed: noise seed (certificates are reproducible under it).
        denoise_epochs: smoothing only: > 0 trains a denoiser on the training data in front
            of the (unchanged) model for this many epochs first (Salman et al. 2020).
        denoise_objective: 'stability', 'mse' or 'mse+stability'.
    """

    method: str = "smoothing"
    sigma: float | None = None
    n0: int = 100
    samples: int = 100_000
    alpha: float = 0.001
    radii: tuple[float, ...] = DEFAULT_RADII
    eps: tuple[float, ...] = (0.1,)
    draws: int = 300
    eta: float = 0.05
    batch_size: int = 1000
    seed: int = 0
    denoise_epochs: int = 0
    denoise_objective: str = "stability"
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if self.method not in METHODS:
            raise unknown_name("certification method", str(self.method), METHODS)
        if self.sigma is not None:
            check_sigma(self.sigma)
        check_count(self.n0, "n0")
        check_count(self.samples, "samples (n)")
        check_alpha(self.alpha)
        check_count(self.draws, "draws")
        check_alpha(self.eta)
        check_count(self.batch_size, "batch_size")
        if isinstance(self.denoise_epochs, bool) or not isinstance(self.denoise_epochs, int) \
                or not 0 <= self.denoise_epochs <= 10_000:
            raise ConfigError(f"denoise_epochs must be an integer in [0, 10000], got {self.denoise_epochs!r}")
        if self.denoise_epochs and self.method != "smoothing":
            raise ConfigError("a denoiser only applies to --method smoothing")
        from bastion.defenses.certify.denoise import OBJECTIVES

        if self.denoise_objective not in OBJECTIVES:
            raise unknown_name("denoiser objective", str(self.denoise_objective), OBJECTIVES)
        for name in ("radii", "eps"):
            vals = getattr(self, name)
            if not vals or any(not math.isfinite(v) or v < 0 for v in vals):
                raise ConfigError(f"{name} must be finite numbers >= 0, got {list(vals)}")


def checkpoint_sigma(clf: Classifier) -> float | None:
    """The sigma of a smoothed classifier, or the one a gaussian-aug checkpoint was
    trained with, if any."""
    from bastion.defenses.certify.smoothing import SmoothedClassifier

    if isinstance(clf, SmoothedClassifier):
        return clf.sigma
    d = clf.meta.get("defense")
    if isinstance(d, dict) and d.get("name") == "gaussian-aug":
        return float(d["sigma"])
    return None


def pixeldp_model(clf: Classifier) -> Any:
    """The PixelDP network of a checkpoint trained with `bastion train --defense pixeldp`."""
    from bastion.defenses.certify.pixeldp import PixelDPClassifier, PixelDPConfig
    from bastion.params import build

    if isinstance(clf, PixelDPClassifier):  # saved by `bastion defend --defense pixeldp`
        return clf
    d = clf.meta.get("defense")
    if not (isinstance(d, dict) and d.get("name") == "pixeldp"):
        raise ConfigError("--method pixeldp needs a PixelDP network: train one with "
                          "`bastion train --defense pixeldp` (the noise layer is part of the model)")
    keys = {f for f in PixelDPConfig.__dataclass_fields__}
    cfg = build(PixelDPConfig, {k: v for k, v in d.items() if k in keys}, "pixeldp checkpoint")
    return PixelDPClassifier(clf, cfg)


def check_model(clf: Classifier, s: CertifySettings) -> None:
    """Refuse a model the method cannot handle, before work."""
    from bastion.defenses.certify.defended import is_certified

    if s.method == "pixeldp":
        pixeldp_model(clf)
    elif is_certified(clf) and (s.method != "smoothing" or clf.meta["certified"]["method"] != "smoothing"):
        raise ConfigError(f"{clf.name} is a random (certified) classifier: --method {s.method} needs its "
                          "deterministic base checkpoint")
    elif s.method in ("ibp", "crown-ibp", "crown"):
        from bastion.defenses.certify.bounds import layers_of

        layers_of(clf)


def run_certify(clf: Classifier, x: torch.Tensor, y: torch.Tensor, s: CertifySettings,
                train: Any = None) -> dict[str, Any]:
    """Certify (x, y) with `s.method`; returns {'summary': ..., 'rows': [...]} (JSON-ready).
    `train` (a Dataset) is needed only to train a denoiser (`s.denoise_epochs > 0`)."""
    s.validate()
    n = int(x.shape[0])
    summary: dict[str, Any] = {"method": s.method, "n": n}
    if s.method == "smoothing":
        from bastion.defenses.certify.smoothing import SmoothedClassifier

        sigma = s.sigma if s.sigma is not None else (checkpoint_sigma(clf) or 0.25)
        if isinstance(clf, SmoothedClassifier):  # saved by `bastion defend --defense smoothing`
            clf = clf.base
        model = clf
        if s.denoise_epochs:
            from bastion.defenses.certify.denoise import DenoiserConfig, train_denoiser

            if train is None:
                raise ConfigError("training a denoiser needs the training data")
            model, rec = train_denoiser(clf, train, DenoiserConfig(sigma=sigma, objective=s.denoise_objective,
                                                                   epochs=s.denoise_epochs, seed=s.seed))
            summary["denoiser"] = rec
        g = SmoothedClassifier(model, sigma, batch_size=s.batch_size)
        cert = g.certify(x, n0=s.n0, n=s.samples, alpha=s.alpha, seed=s.seed)
        acc = cert.certified_accuracy(y, list(s.radii))
        summary.update(sigma=sigma, n0=s.n0, samples=s.samples, alpha=s.alpha, norm="l2",
                       clean_accuracy=clf.accuracy(x, y),
                       certified_accuracy=[{"radius": r, "accuracy": a} for r, a in acc.items()],
                       abstain_rate=float(cert.abstained.float().mean()) if n else float("nan"),
                       mean_radius=float(cert.radius[cert.certified_correct(y)].mean())
                       if bool(cert.certified_correct(y).any()) else 0.0,
                       wall_time_s=cert.wall_time, time_per_input_s=cert.wall_time / max(1, n),
                       draws_per_second=n * (s.n0 + s.samples) / max(cert.wall_time, 1e-9))
        return {"summary": summary, "rows": cert.rows(y)}
    if s.method == "pixeldp":
        pdp = pixeldp_model(clf)
        pc = pdp.certify(x, draws=s.draws, eta=s.eta, seed=s.seed, batch_size=s.batch_size)
        curves = pc.curves(y, list(s.radii))
        summary.update(norm=pdp.cfg.norm, draws=s.draws, eta=s.eta, **{k: v for k, v in pc.params.items()
                                                                          if k not in ("method", "draws", "eta", "seed")},
                       accuracy=curves["accuracy"][0] if curves["accuracy"] else None,
                       curves=[{"threshold": t, "robust_accuracy": ra, "robust_precision": rp}
                               for t, ra, rp in zip(curves["threshold"], curves["robust_accuracy"],
                                                    curves["robust_precision"])],
                       certified_accuracy=[{"radius": t, "accuracy": ra} for t, ra in
                                           zip(curves["threshold"], curves["robust_accuracy"])],
                       wall_time_s=pc.wall_time, time_per_input_s=pc.wall_time / max(1, n))
        return {"summary": summary, "rows": pc.rows(y)}
    from bastion.defenses.certify.bounds import verify

    rows: list[dict[str, Any]] = []
    table = []
    wall = 0.0
    clean = None
    for eps in s.eps:
        v = verify(clf, x, y, eps, s.method)
        wall += v.wall_time
        clean = v.clean_accuracy
        table.append({"eps": eps, "verified_accuracy": v.verified_accuracy})
        rows += [{**r, "eps": eps} for r in v.rows()]
    summary.update(norm="linf", clean_accuracy=clean, verified_accuracy=table,
                   certified_accuracy=[{"radius": t["eps"], "accuracy": t["verified_accuracy"]} for t in table],
                   wall_time_s=wall, time_per_input_s=wall / max(1, n * len(s.eps)))
    return {"summary": summary, "rows": rows}


def settings_dict(s: CertifySettings) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(s).items() if k != "extra"}
