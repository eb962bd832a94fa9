"""Privacy accountants for DP-SGD (the Poisson-subsampled Gaussian mechanism).

Eight ways to turn a training run -- T steps, each sampling every example with probability
q and adding Gaussian noise of standard deviation sigma * S to a sum of gradients clipped
to sensitivity S -- into an (epsilon, delta) figure. They fall in two kinds:

*Guarantees* are valid upper bounds on epsilon at the stated delta for Poisson sampling and
add-or-remove-one adjacency; the headline epsilon is always the smallest of them:

- ``pld``       the privacy-loss distribution (Koskela et al. 2020; Doroshenko et al. 2022,
                "connect the dots") of Google's dp-accounting (optional: the ``pld`` extra),
                pessimistic discretisation; its error is the gap to the optimistic estimate.
- ``prv``       privacy random variables (Gopi, Lee & Wutschitz 2021) through Opacus (its
                default accountant): the reported value is the upper end of its error bound.
- ``rdp``       Renyi DP of the subsampled Gaussian (Mironov, Talwar & Zhang 2019) on Opacus's
                order grid with the conversion of Balle et al. (2020, Thm. 21):
                eps = min_a RDP(a) + ln((a-1)/a) - (ln delta + ln a)/(a-1).
- ``moments``   the moments accountant (Abadi et al. 2016): the same RDP at the integer
                orders 2..255 with the classic conversion eps = min_a RDP(a) + ln(1/delta)/(a-1).

*Reference formulas* reproduce the dissertation's tables and are not guarantees; they are
shown only where their validity conditions hold, otherwise the reason is given instead:

- ``basic``     basic composition: eps = sum_t eps_t.
- ``advanced``  advanced composition (Dwork, Rothblum & Vadhan 2010), heterogeneous form:
                eps = sqrt(2 ln(1/delta) sum_t eps_t^2) + sum_t eps_t (e^eps_t - 1).
- ``optimal``   the composition bound of Kairouz, Oh & Viswanath (2015, Thm. 3.4/3.5):
                min{ sum eps_t,
                     sum eps_t (e^eps_t - 1)/(e^eps_t + 1) + sqrt(2 V ln(e + sqrt(V)/delta)),
                     sum eps_t (e^eps_t - 1)/(e^eps_t + 1) + sqrt(2 V ln(1/delta)) },
                V = sum eps_t^2.
- ``zcdp``      zero-concentrated DP (Bun & Steinke 2016) with the dissertation's per-step
                rho_t = q^2 / sigma_t^2 (Yu et al. 2019): eps = rho + 2 sqrt(rho ln(1/delta)).
                The subsampled Gaussian is not rho-zCDP for any rho of order q^2 (at q = 0.01,
                sigma = 0.5, T = 1 the formula gives 0.136 where the true epsilon exceeds 3),
                so it is valid only without subsampling (q = 1), where rho = 1/sigma^2 is
                twice the Gaussian mechanism's exact 1/(2 sigma^2).

The three composition theorems need a per-step (eps_t, delta_t)-DP guarantee. We use the
Gaussian mechanism's classic calibration eps0 = sqrt(2 ln(1.25/delta)) / sigma_t (Dwork &
Roth 2014, Thm. 3.22: valid only for eps0 <= 1, i.e. sigma >~ 4.85 at delta = 1e-5)
amplified by Poisson subsampling (Balle, Barthe & Gaboardi 2018): eps_t =
ln(1 + q (e^eps0 - 1)) at delta_t = q delta. The dissertation's convention then uses delta
again as the slack of advanced and optimal composition, which reproduces its figures
(q=0.01, sigma=6, delta=1e-5, T=10000: basic 123.457 vs 123.354, advanced 7.458 vs 7.450,
optimal 6.686 vs 6.740 -- the published value omits the third term of Kairouz's minimum;
see docs/dp.md). The guarantee therefore holds at the *total* delta
sum_t q delta (+ delta for the slack), which is what `composition_delta` returns and what
every output states. A dynamic noise scale is accounted for by composing the per-step
quantities of the actual sigma_t sequence (every accountant here composes heterogeneous
steps).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import special

from bastion.errors import ConfigError, unknown_name

#: Valid upper bounds (Poisson sampling, add-or-remove-one adjacency), tightest first.
GUARANTEES: tuple[str, ...] = ("pld", "prv", "rdp", "moments")
#: Formulas that reproduce the dissertation's tables; not guarantees.
REFERENCE_FORMULAS: tuple[str, ...] = ("basic", "advanced", "optimal", "zcdp")
ACCOUNTANTS: tuple[str, ...] = ("basic", "advanced", "optimal", "zcdp", "moments", "rdp", "prv",
                                "pld")
GUARANTEE, REFERENCE = "guarantee", "reference formula"
KINDS: dict[str, str] = {**{a: GUARANTEE for a in GUARANTEES},
                         **{a: REFERENCE for a in REFERENCE_FORMULAS}}
LABELS: dict[str, str] = {
    "basic": "basic composition",
    "advanced": "advanced composition",
    "optimal": "optimal composition (Kairouz et al.)",
    "zcdp": "zCDP, dissertation's rho = q^2/sigma^2",
    "moments": "moments accountant (RDP, classic conversion)",
    "rdp": "RDP, tight conversion (Balle et al. 2020; = Opacus)",
    "prv": "PRV (Gopi et al. 2021; Opacus's default)",
    "pld": "PLD (Google dp-accounting)",
}
ADJACENCY = "add-or-remove-one example"
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


def check_guarantee(name: str) -> str:
    """An accountant that may calibrate noise or enforce a budget: a guarantee only."""
    check_accountant(name)
    if KINDS[name] != GUARANTEE:
        raise ConfigError(f"the {name} accountant is a reference formula, not a privacy "
                          f"guarantee, so it cannot calibrate noise or enforce a budget; use "
                          f"one of {', '.join(GUARANTEES)} (default rdp)")
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


def classic_gaussian_epsilon(sigma: float, delta: float) -> float:
    """eps0 = sqrt(2 ln(1.25/delta)) / sigma, the classic calibration of the Gaussian
    mechanism (Dwork & Roth 2014, Thm. 3.22), valid only when eps0 <= 1."""
    return math.sqrt(2 * math.log(1.25 / delta)) / sigma


def composition_delta(accountant: str, schedule: Sequence[tuple[float, float, int]],
                      delta: float) -> float:
    """The total delta at which the reference composition figures hold under the
    dissertation's convention: every step is (eps_t, q delta)-DP (Poisson amplification of
    the per-step delta, Balle et al. 2018) and advanced / optimal composition add delta as
    their slack. Basic: sum q delta; advanced: sum q delta + delta; optimal (Kairouz et al.
    2015, Thm. 3.5): 1 - (1 - delta) prod (1 - q delta)."""
    per_step = sum(int(n) * q * delta for q, _, n in schedule)
    if accountant == "basic":
        return per_step
    if accountant == "advanced":
        return per_step + delta
    if accountant == "optimal":
        log_keep = math.log1p(-delta) + sum(int(n) * math.log1p(-q * delta) for q, _, n in schedule)
        return -math.expm1(log_keep)
    raise ConfigError(f"composition_delta: {accountant!r} is not a composition theorem")


def reference_validity(accountant: str, schedule: Sequence[tuple[float, float, int]],
                       delta: float) -> str:
    """'' when the reference formula `accountant` is a valid bound for `schedule`, else
    why not (one line)."""
    if accountant == "zcdp":
        qmin = min(q for q, _, _ in schedule)
        if qmin < 1.0:
            return f"not valid: no bound when subsampled (q {qmin:.3g} < 1)"
        return ""
    smin = min(s for _, s, _ in schedule)
    eps0 = classic_gaussian_epsilon(smin, delta)
    if eps0 > 1.0:
        need = classic_gaussian_epsilon(1.0, delta)
        return f"not valid: per-step epsilon {eps0:.3g} > 1 (needs sigma >= {need:.3g})"
    return ""


#: Above this many distinct (q, sigma) levels PLD and PRV are not composed (each costs a
#: convolution: 10 ms to 1 s for PLD, 25 ms to 0.2 s for PRV, slowest at small sigma).
MAX_NUMERICAL_GROUPS = 64
#: PLD and PRV are skipped (RDP stands) beyond these bounds, where their grids would take
#: gigabytes: RDP epsilon above 100, more than 10^6 steps, or sigma below 0.2.
NUMERICAL_MAX_EPSILON = 100.0
NUMERICAL_MAX_STEPS = 10**6
NUMERICAL_MIN_SIGMA = 0.2
#: A dynamic sigma is rounded down to this geometric grid for PLD and PRV (less noise can
#: only cost more privacy, so the figure stays a valid bound), on a coarser PLD grid.
SIGMA_GRID_RATIO = 1.05
HETEROGENEOUS_PLD_INTERVAL = 1e-3


def round_down_schedule(schedule: Sequence[tuple[float, float, int]],
                        ratio: float = SIGMA_GRID_RATIO) -> list[tuple[float, float, int]]:
    """Each sigma rounded down to the grid ratio^k and equal levels merged (composition
    does not depend on the order of the steps). A Gaussian with less noise is a pre-image
    under post-processing (add the missing noise) of one with more, so the rounded run's
    epsilon bounds the real one. A schedule with a single level is returned unrounded."""
    if len({(q, s) for q, s, _ in schedule}) == 1:
        q, s, _ = schedule[0]
        return [(q, s, sum(int(n) for _, _, n in schedule))]
    counts: dict[tuple[float, float], int] = {}
    for q, s, n in schedule:
        k = math.floor(math.log(s) / math.log(ratio) + 1e-12)
        key = (q, min(s, ratio ** k))
        counts[key] = counts.get(key, 0) + int(n)
    return [(q, s, n) for (q, s), n in counts.items()]
#: PLD discretisation interval (dp-accounting's default) and PRV error bound (Opacus's).
PLD_INTERVAL = 1e-4
PRV_EPS_ERROR = 0.01


def pld_available() -> bool:
    try:
        import dp_accounting  # noqa: F401
    except ImportError:
        return False
    return True


def prv_available() -> bool:
    try:
        from opacus.accountants.analysis import prv  # noqa: F401
    except ImportError:
        return False
    return True


def pld_bounds(schedule: Sequence[tuple[float, float, int]], delta: float,
               interval: float = PLD_INTERVAL) -> tuple[float, float]:
    """(lower, upper) epsilon of the composed Poisson-subsampled Gaussian from Google's
    dp-accounting PLD, add-or-remove-one adjacency. The upper value is the pessimistic
    connect-the-dots estimate (Doroshenko et al. 2022), a valid bound; the lower value is
    the optimistic privacy-buckets estimate at the same interval (Meiser & Mohammadi 2018),
    so the truth lies between them and their gap is the discretisation error."""
    import logging

    from dp_accounting.pld import privacy_loss_distribution as pld_mod

    def composed(pessimistic: bool) -> float:
        total = None
        for q, s, n in schedule:
            one = pld_mod.from_gaussian_mechanism(
                s, sampling_prob=q, value_discretization_interval=interval,
                pessimistic_estimate=pessimistic, use_connect_dots=pessimistic)
            part = one.self_compose(int(n)) if int(n) > 1 else one
            total = part if total is None else total.compose(part)
        assert total is not None
        return float(total.get_epsilon_for_delta(delta))

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)   # dp-accounting logs a warning for the optimistic estimate
    try:
        upper, lower = composed(True), composed(False)
    finally:
        root.setLevel(level)
    return min(lower, upper), upper


def prv_bounds(schedule: Sequence[tuple[float, float, int]], delta: float,
               eps_error: float = PRV_EPS_ERROR) -> tuple[float, float, float]:
    """(lower, estimate, upper) epsilon of the PRV accountant (Gopi, Lee & Wutschitz 2021)
    as Opacus computes it (delta error delta/1000, epsilon error `eps_error`); the upper
    value is Opacus's `PRVAccountant.get_epsilon`, the guarantee."""
    import warnings

    from opacus.accountants.analysis.prv import (
        Domain,
        PoissonSubsampledGaussianPRV,
        TruncatedPrivacyRandomVariable,
        compose_heterogeneous,
        compute_safe_domain_size,
        discretize,
    )

    delta_error = delta / 1000
    prvs = [PoissonSubsampledGaussianPRV(q, s) for q, s, _ in schedule]
    counts = [int(n) for _, _, n in schedule]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        size = compute_safe_domain_size(prvs=prvs, max_self_compositions=counts,
                                        eps_error=eps_error, delta_error=delta_error)
        mesh = eps_error / np.sqrt(sum(counts) * np.log(12 / delta_error) / 2)
        domain = Domain.create_aligned(-size, size, mesh)
        dprvs = [discretize(TruncatedPrivacyRandomVariable(p, domain.t_min, domain.t_max), domain)
                 for p in prvs]
        lo, est, up = compose_heterogeneous(dprvs=dprvs, num_self_compositions=counts
                                            ).compute_epsilon(delta, delta_error, eps_error)
    return float(lo), float(est), float(up)


