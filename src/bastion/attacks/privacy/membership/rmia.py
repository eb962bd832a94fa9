"""RMIA, the robust membership inference attack (Zarifzadeh, Liu, Maddison & Shokri,
"Low-Cost High-Power Membership Inference Attacks", ICML 2024).

The attack compares the target's likelihood of x with its likelihood of population
examples z, both normalised by reference models:

    LR(x, z) = [Pr(x | theta) / Pr(x)] / [Pr(z | theta) / Pr(z)]
    score(x) = Pr_z[ LR(x, z) >= gamma ]

where Pr(. | theta) is the target's probability of the true label and Pr(.) its average
over reference models. Offline (reference models never trained on x), the average over
OUT models under-estimates Pr(x), so it is corrected with the linear approximation
Pr(x) = ((1 + a) Pr_OUT(x) + (1 - a)) / 2 (the paper's offline rule; a is tuned per
setting, 0.3 by default here). It works with very few reference models (even 1-2).
Higher score = more likely member.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bastion.attacks.privacy.membership.signals import SignalMatrix
from bastion.core import ConfigError, InputError


@dataclass(frozen=True)
class RMIAConfig:
    """Attributes:
        gamma: likelihood-ratio threshold of the pairwise test (1.0).
        offline_a: the offline correction coefficient a in [0, 1] (0.3); a = 1 uses the
            plain OUT average.
        online: average over all reference models (IN and OUT) instead of the offline
            OUT-only rule (needs a pool containing the candidates).
        max_population: number of population examples z used (random subset; None = all).
        seed: seeds the subset of z.
    """

    gamma: float = 1.0
    offline_a: float = 0.3
    online: bool = False
    max_population: int | None = 5000
    seed: int = 0

    def validate(self) -> None:
        if not self.gamma > 0:
            raise ConfigError(f"RMIA gamma must be positive, got {self.gamma}")
        if not 0 <= self.offline_a <= 1:
            raise ConfigError(f"RMIA offline_a must lie in [0, 1], got {self.offline_a}")
        if self.max_population is not None and self.max_population < 1:
            raise ConfigError("max_population must be >= 1")


def _reference_prob(ref: SignalMatrix, cfg: RMIAConfig) -> torch.Tensor:
    """Pr(x) per example and query, [N, Q]."""
    p = ref.confidence.double()
    if cfg.online:
        return p.mean(1)
    out = (~ref.member).unsqueeze(-1).double()
    cnt = out.sum(1)
    if bool((cnt < 1).any()):
        raise ConfigError(f"offline RMIA needs at least one OUT reference model per example "
                          f"(got {ref.m} models, some examples are IN for all of them)")
    p_out = (p * out).sum(1) / cnt
    return 0.5 * ((1 + cfg.offline_a) * p_out + (1 - cfg.offline_a))


def rmia(target: SignalMatrix, reference: SignalMatrix, cfg: RMIAConfig = RMIAConfig(),
         population: tuple[SignalMatrix, SignalMatrix] | None = None) -> torch.Tensor:
    """RMIA scores [N] (higher = member).

    Args:
        target: the target model's signals on the candidates (one column).
        reference: reference models' signals on the same candidates.
        population: (target signals, reference signals) on population examples z; None
            uses the candidates themselves as z (a standard shortcut when the candidate
            set is a balanced draw from the population).
    """
    cfg.validate()
    if target.m != 1:
        raise InputError(f"the target signal matrix must have one model column, got {target.m}")
    if reference.m < 1:
        raise ConfigError("RMIA needs at least one reference model")
    if target.n != reference.n or target.q != reference.q:
        raise InputError("target and reference signals must cover the same examples and queries")
    ratio_x = target.confidence[:, 0].double() / _reference_prob(reference, cfg).clamp_min(1e-30)
    if population is None:
        ratio_z = ratio_x
    else:
        zt, zr = population
        if zt.m != 1 or zt.n != zr.n or zt.q != target.q or zr.m != reference.m:
            raise InputError("population signals must match the target (1 model) and reference models")
        ratio_z = zt.confidence[:, 0].double() / _reference_prob(zr, cfg).clamp_min(1e-30)
    if cfg.max_population is not None and ratio_z.shape[0] > cfg.max_population:
        g = torch.Generator().manual_seed(cfg.seed)
        ratio_z = ratio_z[torch.randperm(ratio_z.shape[0], generator=g)[:cfg.max_population]]
    # fraction of z with ratio_z <= ratio_x / gamma, per query, by binary search
    scores = []
    for k in range(ratio_x.shape[1]):
        zs = ratio_z[:, k].sort().values.contiguous()
        cnt = torch.searchsorted(zs, (ratio_x[:, k] / cfg.gamma).contiguous(), right=True)
        scores.append(cnt.double() / zs.numel())
    return torch.stack(scores, 1).mean(1).float()
