"""The membership experiment of Yeom et al. (2018), as a game.

Repeat `trials` times: draw b uniformly from {0, 1}; draw z from the training set S when
b = 0 (member) and from the distribution D (here: the non-member pool) when b = 1; the
attacker outputs a guess; the experiment succeeds when the guess equals b. The attacker
may be randomised: it is described by its probability of answering "member" on each
candidate. The advantage is 2 Pr[success] - 1 (= TPR - FPR in expectation), reported with
a Wilson 95% interval on Pr[success] mapped to the advantage scale.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

from bastion.core import ConfigError, InputError


@dataclass
class ExperimentResult:
    trials: int
    successes: int
    accuracy: float
    advantage: float
    ci_low: float
    ci_high: float
    confidence: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _wilson(k: int, n: int, z: float) -> tuple[float, float]:
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return centre - half, centre + half


def membership_experiment(p_member_in: torch.Tensor, p_member_out: torch.Tensor, trials: int = 10_000,
                          seed: int = 0, confidence: float = 0.95) -> ExperimentResult:
    """Play the membership game.

    Args:
        p_member_in: probability that the attacker says "member" for each training example
            (0/1 for a deterministic attack).
        p_member_out: the same for each non-member.
        trials: number of rounds.
        seed: seeds b, z and the attacker's coins.
        confidence: level of the interval.
    """
    if trials < 1:
        raise ConfigError(f"trials must be >= 1, got {trials}")
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must lie in (0, 1), got {confidence}")
    pin, pout = p_member_in.double().flatten().cpu(), p_member_out.double().flatten().cpu()
    if pin.numel() == 0 or pout.numel() == 0:
        raise InputError("the experiment needs at least one member and one non-member")
    for t in (pin, pout):
        if bool((t < 0).any()) or bool((t > 1).any()) or bool(t.isnan().any()):
            raise InputError("attacker probabilities must lie in [0, 1]")
    g = torch.Generator().manual_seed(seed)
    b = torch.randint(0, 2, (trials,), generator=g)  # 0 = member
    zi = torch.randint(0, pin.numel(), (trials,), generator=g)
    zo = torch.randint(0, pout.numel(), (trials,), generator=g)
    p = torch.where(b == 0, pin[zi], pout[zo])
    says_member = torch.rand(trials, generator=g, dtype=torch.float64) < p
    guess = torch.where(says_member, 0, 1)
    k = int((guess == b).sum())
    z = float(torch.distributions.Normal(0, 1).icdf(torch.tensor(0.5 + confidence / 2)))
    lo, hi = _wilson(k, trials, z)
    acc = k / trials
    return ExperimentResult(trials, k, acc, 2 * acc - 1, 2 * lo - 1, 2 * hi - 1, confidence)