@dataclass(frozen=True)
class Figure:
    """One accountant's figure for a run: `epsilon` is None where it is not shown (a
    reference formula outside its validity conditions, or an accountant not installed or
    not computed) and `note` says why. `delta` is the delta the figure holds at (for the
    composition formulas the real total, see `composition_delta`); `lower` and `error` are
    the numerical accountants' lower end and error bound."""

    accountant: str
    kind: str
    epsilon: float | None
    delta: float
    note: str = ""
    lower: float | None = None
    error: float | None = None

    @property
    def label(self) -> str:
        return LABELS[self.accountant]

    def to_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "label": self.label, "epsilon": self.epsilon,
                "delta": self.delta, "note": self.note, "lower": self.lower, "error": self.error}


# --------------------------------------------------------------------------- the ledger


@dataclass
class _Group:
    q: float
    sigma: float
    count: int


class PrivacyLedger:
    """Tracks the steps of a DP-SGD run and reports epsilon under every accountant.

    `figures(delta)` labels each as a guarantee or a reference formula and hides reference
    formulas outside their validity conditions; `headline(delta)` is the tightest guarantee.

    `step(q, sigma)` records one step (or `n` identical ones). Consecutive identical steps
    are run-length encoded; the RDP curves are accumulated incrementally, so querying the
    spent budget after every step (to stop when it runs out) costs microseconds once the
    per-step RDP of a (q, sigma) pair is known (a few milliseconds for a new pair).

    Args:
        rdp_orders: order grid of the `rdp` accountant (default: Opacus's).
        moments_orders: integer orders of the `moments` accountant (default 2..255).
        pld_interval: discretisation interval of the PLD accountant.
        prv_eps_error: epsilon error bound of the PRV accountant.
    """

    def __init__(self, rdp_orders: Sequence[float] = RDP_ORDERS,
                 moments_orders: Sequence[int] = MOMENTS_ORDERS,
                 pld_interval: float = PLD_INTERVAL, prv_eps_error: float = PRV_EPS_ERROR) -> None:
        self.pld_interval = float(pld_interval)
        self.prv_eps_error = float(prv_eps_error)
        self._numeric_cache: dict[tuple[str, float, int, int], Figure] = {}
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

    @property
    def schedule(self) -> list[tuple[float, float, int]]:
        return [(g.q, g.sigma, g.count) for g in self.groups]

    def epsilon(self, delta: float, accountant: str = "rdp") -> float:
        """Epsilon spent so far at `delta` under one accountant (0 before any step). For a
        reference formula this is the formula's raw value, whether or not it is valid
        (see `figures` for what may be shown); for pld and prv the guarantee (upper) value."""
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
        if accountant in ("pld", "prv"):
            fig = self._numerical(accountant, delta)
            if fig.epsilon is None:
                raise ConfigError(f"the {accountant} accountant is unavailable here: {fig.note}")
            return fig.epsilon
        q, s, c = self._arrays()
        eps = gaussian_step_epsilon(q, s, delta)
        if accountant == "basic":
            return compose_basic(eps, c)
        if accountant == "advanced":
            return compose_advanced(eps, c, delta)
        return compose_optimal(eps, c, delta)

    def epsilons(self, delta: float) -> dict[str, float]:
        """The raw value of every formula, keyed by name: the three composition formulas,
        zcdp, moments and rdp (the dissertation's table plus Opacus's RDP). Not labelled
        and not checked for validity: `figures` is what a user may be shown."""
        return {name: self.epsilon(delta, name) for name in ACCOUNTANTS if name not in ("prv", "pld")}

    def _numerical(self, accountant: str, delta: float) -> Figure:
        key = (accountant, delta, self.steps, len(self.groups))
        hit = self._numeric_cache.get(key)
        if hit is not None:
            return hit
        fig = self._compute_numerical(accountant, delta)
        self._numeric_cache[key] = fig
        return fig

    def _compute_numerical(self, accountant: str, delta: float) -> Figure:
        if accountant == "pld" and not pld_available():
            return Figure("pld", GUARANTEE, None, delta,
                          "not installed (pip install 'bastion[pld]' for Google's dp-accounting)")
        if accountant == "prv" and not prv_available():
            return Figure("prv", GUARANTEE, None, delta, "not installed (needs Opacus)")
        why = self._numerical_out_of_range(delta)
        if why:
            return Figure(accountant, GUARANTEE, None, delta, why)
        sched, interval = self.schedule, self.pld_interval
        rounded = len({(q, sg) for q, sg, _ in sched}) > 1
        if rounded or len(sched) > 1:
            sched = round_down_schedule(sched)
            if rounded:
                interval = max(interval, HETEROGENEOUS_PLD_INTERVAL)
        if len(sched) > MAX_NUMERICAL_GROUPS:
            return Figure(accountant, GUARANTEE, None, delta,
                          f"not computed: {len(sched)} distinct noise levels "
                          f"(limit {MAX_NUMERICAL_GROUPS}); the RDP figure covers the run")
        extra = f"; sigma rounded down to {len(sched)} levels" if rounded else ""
        try:
            if accountant == "pld":
                lo, up = pld_bounds(sched, delta, interval)
                if rounded:   # the rounded run's lower bound is not one for this run
                    return Figure("pld", GUARANTEE, up, delta, "pessimistic" + extra)
                return Figure("pld", GUARANTEE, up, delta, f"pessimistic; lower bound {lo:.4f}",
                              lower=lo, error=up - lo)
            lo, est, up = prv_bounds(sched, delta, self.prv_eps_error)
            if rounded:
                return Figure("prv", GUARANTEE, up, delta, f"upper end of the error bound{extra}")
            return Figure("prv", GUARANTEE, up, delta,
                          f"estimate {est:.4f} +- {self.prv_eps_error:g}", lower=lo,
                          error=up - lo)
        except (ValueError, ArithmeticError, RuntimeError) as e:  # numerical range exceeded
            return Figure(accountant, GUARANTEE, None, delta,
                          f"not computed: {str(e).splitlines()[0][:120] or type(e).__name__}")

    def bound(self, delta: float, accountant: str) -> float:
        """A guarantee's epsilon for budgets and calibration: infinity where a numerical
        accountant is out of its range (nothing affordable there); an accountant that is not
        installed raises ConfigError."""
        check_guarantee(accountant)
        if accountant in ("pld", "prv") and self.groups:
            fig = self._numerical(accountant, check_delta(delta))
            if fig.epsilon is None:
                if fig.note.startswith("not computed"):
                    return math.inf
                raise ConfigError(f"the {accountant} accountant is unavailable here: {fig.note}")
            return fig.epsilon
        return self.epsilon(delta, accountant)

    def _numerical_out_of_range(self, delta: float) -> str:
        """Why PLD and PRV are not run ('' when they are): their grids grow with the privacy
        loss (steps / sigma^2), so settings with no meaningful privacy would take minutes
        and gigabytes; the RDP figure, a guarantee, covers them."""
        rdp = self.epsilon(delta, "rdp")
        if rdp > NUMERICAL_MAX_EPSILON:
            return f"not computed: RDP epsilon {rdp:.3g} > {NUMERICAL_MAX_EPSILON:g} (no meaningful privacy)"
        if self.steps > NUMERICAL_MAX_STEPS:
            return f"not computed: {self.steps} steps > {NUMERICAL_MAX_STEPS:.0e}"
        smin = min(g.sigma for g in self.groups)
        if smin < NUMERICAL_MIN_SIGMA:
            return f"not computed: sigma {smin:.3g} < {NUMERICAL_MIN_SIGMA:g}"
        return ""

    def figure(self, delta: float, accountant: str) -> Figure:
        """One accountant's labelled figure (see `Figure`)."""
        delta = check_delta(delta)
        check_accountant(accountant)
        kind = KINDS[accountant]
        if not self.groups:
            return Figure(accountant, kind, 0.0, delta)
        if accountant in ("pld", "prv"):
            return self._numerical(accountant, delta)
        if accountant == "rdp":
            eps, order = rdp_to_epsilon_tight(self.rdp_orders, self._rdp, delta)
            return Figure(accountant, kind, eps, delta, f"order {order:g}")
        if accountant == "moments":
            eps, order = rdp_to_epsilon_classic(self.moments_orders, self._mom, delta)
            return Figure(accountant, kind, eps, delta, f"order {order:g}")
        why = reference_validity(accountant, self.schedule, delta)
        if accountant == "zcdp":
            if why:
                return Figure(accountant, kind, None, delta, why)
            return Figure(accountant, kind, self.epsilon(delta, accountant), delta,
                          "valid: no subsampling (2x the exact rho)")
        total = composition_delta(accountant, self.schedule, delta)
        if why:
            return Figure(accountant, kind, None, total, why)
        return Figure(accountant, kind, self.epsilon(delta, accountant), total,
                      f"holds only at total delta {total:.3g}")

    def figures(self, delta: float) -> dict[str, Figure]:
        """Every accountant's labelled figure, guarantees first (tightest kind first)."""
        order = GUARANTEES + REFERENCE_FORMULAS
        return {name: self.figure(delta, name) for name in order}

    def headline(self, delta: float, figures: dict[str, Figure] | None = None) -> Figure:
        """The tightest valid guarantee: the smallest epsilon among the guarantees shown."""
        figs = figures if figures is not None else self.figures(delta)
        valid = [f for f in figs.values() if f.kind == GUARANTEE and f.epsilon is not None]
        return min(valid, key=lambda f: f.epsilon if f.epsilon is not None else math.inf)

    def summary(self, delta: float) -> dict[str, object]:
        """The labelled record for JSON output, checkpoints and reports."""
        figs = self.figures(delta)
        head = self.headline(delta, figs)
        return {"delta": delta, "steps": self.steps, "adjacency": ADJACENCY,
                "sampling": "Poisson",
                "headline": {"accountant": head.accountant, "label": head.label,
                             "epsilon": head.epsilon, "delta": delta},
                "accountants": {k: f.to_dict() for k, f in figs.items()}}

    def to_dict(self, delta: float) -> dict[str, object]:
        return {**self.summary(delta), "schedule": [[g.q, g.sigma, g.count] for g in self.groups]}


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


