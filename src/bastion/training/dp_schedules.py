"""Decay policies for the clipping bound C_t and the noise scale sigma_t of DP-SGD
(dissertation ch. 4, Sec. 4.4.1: DECAY(v0, gamma, t)).

All three start at `v0` at step 0 and end at `v_end` at the last step T - 1; the rate
`gamma` is derived from the end value so one number (`v_end`) controls every policy:

- linear:       v_t = v0 (1 - gamma t),           gamma = (1 - v_end / v0) / (T - 1)
- exponential:  v_t = v0 exp(-gamma t),           gamma = ln(v0 / v_end) / (T - 1)
- cyclic:       a decaying triangular wave (after the "triangular2" cyclic learning rate of
                Smith 2017): v_t = v_end + (E_t - v_end) |1 - (t mod 2V) / V|, where the
                envelope E_t is the linear policy and V the half-period (default T / 10,
                i.e. five cycles). Every cycle falls to v_end and climbs back to a lower peak.
- constant:     v_t = v0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from bastion.core import ConfigError, unknown_name

POLICIES: tuple[str, ...] = ("constant", "linear", "exp", "cyclic")
_ALIASES = {"exponential": "exp", "none": "constant", "fixed": "constant"}


def canonical_policy(name: str) -> str:
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in POLICIES:
        raise unknown_name("decay policy", name, POLICIES)
    return key


@dataclass(frozen=True)
class Decay:
    """A decay schedule v_t over `steps` steps (see the module docstring).

    Attributes:
        policy: 'constant', 'linear', 'exp' or 'cyclic'.
        start: v0 (> 0).
        end: value at the last step (0 < end <= start).
        steps: T, the planned number of steps (>= 1).
        half_period: V of the cyclic policy (None = max(1, T // 10)).
    """

    policy: str
    start: float
    end: float
    steps: int
    half_period: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "policy", canonical_policy(self.policy))
        if not self.start > 0:
            raise ConfigError(f"decay start value must be positive, got {self.start}")
        if self.policy != "constant" and not 0 < self.end <= self.start:
            raise ConfigError(f"decay end value must lie in (0, start={self.start}], got {self.end}")
        if self.steps < 1:
            raise ConfigError(f"decay needs steps >= 1, got {self.steps}")
        if self.half_period is not None and self.half_period < 1:
            raise ConfigError(f"cyclic half period must be >= 1, got {self.half_period}")

    @property
    def gamma(self) -> float:
        """The decay rate of the linear / exponential policies."""
        span = max(self.steps - 1, 1)
        if self.policy == "exp":
            return math.log(self.start / self.end) / span
        return (1 - self.end / self.start) / span

    def __call__(self, t: int) -> float:
        t = min(max(int(t), 0), self.steps - 1)
        if self.policy == "constant":
            return self.start
        if self.policy == "exp":
            return self.start * math.exp(-self.gamma * t)
        linear = self.start * (1 - self.gamma * t)
        if self.policy == "linear":
            return linear
        v = self.half_period or max(1, self.steps // 10)
        tri = abs(1 - (t % (2 * v)) / v)
        return self.end + (linear - self.end) * tri
