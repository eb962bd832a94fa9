"""LiRA, the likelihood-ratio attack (Carlini et al., "Membership Inference Attacks From
First Principles", IEEE S&P 2022).

For each candidate (x, y), shadow models trained with x (IN) and without x (OUT) give two
empirical distributions of the logit-scaled confidence phi = log(p_y / (1 - p_y)), which
is close to Gaussian. Then:

- online: fit N(mu_in, s_in^2) and N(mu_out, s_out^2) per example and score the target's
  phi_obs by the log-likelihood ratio log N(phi_obs; mu_in, s_in) - log N(phi_obs; mu_out, s_out);
- offline: only OUT models are needed; one-sided test, score log Pr[Z < phi_obs] for
  Z ~ N(mu_out, s_out^2) (a member's confidence is unusually high).

Variance: per example (the paper's default with many shadows), or one global variance
pooled over all examples ('global'; the paper's fix for few shadow models, < 64). With
multiple queries (augmentations) each query gets its own Gaussian and the per-query scores
are averaged. Higher score = more likely member.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from bastion.attacks.privacy.membership.signals import SignalMatrix
from bastion.core import ConfigError, InputError

VARIANCES = ("auto", "per-example", "global")
# Carlini et al.: a fixed (global) variance is better below ~64 shadow models, i.e. below
# ~32 models per fitted Gaussian (IN or OUT).
AUTO_PER_EXAMPLE_MIN = 32


@dataclass(frozen=True)
class LiRAConfig:
    """Attributes:
        variance: 'per-example', 'global', or 'auto' (per-example when each Gaussian is
            fitted on >= 32 models on average, i.e. >= 64 shadows online, else global,
            following the paper's observation).
        min_models: shadow models an example needs on each side (IN/OUT) for its own
            variance; examples with fewer fall back to the global variance.
        eps: variance floor (avoids division by zero when all shadows agree).
    """

    variance: str = "auto"
    min_models: int = 2
    eps: float = 1e-6

    def validate(self) -> None:
        if self.variance not in VARIANCES:
            raise ConfigError(f"unknown LiRA variance {self.variance!r}; valid: {', '.join(VARIANCES)}")
        if self.min_models < 2:
            raise ConfigError("min_models must be >= 2 (a variance needs two values)")


def _check(target: SignalMatrix, shadows: SignalMatrix) -> None:
    if target.m != 1:
        raise InputError(f"the target signal matrix must have one model column, got {target.m}")
    if target.n != shadows.n:
        raise InputError(f"target has {target.n} examples, the shadow signals {shadows.n}: "
                         "score both on the same candidates")
    if target.q != shadows.q:
        raise InputError(f"target was queried {target.q} times per example, the shadows {shadows.q}; "
                         "use the same augmentation for both")
    if not torch.equal(target.labels, shadows.labels):
        raise InputError("target and shadow signals are for different labels/examples")


def _moments(phi: torch.Tensor, mask: torch.Tensor, cfg: LiRAConfig, per_example: bool
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked mean [N, Q] and std [N, Q] of phi [N, M, Q] over models where mask [N, M]."""
    w = mask.unsqueeze(-1).to(phi.dtype)
    cnt = w.sum(1)  # [N, 1]
    mean = (phi * w).sum(1) / cnt.clamp_min(1)
    resid2 = ((phi - mean.unsqueeze(1)) ** 2) * w
    # global: pooled within-example variance over all examples (per query)
    dof = (cnt - 1).clamp_min(0).sum(0)
    pooled = resid2.sum((0, 1)) / dof.clamp_min(1)
    if not bool((dof > 0).all()):  # one model per example: spread across examples instead
        pooled = torch.stack([phi[..., k][mask].var() if int(mask.sum()) > 1 else phi.new_tensor(1.0)
                              for k in range(phi.shape[-1])])
    var = pooled.expand_as(mean).clone()
    if per_example:
        own = resid2.sum(1) / (cnt - 1).clamp_min(1)
        ok = (cnt >= cfg.min_models).expand_as(own)
        var = torch.where(ok, own, var)
    return mean, var.clamp_min(cfg.eps).sqrt()


def _normal_logpdf(x: torch.Tensor, mu: torch.Tensor, sd: torch.Tensor) -> torch.Tensor:
    return -0.5 * ((x - mu) / sd) ** 2 - sd.log() - 0.5 * math.log(2 * math.pi)


def _use_per_example(cfg: LiRAConfig, models_per_gaussian: float) -> bool:
    return cfg.variance == "per-example" or (cfg.variance == "auto"
                                             and models_per_gaussian >= AUTO_PER_EXAMPLE_MIN)


def lira_online(target: SignalMatrix, shadows: SignalMatrix, cfg: LiRAConfig = LiRAConfig()) -> torch.Tensor:
    """Online LiRA scores [N] (higher = member). Every example needs at least one IN and
    one OUT shadow model (train shadows on random halves of a pool that contains the
    candidates)."""
    cfg.validate()
    _check(target, shadows)
    n_in, n_out = shadows.member.sum(1), (~shadows.member).sum(1)
    if shadows.m < 2 or bool((n_in < 1).any()) or bool((n_out < 1).any()):
        raise ConfigError(f"online LiRA needs IN and OUT shadow models for every example (got {shadows.m} "
                          f"models; min IN {int(n_in.min())}, min OUT {int(n_out.min())}); train at least 2 "
                          "shadows on halves of a pool containing the candidates, or use lira-offline")
    per_ex = _use_per_example(cfg, float(torch.minimum(n_in, n_out).float().mean()))
    phi = shadows.phi.double()
    mu_in, sd_in = _moments(phi, shadows.member, cfg, per_ex)
    mu_out, sd_out = _moments(phi, ~shadows.member, cfg, per_ex)
    obs = target.phi[:, 0].double()
    llr = _normal_logpdf(obs, mu_in, sd_in) - _normal_logpdf(obs, mu_out, sd_out)
    return llr.mean(-1).float()


def lira_offline(target: SignalMatrix, shadows: SignalMatrix, cfg: LiRAConfig = LiRAConfig()) -> torch.Tensor:
    """Offline LiRA scores [N]: log Pr[Z <= phi_obs], Z ~ N(mu_out, s_out^2), from OUT
    models only (IN entries of `shadows.member` are ignored; reference models trained on
    data disjoint from the candidates are all OUT)."""
    cfg.validate()
    _check(target, shadows)
    out = ~shadows.member
    n_out = out.sum(1)
    if bool((n_out < 1).any()):
        raise ConfigError(f"offline LiRA needs at least one OUT model per example (min {int(n_out.min())} of "
                          f"{shadows.m}); train more shadow models")
    per_ex = _use_per_example(cfg, float(n_out.float().mean()))
    mu, sd = _moments(shadows.phi.double(), out, cfg, per_ex)
    z = (target.phi[:, 0].double() - mu) / sd
    return torch.special.log_ndtr(z).mean(-1).float()