def privacy_summary(q: float, sigma: float | Iterable[float], steps: int | None,
                    delta: float) -> dict[str, object]:
    """The labelled figures of every accountant and the headline (see
    `PrivacyLedger.summary`)."""
    check_delta(delta)
    return _ledger_for(q, sigma, steps).summary(delta)


def noise_multiplier(target_epsilon: float, q: float, steps: int, delta: float,
                     accountant: str = "rdp", tol: float = 1e-4,
                     sigma_max: float = 1e4) -> float:
    """The smallest noise multiplier whose `steps`-step run at rate `q` spends at most
    `target_epsilon` at `delta` under `accountant`, a guarantee (rdp, moments, prv or
    pld; a reference formula is refused). Bisection on sigma (epsilon is decreasing in
    sigma); the result is within `tol` (relative; at least 1e-3 for the numerical pld and
    prv) of the exact value and always on the safe side (its epsilon is <= the target)."""
    check_guarantee(accountant)
    delta, q = check_delta(delta), check_rate(q)
    if not (isinstance(target_epsilon, (int, float)) and math.isfinite(target_epsilon)
            and target_epsilon > 0):
        raise ConfigError(f"target epsilon must be a positive finite number, got {target_epsilon}")
    if steps < 1:
        raise ConfigError(f"steps must be >= 1, got {steps}")

    def eps(s: float) -> float:
        return _ledger_for(q, s, steps).bound(delta, accountant)

    if accountant in ("pld", "prv"):
        # RDP bounds both from above, so its sigma is feasible and brackets the search.
        hi = noise_multiplier(target_epsilon, q, steps, delta, "rdp", tol, sigma_max)
        lo, tol = hi / 4, max(tol, 1e-3)
    else:
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
