"""DP-SGD with fixed and dynamic privacy parameters.

Baseline DP-SGD (Abadi et al., CCS 2016): every step samples each training example with
probability q (Poisson sampling), computes per-example gradients g_i, clips them to norm C
(g_i * min(1, C / ||g_i||), over all parameters or layer by layer), sums them, adds
Gaussian noise N(0, sigma^2 S^2 I) with sensitivity S = C, divides by the expected batch
size q N and takes an optimizer step. The privacy cost of the run is the composition of T
Poisson-subsampled Gaussian steps (see `bastion.privacy.accountants`).

Dynamic privacy parameters (Wei & Liu, dissertation ch. 4, Algorithms 2-3, Table 4.1):

=============  =============  ==========================  ==============
variant        clip C_t       sensitivity S_t             noise scale
=============  =============  ==========================  ==============
baseline       C0             C_t                         sigma0
cdecay         DECAY(C0)      C_t                         sigma0
l2-max         C0             min(max_i ||g_i||, C_t)     sigma0
dyn-s          DECAY(C0)      min(max_i ||g_i||, C_t)     sigma0
dyn-sigma      C0             C_t                         DECAY(sigma0)
dyn-s-sigma    DECAY(C0)      min(max_i ||g_i||, C_t)     DECAY(sigma0)
=============  =============  ==========================  ==============

DECAY is linear, exponential or cyclic (`bastion.training.dp_schedules`). Comparators:
``quantile`` -- adaptive clipping to a privately estimated quantile of the gradient norms
(Andrew et al., NeurIPS 2021); ``adaclip`` -- coordinate-wise adaptive clipping with
private mean/variance estimates (Pichapati et al. 2019).

Caveat (documented in docs/dp.md): l2-max sensitivity is computed from the batch itself,
as in the dissertation; the accountants then treat sigma_t as the noise multiplier of each
step, which is the dissertation's analysis but not a worst-case DP proof.

Per-example gradients come from the engines of `bastion.training.per_example` (ghost,
vmap, Opacus; re-exported here), shared with the PrivacyEngine and Fed-CDP.
"""

from __future__ import annotations

import math
import secrets
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from bastion.core import Classifier, ConfigError, InputError, unknown_name
from bastion.data.dataset import Dataset
from bastion.privacy.accountants import (
    ADJACENCY,
    PrivacyLedger,
    check_delta,
    check_guarantee,
    check_rate,
    pld_available,
    prv_available,
)
from bastion.privacy.statement import NOISE_SECURE, NOISE_SEEDED
from bastion.progress import task
from bastion.training.dp_schedules import Decay, canonical_policy
from bastion.training.per_example import (  # noqa: F401  (re-exported: the engines' old home)
    _BN_TYPES,
    _GHOST_TYPES,
    ENGINES,
    GhostEngine,
    OpacusEngine,
    PerExample,
    VmapEngine,
    _conv_pad,
    _Engine,
    _groups_for,
    _layer_grads,
    _owned_params,
    check_dp_model,
    find_batchnorm,
    ghost_unsupported,
    make_engine,
    per_example_gradients,
    replace_batchnorm,
)

VARIANTS: tuple[str, ...] = ("baseline", "cdecay", "l2-max", "dyn-s", "dyn-sigma", "dyn-s-sigma",
                             "quantile", "adaclip")
_VARIANT_ALIASES = {"fixed": "baseline", "dyns[cdecay]": "cdecay", "dyns[l2-max]": "l2-max",
                    "l2max": "l2-max", "dyns": "dyn-s", "dyn_s": "dyn-s", "dynsigma": "dyn-sigma",
                    "dyn[s,sigma]": "dyn-s-sigma", "dyn-s,sigma": "dyn-s-sigma"}
# variant -> (C decays, l2-max sensitivity, sigma decays)
_DYNAMICS: dict[str, tuple[bool, bool, bool]] = {
    "baseline": (False, False, False), "cdecay": (True, False, False),
    "l2-max": (False, True, False), "dyn-s": (True, True, False),
    "dyn-sigma": (False, False, True), "dyn-s-sigma": (True, True, True),
    "quantile": (False, False, False), "adaclip": (False, False, False),
}


