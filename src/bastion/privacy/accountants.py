"""Privacy accountants for DP-SGD (the Poisson-subsampled Gaussian mechanism).

Six ways to turn a training run -- T steps, each sampling every example with probability
q and adding Gaussian noise of standard deviation sigma * S to a sum of gradients clipped
to sensitivity S -- into an (epsilon, delta) guarantee:

- ``basic``     basic composition: eps = sum_t eps_t.
- ``advanced``  advanced composition (Dwork, Rothblum & Vadhan 2010), heterogeneous form:
                eps = sqrt(2 ln(1/delta) sum_t eps_t^2) + sum_t eps_t (e^eps_t - 1).
- ``optimal``   the composition bound of Kairouz, Oh & Viswanath (2015, Thm. 3.4/3.5):
                min{ sum eps_t,
                     sum eps_t (e^eps_t - 1)/(e^eps_t + 1) + sqrt(2 V ln(e + sqrt(V)/delta)),
                     sum eps_t (e^eps_t - 1)/(e^eps_t + 1) + sqrt(2 V ln(1/delta)) },
                V = sum eps_t^2.
- ``zcdp``      zero-concentrated DP (Bun & Steinke 2016) with the per-step
                rho_t = q^2 / sigma_t^2 used by the dissertation (Yu et al. 2019):
                eps = rho + 2 sqrt(rho ln(1/delta)), rho = sum_t rho_t.
- ``moments``   the moments accountant (Abadi et al. 2016): Renyi DP of the subsampled
                Gaussian (Mironov, Talwar & Zhang 2019) at the integer orders 2..255, summed
                over steps, with the classic conversion eps = min_a RDP(a) + ln(1/delta)/(a-1).
- ``rdp``       the same RDP curve on Opacus's order grid with the tighter conversion of
                Balle et al. (2020, Thm. 21):
                eps = min_a RDP(a) + ln((a-1)/a) - (ln delta + ln a)/(a-1).

The three composition theorems need a per-step (eps_t, delta)-DP guarantee. We use the
Gaussian mechanism's classic calibration eps0 = sqrt(2 ln(1.25/delta)) / sigma_t amplified
by Poisson subsampling: eps_t = ln(1 + q (e^eps0 - 1)). The same delta is used per step and
as the slack of the composition theorem, which is the convention that reproduces the
published figures (q=0.01, sigma=6, delta=1e-5, T=10000: basic 123.457 vs 123.354,
advanced 7.458 vs 7.450, optimal 6.686 vs 6.740 -- the published value omits the third
term of Kairouz's minimum; see docs/dp.md). Note that the classic calibration is only a
valid per-step guarantee for eps0 <= 1 (sigma >~ 4.85 at delta = 1e-5); below that the three
composition figures are reported for comparison only, and the RDP-based accountants remain
exact. A dynamic noise scale is accounted for by composing the per-step quantities of the
actual sigma_t sequence (every accountant here composes heterogeneous steps).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import special

from bastion.core import ConfigError, unknown_name

ACCOUNTANTS: tuple[str, ...] = ("basic", "advanced", "optimal", "zcdp", "moments", "rdp")
LABELS: dict[str, str] = {
    "basic": "basic composition",
    "advanced": "advanced composition",
    "optimal": "optimal composition (Kairouz et al.)",
    "zcdp": "zCDP",
    "moments": "moments accountant (RDP, classic conversion)",
    "rdp": "RDP, tight conversion (Balle et al. 2020; = Opacus)",
}
#: The order grid of Opacus / TF Privacy (1.1 .. 10.9 in steps of 0.1, then 12 .. 63).
RDP_ORDERS: tuple[float, ...] = tuple([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)))
#: Integer orders of the moments accountant (Abadi et al. used lambda up to 256).
MOMENTS_ORDERS: tuple[int, ...] = tuple(range(2, 256))


# --------------------------------------------------------------------------- validation


def check_delta(delta: float) -> float:
    if not isinstance(delta, (int, float)) or not 0.0 < float(delta) < 1.0:
        raise ConfigError(f"delta must lie in (0, 1), got {delta!r}; the usual choice is below "
                          "1/n for n training examples (e.g. 1e-5)")
    return float(delta)


def check_sigma(sigma: float) -> float:
    if not isinstance(sigma, (int, float)) or not float(sigma) > 0 or not math.isfinite(sigma):
        raise ConfigError(f"the noise multiplier sigma must be a positive finite number, got "
                          f"{sigma!r}")
    return float(sigma)


def check_rate(q: float) -> float:
    if not isinstance(q, (int, float)) or not 0.0 < float(q) <= 1.0:
        raise ConfigError(f"the sampling rate q must lie in (0, 1], got {q!r} (q = batch size / "
                          "data set size)")
    return float(q)


def check_accountant(name: str) -> str:
    if name not in ACCOUNTANTS:
        raise unknown_name("accountant", name, ACCOUNTANTS)
    return name


# --------------------------------------------------------------------------- RDP of the SGM


def _log_binom(n: np.ndarray, k: np.ndarray) -> np.ndarray:
    return special.gammaln(n + 1) - special.gammaln(k + 1) - special.gammaln(n - k + 1)


@functools.lru_cache(maxsize=16)
def _int_table(orders: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a, i, log C(a, i) or -inf where i > a) for the integer orders: depends on the
    orders only, so a dynamic-sigma run computes it once instead of at every new sigma."""
    a = np.asarray(orders, dtype=np.float64)[:, None]
    i = np.arange(int(max(orders)) + 1, dtype=np.float64)[None, :]
    log_binom = np.where(i <= a, _log_binom(a, np.minimum(i, a)), -np.inf)
    return a, i, log_binom