def canonical_variant(name: str) -> str:
    key = name.lower().replace("_", "-")
    key = _VARIANT_ALIASES.get(key, key)
    if key not in VARIANTS:
        raise unknown_name("DP-SGD variant", name, VARIANTS)
    return key


@dataclass(frozen=True)
class DPConfig:
    """DP-SGD hyper-parameters (defaults: the dissertation's C = 4, sigma = 6, delta = 1e-5).

    Attributes:
        sigma: noise multiplier sigma (the start value sigma0 for dynamic noise).
        clip: clipping bound C (the start value C0 for decaying clipping).
        delta: target delta of the (epsilon, delta) guarantee; must be < 1 (use < 1/n).
        variant: one of VARIANTS (see the module docstring).
        decay: decay policy of C_t and (unless `sigma_decay` is set) sigma_t:
            'linear', 'exp' or 'cyclic'.
        sigma_decay: decay policy of sigma_t (None = `decay`).
        clip_final: C at the last planned step (None = min(2, C0 / 2): the dissertation
            decays C = 4 linearly to 2).
        sigma_final: sigma at the last planned step (None = sigma0 / 2).
        half_period: half period V of the cyclic policy in steps (None = T / 10).
        per_layer: clip each of the M parameterised layers to C / sqrt(M) (so the whole
            gradient stays within C) instead of clipping the flat gradient to C.
        batch_size: expected batch (lot) size; the sampling rate is q = batch_size / n.
        epochs: planned training length in epochs (T = round(epochs / q)) unless `steps`.
        steps: planned number of steps T (overrides `epochs`).
        lr: learning rate. optimizer: 'sgd' (momentum 0.9 when `momentum` is None) or 'adam'.
        momentum: SGD momentum.
        target_epsilon: stop before a step would spend more than this (under `accountant`).
        accountant: accountant that enforces `target_epsilon` (default 'rdp', = Opacus).
        target_accuracy: stop once test accuracy reaches this (checked at every evaluation).
        eval_every: evaluate test accuracy every this many steps (None = once per epoch).
        engine: per-example gradient engine: 'auto', 'ghost', 'vmap' or 'opacus'.
        poisson: Poisson sampling (required for the accountants' guarantee); False takes
            shuffled fixed-size batches (faster to compare, accounted as if Poisson).
        fix_batchnorm: replace BatchNorm layers by GroupNorm instead of refusing the model.
        target_quantile, clip_lr, count_noise: quantile clipping (Andrew et al.): target
            unclipped fraction gamma = 0.5, geometric step eta_C = 0.2, noise std of the
            clipped-count estimate (None = batch_size / 20, the paper's choice).
        adaclip_betas, adaclip_bounds: AdaClip's moving-average rates (beta1, beta2) for
            the mean / variance estimates and the bounds (h1, h2) of the variance estimate.
        seed: seeds the model's initialisation (and, with `noise_seed`, nothing else).
        noise_seed: None (default): the DP noise, Poisson sampling and batch shuffling come
            from a generator seeded with 64 bits from the operating system's CSPRNG
            (`secrets`), so no one can subtract the noise. An integer seeds them instead:
            reproducible for research, but NOT private (anyone knowing the seed removes the
            noise exactly); a warning is issued and the checkpoint and report say so.
        progress: show a progress bar (None = only on an interactive terminal).
    """

    sigma: float = 6.0
    clip: float = 4.0
    delta: float = 1e-5
    variant: str = "baseline"
    decay: str = "linear"
    sigma_decay: str | None = None
    clip_final: float | None = None
    sigma_final: float | None = None
    half_period: int | None = None
    per_layer: bool = False
    batch_size: int = 256
    epochs: float = 5.0
    steps: int | None = None
    lr: float = 0.1
    optimizer: str = "sgd"
    momentum: float = 0.9
    target_epsilon: float | None = None
    accountant: str = "rdp"
    target_accuracy: float | None = None
    eval_every: int | None = None
    engine: str = "auto"
    poisson: bool = True
    fix_batchnorm: bool = False
    target_quantile: float = 0.5
    clip_lr: float = 0.2
    count_noise: float | None = None
    adaclip_betas: tuple[float, float] = (0.99, 0.9)
    adaclip_bounds: tuple[float, float] = (1e-10, 1e2)
    seed: int = 0
    noise_seed: int | None = None
    progress: bool | None = None

    def validate(self, n: int | None = None) -> None:
        """Raise ConfigError for any impossible value (before any work starts)."""
        if not isinstance(self.sigma, (int, float)) or not self.sigma > 0 or not math.isfinite(self.sigma):
            raise ConfigError(f"sigma (noise multiplier) must be positive, got {self.sigma}; "
                              "sigma = 0 would be non-private training")
        if not isinstance(self.clip, (int, float)) or not self.clip > 0 or not math.isfinite(self.clip):
            raise ConfigError(f"clip (clipping bound C) must be positive, got {self.clip}")
        check_delta(self.delta)
        canonical_variant(self.variant)
        canonical_policy(self.decay)
        if self.sigma_decay is not None:
            canonical_policy(self.sigma_decay)
        if self.clip_final is not None and not 0 < self.clip_final <= self.clip:
            raise ConfigError(f"clip_final must lie in (0, clip={self.clip}], got {self.clip_final}")
        if self.sigma_final is not None and not 0 < self.sigma_final <= self.sigma:
            raise ConfigError(f"sigma_final must lie in (0, sigma={self.sigma}], got {self.sigma_final}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if n is not None:
            if n < 1:
                raise ConfigError("the training set is empty")
            if self.batch_size > n:
                raise ConfigError(f"batch_size {self.batch_size} exceeds the training set size {n}; "
                                  "the sampling rate q = batch_size / n must lie in (0, 1]")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"steps must be >= 1, got {self.steps}")
        if self.steps is None and not self.epochs > 0:
            raise ConfigError(f"epochs must be positive, got {self.epochs}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if self.optimizer not in ("sgd", "adam"):
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; valid: adam, sgd")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must lie in [0, 1), got {self.momentum}")
        if self.target_epsilon is not None and not self.target_epsilon > 0:
            raise ConfigError(f"target_epsilon must be positive, got {self.target_epsilon}")
        check_guarantee(self.accountant)
        if (self.accountant == "pld" and not pld_available()) or (
                self.accountant == "prv" and not prv_available()):
            raise ConfigError(f"the {self.accountant} accountant is not installed (pld: pip install "
                              "'bastion[pld]'; prv: Opacus); use accountant rdp")
        if self.noise_seed is not None and (isinstance(self.noise_seed, bool) or not isinstance(
                self.noise_seed, int) or not 0 <= self.noise_seed < 2**63):
            raise ConfigError(f"noise_seed must be an integer in [0, 2^63) or None (secure noise), "
                              f"got {self.noise_seed!r}")
        if self.target_accuracy is not None and not 0 < self.target_accuracy <= 1:
            raise ConfigError(f"target_accuracy must lie in (0, 1], got {self.target_accuracy}")
        if self.eval_every is not None and self.eval_every < 1:
            raise ConfigError(f"eval_every must be >= 1, got {self.eval_every}")
        if self.engine not in ENGINES:
            raise unknown_name("per-example gradient engine", self.engine, ENGINES)
        if not 0 < self.target_quantile < 1:
            raise ConfigError(f"target_quantile must lie in (0, 1), got {self.target_quantile}")
        if not self.clip_lr > 0:
            raise ConfigError(f"clip_lr must be positive, got {self.clip_lr}")
        if canonical_variant(self.variant) == "quantile":
            sb = self.count_noise if self.count_noise is not None else self.batch_size / 20
            if not sb > 0 or 2 * sb <= self.sigma:
                raise ConfigError(
                    f"quantile clipping spends part of the noise on the clipped-count estimate: "
                    f"its noise std ({sb:g}) must exceed sigma / 2 = {self.sigma / 2:g}; raise "
                    "count_noise or batch_size")
        b1, b2 = self.adaclip_betas
        h1, h2 = self.adaclip_bounds
        if not (0 <= b1 < 1 and 0 <= b2 < 1 and 0 < h1 < h2):
            raise ConfigError("adaclip_betas must lie in [0, 1) and adaclip_bounds satisfy 0 < h1 < h2")

    @property
    def canonical_variant(self) -> str:
        return canonical_variant(self.variant)

    @property
    def noise_mode(self) -> str:
        """'secure' or 'seeded (reproducible, NOT private)'."""
        return NOISE_SECURE if self.noise_seed is None else NOISE_SEEDED

    def sample_rate(self, n: int) -> float:
        return check_rate(self.batch_size / n)

    def planned_steps(self, n: int) -> int:
        if self.steps is not None:
            return int(self.steps)
        return max(1, round(self.epochs * n / self.batch_size))


# --------------------------------------------------------------------------- the DP-SGD step


@dataclass
class StepInfo:
    """What one DP-SGD step did (scalars, for traces and plots)."""

    step: int
    batch: int
    clip: float
    sensitivity: float
    sigma: float          # noise multiplier charged to the accountant
    noise_std: float      # std of the noise added to the gradient sum
    max_norm: float
    mean_norm: float
    clipped_fraction: float


QUANTILE_COUNT_SENSITIVITY = 0.5


def quantile_gradient_multiplier(sigma: float, count_std: float) -> float:
    """The gradient's noise multiplier under quantile clipping (Andrew et al. 2021, Thm. 1):
    sigma_grad = (sigma^-2 - (2 sigma_b)^-2)^-1/2, so that the gradient sum (sensitivity 1
    in units of C) and the shifted count (sensitivity 1/2, noise std sigma_b) together cost
    exactly one Gaussian step with multiplier sigma."""
    rest = sigma ** -2 - (QUANTILE_COUNT_SENSITIVITY / count_std) ** 2
    if not rest > 0:
        raise ConfigError(f"quantile clipping: the count noise std {count_std:g} must exceed "
                          f"sigma / 2 = {sigma / 2:g}")
    return rest ** -0.5


def effective_noise_multiplier(grad_multiplier: float, count_std: float,
                               count_sensitivity: float) -> float:
    """The noise multiplier of one Gaussian step equivalent to releasing the gradient sum
    (multiplier `grad_multiplier`, sensitivity 1) and a count of sensitivity
    `count_sensitivity` with noise std `count_std`: (sigma_g^-2 + (s / sigma_b)^2)^-1/2
    (Gaussian mechanisms compose by adding their squared sensitivity-to-noise ratios)."""
    return (grad_multiplier ** -2 + (count_sensitivity / count_std) ** 2) ** -0.5