def _log_a_int(q: float, sigma: float, orders: np.ndarray) -> np.ndarray:
    """log A_a for integer orders a (Mironov et al. 2019, Sec. 3.3), all orders at once:
    A_a = sum_{i=0}^{a} C(a, i) (1-q)^(a-i) q^i exp((i^2 - i) / (2 sigma^2))."""
    a, i, log_binom = _int_table(tuple(float(o) for o in orders))
    lq = math.log1p(-q)
    terms = log_binom + (i * (math.log(q) - lq) + (i * i - i) / (2.0 * sigma * sigma))
    top = terms.max(axis=1, keepdims=True)
    return (np.log(np.exp(terms - top).sum(axis=1)) + top[:, 0]) + a[:, 0] * lq


@functools.lru_cache(maxsize=256)
def _frac_coef(orders: tuple[float, ...], start: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """log |C(a, i)| and its sign for the block i = start .. start + block - 1 (cached: it
    depends on the orders only)."""
    a = np.asarray(orders, dtype=np.float64)[:, None]
    i = np.arange(start, start + block, dtype=np.float64)[None, :]
    coef = special.binom(a, i)
    with np.errstate(divide="ignore"):
        return np.log(np.abs(coef)), np.sign(coef)


def _log_a_frac(q: float, sigma: float, orders: np.ndarray) -> np.ndarray:
    """log A_a for fractional orders (Mironov et al. 2019, Sec. 3.3): the integral split at
    z0 = sigma^2 ln(1/q - 1) + 1/2 and expanded in the generalised binomial series, summed
    in blocks until every term is below e^-30 (the series' tail is negligible)."""
    a = orders.astype(np.float64)[:, None]
    key = tuple(float(o) for o in orders)
    z0 = sigma * sigma * math.log(1.0 / q - 1.0) + 0.5
    pos0 = np.full(len(orders), -np.inf)
    neg0 = np.full(len(orders), -np.inf)
    pos1 = pos0.copy()
    neg1 = pos0.copy()
    start, block = 0, 64
    while True:
        i = np.arange(start, start + block, dtype=np.float64)[None, :]
        j = a - i
        log_coef, sign = _frac_coef(key, start, block)
        log_t0 = log_coef + i * math.log(q) + j * math.log1p(-q)
        log_t1 = log_coef + j * math.log(q) + i * math.log1p(-q)
        log_e0 = special.log_ndtr((z0 - i) / sigma)
        log_e1 = special.log_ndtr((j - z0) / sigma)
        s0 = log_t0 + (i * i - i) / (2 * sigma * sigma) + log_e0
        s1 = log_t1 + (j * j - j) / (2 * sigma * sigma) + log_e1
        for s, pos, neg in ((s0, pos0, neg0), (s1, pos1, neg1)):
            pos[:] = np.logaddexp(pos, special.logsumexp(np.where(sign > 0, s, -np.inf), axis=1))
            neg[:] = np.logaddexp(neg, special.logsumexp(np.where(sign < 0, s, -np.inf), axis=1))
        last = np.maximum(s0, s1)
        if np.all(np.nan_to_num(last[:, -8:], nan=-np.inf) < -30) or start > 20000:
            break
        start += block
    with np.errstate(divide="ignore", invalid="ignore"):
        part0 = pos0 + np.log1p(-np.exp(np.minimum(neg0 - pos0, 0.0)))
        part1 = pos1 + np.log1p(-np.exp(np.minimum(neg1 - pos1, 0.0)))
    return np.logaddexp(part0, part1)


def rdp_subsampled_gaussian(q: float, sigma: float, orders: Sequence[float]) -> np.ndarray:
    """Renyi DP of one step of the Poisson-subsampled Gaussian mechanism (sensitivity 1,
    noise std sigma) at each order in `orders` (all > 1)."""
    q, sigma = check_rate(q), check_sigma(sigma)
    o = np.asarray(orders, dtype=np.float64)
    if np.any(o <= 1):
        raise ConfigError("RDP orders must be > 1")
    if q == 1.0:
        return o / (2 * sigma * sigma)
    out = np.empty_like(o)
    is_int = np.equal(np.mod(o, 1), 0)
    if is_int.any():
        out[is_int] = _log_a_int(q, sigma, o[is_int]) / (o[is_int] - 1)
    if (~is_int).any():
        out[~is_int] = _log_a_frac(q, sigma, o[~is_int]) / (o[~is_int] - 1)
    return out


def rdp_to_epsilon_classic(orders: Sequence[float], rdp: np.ndarray, delta: float) -> tuple[float, float]:
    """Mironov (2017) Prop. 3: eps = min_a RDP(a) + ln(1/delta) / (a - 1). Returns (eps, a)."""
    o = np.asarray(orders, dtype=np.float64)
    eps = np.asarray(rdp) + math.log(1 / delta) / (o - 1)
    k = int(np.nanargmin(eps))
    return float(eps[k]), float(o[k])


def rdp_to_epsilon_tight(orders: Sequence[float], rdp: np.ndarray, delta: float) -> tuple[float, float]:
    """Balle et al. (2020) Thm. 21: eps = min_a RDP(a) + ln((a-1)/a) - (ln delta + ln a)/(a-1)."""
    o = np.asarray(orders, dtype=np.float64)
    eps = np.asarray(rdp) - (math.log(delta) + np.log(o)) / (o - 1) + np.log((o - 1) / o)
    if np.isnan(eps).all():
        return math.inf, math.nan
    k = int(np.nanargmin(eps))
    return float(eps[k]), float(o[k])


# --------------------------------------------------------------------------- (eps, delta) steps


def gaussian_step_epsilon(q: float | np.ndarray, sigma: float | np.ndarray, delta: float) -> np.ndarray:
    """Per-step epsilon of the subsampled Gaussian used by the composition theorems:
    eps0 = sqrt(2 ln(1.25/delta)) / sigma (Dwork & Roth Thm. A.1), amplified by sampling
    with rate q: ln(1 + q (e^eps0 - 1)) (Balle, Barthe & Gaboardi 2018)."""
    eps0 = math.sqrt(2 * math.log(1.25 / delta)) / np.asarray(sigma, dtype=np.float64)
    return np.log1p(np.asarray(q, dtype=np.float64) * np.expm1(eps0))


def compose_basic(eps: np.ndarray, counts: np.ndarray) -> float:
    return float(np.sum(counts * eps))


def compose_advanced(eps: np.ndarray, counts: np.ndarray, delta: float) -> float:
    return float(math.sqrt(2 * math.log(1 / delta) * np.sum(counts * eps**2))
                 + np.sum(counts * eps * np.expm1(eps)))


def compose_optimal(eps: np.ndarray, counts: np.ndarray, delta: float) -> float:
    """Kairouz, Oh & Viswanath (2015) composition bound (Thm. 3.5, heterogeneous steps)."""
    v = float(np.sum(counts * eps**2))
    head = float(np.sum(counts * eps * np.expm1(eps) / (np.exp(eps) + 1)))
    return min(compose_basic(eps, counts),
               head + math.sqrt(2 * v * math.log(math.e + math.sqrt(v) / delta)),
               head + math.sqrt(2 * v * math.log(1 / delta)))


def zcdp_epsilon(rho: float, delta: float) -> float:
    """Bun & Steinke (2016) Prop. 1.3: rho-zCDP implies (rho + 2 sqrt(rho ln(1/delta)), delta)."""
    return rho + 2 * math.sqrt(rho * math.log(1 / delta))


# --------------------------------------------------------------------------- the ledger


@dataclass
class _Group:
    q: float
    sigma: float
    count: int


class PrivacyLedger:
    """Tracks the steps of a DP-SGD run and reports epsilon under every accountant.

    `step(q, sigma)` records one step (or `n` identical ones). Consecutive identical steps
    are run-length encoded; the RDP curves are accumulated incrementally, so querying the
    spent budget after every step (to stop when it runs out) costs microseconds once the
    per-step RDP of a (q, sigma) pair is known (a few milliseconds for a new pair).

    Args:
        rdp_orders: order grid of the `rdp` accountant (default: Opacus's).
        moments_orders: integer orders of the `moments` accountant (default 2..255).
    """

    def __init__(self, rdp_orders: Sequence[float] = RDP_ORDERS,
                 moments_orders: Sequence[int] = MOMENTS_ORDERS) -> None:
        self.rdp_orders = np.asarray(rdp_orders, dtype=np.float64)
        self.moments_orders = np.asarray(moments_orders, dtype=np.float64)
        if np.any(np.mod(self.moments_orders, 1) != 0) or np.any(self.moments_orders < 2):
            raise ConfigError("moments-accountant orders must be integers >= 2")
        self.groups: list[_Group] = []
        self._rdp = np.zeros_like(self.rdp_orders)
        self._mom = np.zeros_like(self.moments_orders)
        self._rho = 0.0
        self._cache: tuple[float, float, np.ndarray, np.ndarray] | None = None

    @property
    def steps(self) -> int:
        return sum(g.count for g in self.groups)

    def _step_rdp(self, q: float, sigma: float) -> tuple[np.ndarray, np.ndarray]:
        if self._cache is not None and self._cache[0] == q and self._cache[1] == sigma:
            return self._cache[2], self._cache[3]
        both = np.concatenate([self.rdp_orders, self.moments_orders])
        uniq, inv = np.unique(both, return_inverse=True)
        vals = rdp_subsampled_gaussian(q, sigma, uniq)[inv]
        r, m = vals[:len(self.rdp_orders)], vals[len(self.rdp_orders):]
        self._cache = (q, sigma, r, m)
        return r, m

    def step(self, q: float, sigma: float, n: int = 1) -> None:
        """Record `n` steps with sampling rate `q` and noise multiplier `sigma`."""
        q, sigma = check_rate(q), check_sigma(sigma)
        if n < 1:
            raise ConfigError(f"number of steps must be >= 1, got {n}")
        r, m = self._step_rdp(q, sigma)
        self._rdp += n * r
        self._mom += n * m
        self._rho += n * q * q / (sigma * sigma)
        if self.groups and self.groups[-1].q == q and self.groups[-1].sigma == sigma:
            self.groups[-1].count += n
        else:
            self.groups.append(_Group(q, sigma, n))

    def _arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        q = np.array([g.q for g in self.groups])
        s = np.array([g.sigma for g in self.groups])
        c = np.array([g.count for g in self.groups], dtype=np.float64)
        return q, s, c

    def epsilon(self, delta: float, accountant: str = "rdp") -> float:
        """Epsilon spent so far at `delta` under one accountant (0 before any step)."""
        delta = check_delta(delta)
        check_accountant(accountant)
        if not self.groups:
            return 0.0
        if accountant == "rdp":
            return rdp_to_epsilon_tight(self.rdp_orders, self._rdp, delta)[0]
        if accountant == "moments":
            return rdp_to_epsilon_classic(self.moments_orders, self._mom, delta)[0]
        if accountant == "zcdp":
            return zcdp_epsilon(self._rho, delta)
        q, s, c = self._arrays()
        eps = gaussian_step_epsilon(q, s, delta)
        if accountant == "basic":
            return compose_basic(eps, c)
        if accountant == "advanced":
            return compose_advanced(eps, c, delta)
        return compose_optimal(eps, c, delta)

    def epsilons(self, delta: float) -> dict[str, float]:
        """Epsilon under every accountant, keyed by `ACCOUNTANTS`."""
        return {name: self.epsilon(delta, name) for name in ACCOUNTANTS}

    def to_dict(self, delta: float) -> dict[str, object]:
        return {"steps": self.steps, "delta": delta, "epsilon": self.epsilons(delta),
                "schedule": [[g.q, g.sigma, g.count] for g in self.groups]}


# --------------------------------------------------------------------------- one-call helpers


def _ledger_for(q: float, sigma: float | Iterable[float], steps: int | None) -> PrivacyLedger:
    ledger = PrivacyLedger()
    if isinstance(sigma, (int, float)):
        if steps is None or steps < 1:
            raise ConfigError(f"steps must be >= 1, got {steps}")
        ledger.step(q, float(sigma), int(steps))
    else:
        seq = [float(s) for s in sigma]
        if not seq:
            raise ConfigError("an empty sigma schedule has no privacy cost to report")
        if steps is not None and steps != len(seq):
            raise ConfigError(f"steps={steps} but the sigma schedule has {len(seq)} entries")
        for s in seq:
            ledger.step(q, s)
    return ledger


def compute_epsilon(q: float, sigma: float | Iterable[float], steps: int | None, delta: float,
                    accountant: str = "rdp") -> float:
    """Epsilon after `steps` steps at sampling rate `q` with noise multiplier `sigma` (a
    number, or the per-step sequence of a dynamic schedule, then `steps` may be None)."""
    check_accountant(accountant)
    check_delta(delta)
    return _ledger_for(q, sigma, steps).epsilon(delta, accountant)


def compute_epsilons(q: float, sigma: float | Iterable[float], steps: int | None,
                     delta: float) -> dict[str, float]:
    """Epsilon under every accountant (see `compute_epsilon`)."""
    check_delta(delta)
    return _ledger_for(q, sigma, steps).epsilons(delta)


def noise_multiplier(target_epsilon: float, q: float, steps: int, delta: float,
                     accountant: str = "rdp", tol: float = 1e-4,
                     sigma_max: float = 1e4) -> float:
    """The smallest noise multiplier whose `steps`-step run at rate `q` spends at most
    `target_epsilon` at `delta` under `accountant` (bisection on sigma; epsilon is
    decreasing in sigma). The result is within `tol` (relative) of the exact value and
    always on the safe side (its epsilon is <= the target)."""
    check_accountant(accountant)
    delta, q = check_delta(delta), check_rate(q)
    if not target_epsilon > 0:
        raise ConfigError(f"target epsilon must be positive, got {target_epsilon}")
    if steps < 1:
        raise ConfigError(f"steps must be >= 1, got {steps}")

    def eps(s: float) -> float:
        return compute_epsilon(q, s, steps, delta, accountant)

    lo, hi = 1e-2, 1.0
    while eps(hi) > target_epsilon:
        lo, hi = hi, hi * 2
        if hi > sigma_max:
            raise ConfigError(f"no noise multiplier below {sigma_max:g} reaches epsilon "
                              f"{target_epsilon} with the {accountant} accountant")
    if eps(lo) <= target_epsilon:
        return lo
    while (hi - lo) / hi > tol:
        mid = 0.5 * (lo + hi)
        if eps(mid) > target_epsilon:
            lo = mid
        else:
            hi = mid
    return hi