def noise_generator(cfg: DPConfig, device: torch.device | str, warn: bool = True) -> torch.Generator:
    """The generator of DP noise and sampling: seeded from the OS's CSPRNG by default, or
    from `cfg.noise_seed` (reproducible, NOT private; warns)."""
    gen = torch.Generator(device=device)
    if cfg.noise_seed is None:
        return gen.manual_seed(secrets.randbits(63))
    if warn:
        warnings.warn(f"DP noise seeded with noise_seed={cfg.noise_seed}: the run is reproducible but "
                  "NOT private (anyone who knows the seed can remove the noise)", UserWarning,
                  stacklevel=3)
    return gen.manual_seed(int(cfg.noise_seed))


class DPSGD:
    """A DP-SGD optimiser for one classifier: `privatize(x, y)` returns the sanitised
    gradient a step would release; `step(x, y)` also applies it and charges the ledger.

    Args:
        clf: the model (no BatchNorm; see `check_dp_model`).
        cfg: DPConfig.
        n: training-set size (sets q = batch_size / n).
        steps: planned number of steps T for the decay schedules (None = cfg's).
        engine: the per-example gradient engine (None = `make_engine(clf, cfg.engine)`).
    """

    def __init__(self, clf: Classifier, cfg: DPConfig, n: int, steps: int | None = None,
                 engine: _Engine | None = None) -> None:
        cfg.validate(n)
        check_dp_model(clf, fix=cfg.fix_batchnorm)
        self.clf, self.cfg, self.n = clf, cfg, n
        self.variant = cfg.canonical_variant
        self.q = cfg.sample_rate(n)
        self.T = steps or cfg.planned_steps(n)
        if engine is None:
            name = "vmap" if self.variant == "adaclip" and cfg.engine in ("auto", "ghost") else cfg.engine
            engine = make_engine(clf, name)
        self.engine = engine
        self.params = self.engine.params
        decay_c, self.l2max, decay_s = _DYNAMICS[self.variant]
        c_end = cfg.clip_final if cfg.clip_final is not None else min(2.0, cfg.clip / 2)
        s_end = cfg.sigma_final if cfg.sigma_final is not None else cfg.sigma / 2
        self.clip_sched = Decay(cfg.decay if decay_c else "constant", cfg.clip, min(c_end, cfg.clip),
                                self.T, cfg.half_period)
        self.sigma_sched = Decay((cfg.sigma_decay or cfg.decay) if decay_s else "constant", cfg.sigma,
                                 min(s_end, cfg.sigma), self.T, cfg.half_period)
        self.ledger = PrivacyLedger()
        self.t = 0
        self.expected_batch = self.q * n
        dev = clf.device
        self.gen = noise_generator(cfg, dev)
        self._qclip = float(cfg.clip)
        self._count_noise = cfg.count_noise if cfg.count_noise is not None else cfg.batch_size / 20
        self._ada: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None
        if self.variant == "adaclip":
            self._ada = ([torch.zeros_like(p) for p in self.params],
                         [torch.ones_like(p) for p in self.params])
        if cfg.optimizer == "adam":
            self.opt: torch.optim.Optimizer = torch.optim.Adam(self.params, lr=cfg.lr)
        else:
            self.opt = torch.optim.SGD(self.params, lr=cfg.lr, momentum=cfg.momentum)

    # -- schedule ---------------------------------------------------------------
    def clip_at(self, t: int) -> float:
        return self._qclip if self.variant == "quantile" else self.clip_sched(t)

    def sigma_at(self, t: int) -> float:
        """Noise multiplier charged to the accountant at step t: the schedule's sigma_t, or
        for quantile clipping the effective multiplier of the gradient and count releases
        together (Andrew et al. 2021, Thm. 1), which the noise split makes equal to it."""
        sigma_t = self.sigma_sched(t)
        if self.variant == "quantile":
            return effective_noise_multiplier(quantile_gradient_multiplier(sigma_t, self._count_noise),
                                              self._count_noise, QUANTILE_COUNT_SENSITIVITY)
        return sigma_t

    def sample(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A Poisson sample (each example kept with probability q)."""
        keep = torch.rand(x.shape[0], generator=self.gen, device=x.device) < self.q
        idx = keep.nonzero().flatten()
        return x[idx], y[idx]

    def _noise(self, like: torch.Tensor, std: float) -> torch.Tensor:
        return torch.randn(like.shape, generator=self.gen, device=like.device, dtype=like.dtype) * std

    # -- the mechanism ----------------------------------------------------------
    def privatize(self, x: torch.Tensor, y: torch.Tensor, t: int | None = None
                  ) -> tuple[list[torch.Tensor], StepInfo]:
        """Clip, sum and noise the per-example gradients of batch (x, y) as step t would
        (default: the next step); returns per-parameter gradients divided by the expected
        batch size, and the step's StepInfo. Does not change the model or the ledger."""
        t = self.t if t is None else t
        cfg = self.cfg
        b = x.shape[0]
        c_t = self.clip_at(t)
        sigma_t = self.sigma_at(t)
        if b == 0:
            sums = [torch.zeros_like(p) for p in self.params]
            s_t = c_t
            max_n = mean_n = frac = 0.0
        elif self.variant == "adaclip":
            sums, s_t, max_n, mean_n, frac = self._adaclip_sums(x, y, c_t)
        else:
            pe = self.engine.compute(self.clf, x, y)
            nsq = pe.norms_sq.clamp_min(0)
            total = nsq.sum(1).sqrt()
            m = nsq.shape[1]
            if cfg.per_layer:
                cm = c_t / math.sqrt(m)
                w = (cm / (nsq.sqrt() + 1e-6)).clamp(max=1.0)
                clipped = (nsq * w.pow(2)).sum(1).sqrt()
            else:
                w1 = (c_t / (total + 1e-6)).clamp(max=1.0)
                w = w1[:, None].expand(b, m)
                clipped = total * w1
            sums = pe.weighted_sum(w.contiguous())
            stats = torch.stack([total.max(), total.mean(), (total > c_t).float().mean(), clipped.max()])
            max_n, mean_n, frac, cmax = stats.tolist()
            s_t = min(cmax, c_t) if self.l2max else c_t
            if self.variant == "quantile":
                self._update_quantile_clip((total <= c_t).float().sum(), b)
        noise_mult = sigma_t
        if self.variant == "quantile":
            noise_mult = quantile_gradient_multiplier(self.sigma_sched(t), self._count_noise)
        if self.variant == "adaclip":
            grads = self._adaclip_finish(sums, sigma_t, c_t)
            std = sigma_t * c_t
        else:
            if self.l2max and b == 0:
                s_t = c_t
            std = noise_mult * s_t
            grads = [(s + self._noise(s, std)) / self.expected_batch for s in sums]
        info = StepInfo(step=t, batch=b, clip=c_t, sensitivity=s_t, sigma=sigma_t, noise_std=std,
                        max_norm=max_n, mean_norm=mean_n, clipped_fraction=frac)
        return grads, info

    def quantile_fraction(self, unclipped: float, batch: int) -> float:
        """The private estimate of the unclipped fraction (Andrew et al. 2021, Sec. 3):
        the sum of (1[||g_i|| <= C] - 1/2), sensitivity 1/2 under add/remove, plus
        N(0, sigma_b^2), divided by the expected batch size, plus 1/2."""
        shifted = float(unclipped) - 0.5 * batch
        noise = float(torch.randn((), generator=self.gen, device=self.gen.device)) * self._count_noise
        return (shifted + noise) / self.expected_batch + 0.5

    def _update_quantile_clip(self, unclipped: torch.Tensor, batch: int) -> None:
        frac = self.quantile_fraction(float(unclipped), batch)
        self._qclip *= math.exp(-self.cfg.clip_lr * (frac - self.cfg.target_quantile))

    def _adaclip_sums(self, x: torch.Tensor, y: torch.Tensor, c_t: float
                      ) -> tuple[list[torch.Tensor], float, float, float, float]:
        assert self._ada is not None
        pe = self.engine.compute(self.clf, x, y)
        assert pe.per_sample is not None
        per = pe.per_sample()
        mean, scale = self._ada
        b = x.shape[0]
        white = [(g - mu) / s for g, mu, s in zip(per, mean, scale)]
        wn = torch.sqrt(sum(t.reshape(b, -1).pow(2).sum(1) for t in white))
        gn = pe.norms_sq.sum(1).sqrt()
        w = (c_t / (wn + 1e-6)).clamp(max=1.0)
        sums = [torch.einsum("b,b...->...", w, t) for t in white]
        stats = torch.stack([gn.max(), gn.mean(), (wn > c_t).float().mean()]).tolist()
        return sums, c_t, stats[0], stats[1], stats[2]

    def _adaclip_finish(self, sums: list[torch.Tensor], sigma: float, c: float) -> list[torch.Tensor]:
        assert self._ada is not None
        mean, scale = self._ada
        b1, b2 = self.cfg.adaclip_betas
        h1, h2 = self.cfg.adaclip_bounds
        std = sigma * c
        out, var_new = [], []
        for s, mu, sc in zip(sums, mean, scale):
            wbar = (s + self._noise(s, std)) / self.expected_batch
            ghat = sc * wbar + mu
            out.append(ghat)
            var_new.append(self.expected_batch * (ghat - mu) ** 2)  # per-example variance
        if not hasattr(self, "_ada_var"):
            self._ada_var = [v.clamp(h1, h2) for v in var_new]
        else:
            self._ada_var = [(b2 * v + (1 - b2) * vn).clamp(h1, h2) for v, vn in zip(self._ada_var, var_new)]
        for mu, g in zip(mean, out):
            mu.mul_(b1).add_(g, alpha=1 - b1)
        # s_j proportional to b_j^(1/4), normalised so that E||(g - m)/s||^2 = C^2
        root = sum(v.sqrt().sum() for v in self._ada_var)
        for sc, v in zip(scale, self._ada_var):
            sc.copy_(v.pow(0.25) * root.sqrt() / c)
        return out

    def step(self, x: torch.Tensor, y: torch.Tensor) -> StepInfo:
        """One DP-SGD step on the already-sampled batch (x, y); charges the ledger."""
        self.clf.train()
        grads, info = self.privatize(x, y)
        self.apply(grads, info)
        return info

    def apply(self, grads: list[torch.Tensor], info: StepInfo,
              optimizer: torch.optim.Optimizer | None = None) -> None:
        """Release the sanitised gradients of `privatize`: set them as the parameters'
        gradients, take a step of `optimizer` (None = this DPSGD's own) and charge the
        ledger for the step."""
        opt = self.opt if optimizer is None else optimizer
        for p, g in zip(self.params, grads):
            p.grad = g
        opt.step()
        opt.zero_grad(set_to_none=True)
        self.ledger.step(self.q, info.sigma)
        self.t += 1

    def epsilon_if_step(self, accountant: str | None = None) -> float:
        """The epsilon the ledger would show after one more step (budget check)."""
        acc = accountant or self.cfg.accountant
        trial = PrivacyLedger(self.ledger.rdp_orders, self.ledger.moments_orders)
        trial.groups = [type(g)(g.q, g.sigma, g.count) for g in self.ledger.groups]
        trial._rdp, trial._mom, trial._rho = (self.ledger._rdp.copy(), self.ledger._mom.copy(),
                                              self.ledger._rho)
        trial._cache = self.ledger._cache
        trial.step(self.q, self.sigma_at(self.t))
        return trial.epsilon(self.cfg.delta, acc)

    def budget_steps(self, accountant: str | None = None) -> int:
        """The most steps of the planned schedule (<= T) whose epsilon under `accountant`
        stays within the target (bisection over the step count; the noise schedule is fixed
        in advance, so this is known before training; used for the costly pld and prv)."""
        acc = accountant or self.cfg.accountant
        target = self.cfg.target_epsilon
        assert target is not None

        def eps(k: int) -> float:
            led = PrivacyLedger()
            for t in range(k):
                led.step(self.q, self.sigma_at(t))
            return led.bound(self.cfg.delta, acc)

        if eps(self.T) <= target:
            return self.T
        lo, hi = 0, self.T          # eps(lo) <= target < eps(hi)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if eps(mid) <= target:
                lo = mid
            else:
                hi = mid
        return lo

    def close(self) -> None:
        self.engine.close()


# --------------------------------------------------------------------------- training loop


@dataclass
class DPTrainResult:
    history: list[dict[str, float]] = field(default_factory=list)
    trace: dict[str, list[float]] = field(default_factory=dict)
    steps: int = 0
    planned_steps: int = 0
    stop_reason: str = "steps"
    epsilon: dict[str, float | None] = field(default_factory=dict)
    delta: float = 0.0
    sample_rate: float = 0.0
    test_accuracy: float | None = None
    train_accuracy: float | None = None
    wall_time: float = 0.0
    engine: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    schedule: list[list[float]] = field(default_factory=list)
    privacy: dict[str, Any] = field(default_factory=dict)
    dataset_size: int = 0

    def privacy_record(self) -> dict[str, Any]:
        """What a checkpoint's metadata records about the privacy of its training."""
        c = self.config
        return {"mechanism": "DP-SGD (Poisson-subsampled Gaussian)", "variant": c.get("variant"),
                "sigma": c.get("sigma"), "clip": c.get("clip"), "delta": self.delta,
                "decay": c.get("decay"), "per_layer": c.get("per_layer"),
                "batch_size": c.get("batch_size"), "sample_rate": self.sample_rate,
                "steps": self.steps, "planned_steps": self.planned_steps,
                "stop_reason": self.stop_reason, "target_epsilon": c.get("target_epsilon"),
                "budget_accountant": c.get("accountant"), "epsilon": self.epsilon,
                "headline": self.privacy.get("headline"),
                "accountants": self.privacy.get("accountants"),
                "dataset_size": self.dataset_size, "adjacency": ADJACENCY,
                "poisson": c.get("poisson", True),
                "noise": NOISE_SECURE if c.get("noise_seed") is None else NOISE_SEEDED,
                "sigma_range": [min(self.trace.get("sigma", [0]) or [0]),
                                max(self.trace.get("sigma", [0]) or [0])],
                "schedule": self.schedule}


def train_dp(clf: Classifier, train: Dataset, test: Dataset | None = None, cfg: DPConfig = DPConfig(),
             on_eval: Callable[[dict[str, float]], None] | None = None) -> DPTrainResult:
    """Train `clf` in place with DP-SGD (variant `cfg.variant`) for the planned number of
    steps, stopping early when the next step would exceed `cfg.target_epsilon` or when test
    accuracy reaches `cfg.target_accuracy`. Returns history, a per-step trace (C_t, S_t,
    sigma_t, gradient norms) and the epsilon spent under every accountant."""
    cfg.validate(len(train))
    if tuple(train.input_shape) != clf.spec.shape:
        raise InputError(f"data shape {train.input_shape} does not match the model's {clf.spec.shape}")
    if train.num_classes > clf.num_classes:
        raise ConfigError(f"data has {train.num_classes} classes, the model {clf.num_classes}")
    if cfg.target_accuracy is not None and test is None:
        raise ConfigError("target_accuracy needs a test set to measure accuracy on")
    torch.manual_seed(cfg.seed)
    dev = clf.device
    x_all, y_all = train.x.to(dev), train.y.to(dev)
    n = len(train)
    dp = DPSGD(clf, cfg, n)
    res = DPTrainResult(planned_steps=dp.T, delta=cfg.delta, sample_rate=dp.q, config=asdict(cfg),
                        engine=type(dp.engine).__name__.replace("Engine", "").lower())
    res.config["variant"] = dp.variant
    res.dataset_size = n
    steps_per_epoch = max(1, round(1 / dp.q))
    eval_every = cfg.eval_every or steps_per_epoch
    keys = ("clip", "sensitivity", "sigma", "noise_std", "max_norm", "mean_norm", "batch")
    res.trace = {k: [] for k in keys}
    shuffle_gen = noise_generator(cfg, torch.device("cpu"), warn=False)
    budget_limit = (dp.budget_steps() if cfg.target_epsilon is not None
                    and cfg.accountant in ("pld", "prv") else None)
    order: torch.Tensor | None = None
    start = time.perf_counter()
    try:
        with task(f"DP-SGD {dp.variant}", dp.T, cfg.progress) as bar:
            while dp.t < dp.T:
                if budget_limit is not None:
                    over = dp.t >= budget_limit
                else:
                    over = cfg.target_epsilon is not None and dp.epsilon_if_step() > cfg.target_epsilon
                if over:
                    res.stop_reason = "budget"
                    break
                if cfg.poisson:
                    xb, yb = dp.sample(x_all, y_all)
                else:
                    pos = (dp.t % steps_per_epoch) * cfg.batch_size
                    if pos == 0 or order is None:
                        order = torch.randperm(n, generator=shuffle_gen).to(dev)
                    idx = order[pos:pos + cfg.batch_size]
                    xb, yb = x_all[idx], y_all[idx]
                info = dp.step(xb, yb)
                for k in keys:
                    res.trace[k].append(float(getattr(info, k)))
                bar.advance(1, info=f"C {info.clip:.2f} S {info.sensitivity:.2f} sigma {info.sigma:.2f}")
                if dp.t % eval_every == 0 or dp.t == dp.T:
                    clf.eval()
                    row: dict[str, float] = {"step": dp.t, "epoch": dp.t * dp.q,
                                             "epsilon": dp.ledger.bound(cfg.delta, cfg.accountant)}
                    if test is not None:
                        row["test_accuracy"] = clf.accuracy(test.x, test.y)
                    res.history.append(row)
                    if on_eval:
                        on_eval(row)
                    if (cfg.target_accuracy is not None
                            and row.get("test_accuracy", 0.0) >= cfg.target_accuracy):
                        res.stop_reason = "target_accuracy"
                        break
    finally:
        dp.close()
    clf.eval()
    res.steps = dp.t
    res.wall_time = time.perf_counter() - start
    res.privacy = dp.ledger.summary(cfg.delta)
    res.epsilon = {k: v["epsilon"] for k, v in res.privacy["accountants"].items()}
    res.schedule = [[g.q, g.sigma, g.count] for g in dp.ledger.groups]
    res.train_accuracy = clf.accuracy(train.x, train.y)
    res.test_accuracy = clf.accuracy(test.x, test.y) if test is not None else None
    return res
