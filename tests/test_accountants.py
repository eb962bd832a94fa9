"""Accountants against the dissertation's published values and Opacus's RDP accountant."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bastion.core import ConfigError
from bastion.privacy import PrivacyLedger, compute_epsilon, compute_epsilons, noise_multiplier
from bastion.privacy.accountants import (
    GUARANTEE,
    REFERENCE,
    composition_delta,
    gaussian_step_epsilon,
    pld_available,
)

# (T, basic, advanced, optimal, zcdp, moments) at q=0.01, sigma=6, delta=1e-5 (Table 4.5/4.6)
PUBLISHED = [(10000, 123.354, 7.450, 6.740, 1.159, 0.823),
             (6000, 74.024, 5.503, 5.037, 0.893, 0.636),
             (5000, 61.689, 4.952, 4.546, 0.814, 0.580)]


@pytest.mark.parametrize("steps,basic,adv,opt,zcdp,mom", PUBLISHED)
def test_published_values(steps: int, basic: float, adv: float, opt: float, zcdp: float,
                          mom: float) -> None:
    eps = compute_epsilons(0.01, 6.0, steps, 1e-5)
    assert round(eps["zcdp"], 3) == zcdp
    assert round(eps["moments"], 3) == mom
    assert eps["basic"] == pytest.approx(basic, rel=0.005)
    assert eps["advanced"] == pytest.approx(adv, rel=0.005)
    assert eps["optimal"] == pytest.approx(opt, rel=0.01)
    assert eps["rdp"] < eps["moments"] < eps["zcdp"] < eps["optimal"] < eps["advanced"] < eps["basic"]


def test_tight_conversion_published() -> None:
    assert compute_epsilon(0.01, 6.0, 10000, 1e-5, "rdp") == pytest.approx(0.659, abs=5e-4)


@pytest.mark.parametrize("q,sigma,steps,delta", [(0.01, 6.0, 10000, 1e-5), (0.004, 1.1, 5000, 1e-5),
                                                 (0.05, 0.7, 300, 1e-6), (0.2, 2.0, 50, 1e-5),
                                                 (1.0, 3.0, 20, 1e-5), (0.001, 0.5, 1000, 1e-5)])
def test_rdp_equals_opacus(q: float, sigma: float, steps: int, delta: float) -> None:
    opacus = pytest.importorskip("opacus.accountants")
    acc = opacus.RDPAccountant()
    acc.history = [(sigma, q, steps)]
    assert compute_epsilon(q, sigma, steps, delta, "rdp") == pytest.approx(acc.get_epsilon(delta), abs=1e-6)


def test_dynamic_sigma_composes_heterogeneous_steps() -> None:
    opacus = pytest.importorskip("opacus.accountants")
    sigmas = [6.0 - 3.0 * t / 99 for t in range(100)]
    acc = opacus.RDPAccountant()
    for s in sigmas:
        acc.step(noise_multiplier=s, sample_rate=0.02)
    ours = compute_epsilons(0.02, sigmas, None, 1e-5)
    assert ours["rdp"] == pytest.approx(acc.get_epsilon(1e-5), abs=1e-6)
    # zCDP sums q^2 / sigma_t^2 exactly
    rho = sum(0.02**2 / s**2 for s in sigmas)
    assert ours["zcdp"] == pytest.approx(rho + 2 * math.sqrt(rho * math.log(1e5)), rel=1e-12)
    # basic composition is the sum of the per-step epsilons
    assert ours["basic"] == pytest.approx(float(gaussian_step_epsilon(0.02, sigmas, 1e-5).sum()))
    # a schedule between the constant endpoints lies between their epsilons
    for name in ours:
        lo = compute_epsilon(0.02, 6.0, 100, 1e-5, name)
        hi = compute_epsilon(0.02, 3.0, 100, 1e-5, name)
        assert lo < ours[name] < hi


def test_ledger_incremental_matches_one_shot() -> None:
    led = PrivacyLedger()
    for _ in range(3):
        led.step(0.01, 6.0, 1000)
    assert led.steps == 3000 and len(led.groups) == 1
    assert led.epsilons(1e-5) == pytest.approx(compute_epsilons(0.01, 6.0, 3000, 1e-5), rel=1e-12)
    assert PrivacyLedger().epsilon(1e-5) == 0.0


def test_noise_multiplier_inverts_epsilon() -> None:
    for acc in ("rdp", "moments"):
        s = noise_multiplier(1.0, 0.01, 10000, 1e-5, accountant=acc)
        assert compute_epsilon(0.01, s, 10000, 1e-5, acc) <= 1.0
        assert compute_epsilon(0.01, s * 0.99, 10000, 1e-5, acc) > 1.0


@pytest.mark.parametrize("acc", ["zcdp", "basic", "advanced", "optimal"])
def test_calibration_refuses_reference_formulas(acc: str) -> None:
    """The zCDP formula calibrated eps 1 at q=0.01, T=10, delta=1e-5 to sigma 0.22, whose
    RDP epsilon is 37.3: calibration accepts guarantees only."""
    with pytest.raises(ConfigError, match="reference formula"):
        noise_multiplier(1.0, 0.01, 10, 1e-5, accountant=acc)
    # what the formula would have given, and why it is refused
    rho_needed = (math.sqrt(math.log(1e5) + 1.0) - math.sqrt(math.log(1e5))) ** 2
    sigma_zcdp = 0.01 * math.sqrt(10 / rho_needed)
    assert sigma_zcdp == pytest.approx(0.22, abs=0.005)
    assert compute_epsilon(0.01, sigma_zcdp, 10, 1e-5, "rdp") == pytest.approx(37.3, abs=0.3)
    s = noise_multiplier(1.0, 0.01, 10, 1e-5)
    assert compute_epsilon(0.01, s, 10, 1e-5, "rdp") <= 1.0
    if pld_available():
        assert compute_epsilon(0.01, s, 10, 1e-5, "pld") <= 1.0


@pytest.mark.parametrize("kwargs", [dict(delta=1.0), dict(delta=0.0), dict(sigma=0.0), dict(sigma=-1.0),
                                    dict(q=0.0), dict(q=1.5), dict(accountant="nope"),
                                    dict(accountant="zcdp-ish")])
def test_bad_inputs(kwargs: dict) -> None:
    args = dict(q=0.01, sigma=6.0, steps=100, delta=1e-5, accountant="rdp") | kwargs
    with pytest.raises(ConfigError):
        compute_epsilon(**args)


def _figs(q: float, sigma: float, steps: int, delta: float = 1e-5) -> dict:
    led = PrivacyLedger()
    led.step(q, sigma, steps)
    return led.figures(delta)


def test_labels_and_headline_q001_sigma1() -> None:
    """q=0.01, sigma=1, T=1000 printed basic 815.7, advanced 1152.2, optimal 439.2 beside RDP
    2.10 with no flag; their per-step calibration is invalid there (eps0 = 4.84 > 1)."""
    led = PrivacyLedger()
    led.step(0.01, 1.0, 1000)
    raw = led.epsilons(1e-5)
    assert raw["basic"] == pytest.approx(815.7, abs=0.1) and raw["rdp"] == pytest.approx(2.10, abs=0.01)
    figs = led.figures(1e-5)
    for name in ("basic", "advanced", "optimal", "zcdp"):
        assert figs[name].kind == REFERENCE and figs[name].epsilon is None
        assert figs[name].note.startswith("not valid")
    assert "per-step epsilon 4.84 > 1" in figs["basic"].note
    for name in ("rdp", "moments", "prv", "pld"):
        assert figs[name].kind == GUARANTEE
    head = led.headline(1e-5, figs)
    assert head.kind == GUARANTEE
    shown = [f.epsilon for f in figs.values() if f.kind == GUARANTEE and f.epsilon is not None]
    assert head.epsilon == min(shown) <= figs["rdp"].epsilon


def test_zcdp_never_a_guarantee() -> None:
    """DP checkpoint setting (sigma 1, q 0.064, T 31): the zCDP formula gives 2.55, below
    the tight RDP 3.37; and at q=0.01, sigma=0.5, T=1 it gives 0.136 where PLD's lower
    bound is >= 3.02. It is hidden wherever q < 1 and never the headline."""
    led = PrivacyLedger()
    led.step(0.064, 1.0, 31)
    assert led.epsilon(1e-5, "zcdp") == pytest.approx(2.55, abs=0.01)
    assert led.epsilon(1e-5, "rdp") == pytest.approx(3.37, abs=0.01)
    figs = led.figures(1e-5)
    assert figs["zcdp"].epsilon is None and "q 0.064 < 1" in figs["zcdp"].note
    assert led.headline(1e-5, figs).accountant != "zcdp"
    one = PrivacyLedger()
    one.step(0.01, 0.5, 1)
    assert one.epsilon(1e-5, "zcdp") == pytest.approx(0.136, abs=0.001)
    if pld_available():
        assert one.figure(1e-5, "pld").lower >= 3.02
    assert one.figure(1e-5, "zcdp").epsilon is None
    # without subsampling rho = 1/sigma^2 is a valid (loose) bound: shown, still labelled
    full = _figs(1.0, 3.0, 20)
    assert full["zcdp"].epsilon is not None and full["zcdp"].kind == REFERENCE
    assert full["zcdp"].epsilon >= full["rdp"].epsilon


def test_composition_states_total_delta() -> None:
    """Basic/advanced/optimal use delta per step and as slack: they hold at the total
    delta, which is what the figures state (not the requested 1e-5)."""
    figs = _figs(0.01, 6.0, 10000)
    assert figs["basic"].delta == pytest.approx(10000 * 0.01 * 1e-5)
    assert figs["advanced"].delta == pytest.approx(10000 * 0.01 * 1e-5 + 1e-5)
    assert figs["optimal"].delta == pytest.approx(1 - (1 - 1e-5) * (1 - 1e-7) ** 10000, rel=1e-9)
    assert figs["optimal"].delta <= figs["advanced"].delta
    for name in ("basic", "advanced", "optimal"):
        assert figs[name].epsilon is not None and f"{figs[name].delta:.3g}" in figs[name].note
    for name in ("rdp", "moments", "prv", "pld"):
        assert figs[name].delta == 1e-5
    assert composition_delta("advanced", [(0.01, 6.0, 10000)], 1e-5) == figs["advanced"].delta
    # the published table still comes out of the formulas
    assert figs["advanced"].epsilon == pytest.approx(7.450, rel=0.005)


def test_pld_missing_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    import bastion.privacy.accountants as acc

    monkeypatch.setattr(acc, "pld_available", lambda: False)
    figs = _figs(0.01, 1.0, 100)
    assert figs["pld"].epsilon is None and figs["pld"].note.startswith("not installed")
    assert PrivacyLedger().figure(1e-5, "pld").epsilon == 0.0
    led = PrivacyLedger()
    led.step(0.01, 1.0, 100)
    assert led.headline(1e-5).accountant in ("prv", "rdp")
    with pytest.raises(ConfigError, match="not installed"):
        led.epsilon(1e-5, "pld")


def test_rdp_prv_against_pld_grid() -> None:
    """On a random grid: RDP >= PLD (minus its discretisation error) and PRV's estimate
    within its stated error bound of PLD."""
    pytest.importorskip("dp_accounting")
    pytest.importorskip("opacus")
    rng = np.random.default_rng(10)
    dev_rdp, dev_prv = [], []
    for _ in range(12):
        q = float(10 ** rng.uniform(-3, -0.5))
        sigma = float(rng.uniform(0.6, 5.0))
        steps = int(rng.integers(1, 300))
        delta = float(10 ** rng.uniform(-7, -4))
        led = PrivacyLedger()
        led.step(q, sigma, steps)
        pld, prv, rdp = (led.figure(delta, a) for a in ("pld", "prv", "rdp"))
        assert rdp.epsilon >= pld.lower - 1e-9, (q, sigma, steps, delta)
        assert rdp.epsilon >= pld.epsilon - pld.error - 1e-9
        est = 0.5 * (prv.epsilon + prv.lower)
        assert abs(est - pld.epsilon) <= led.prv_eps_error + pld.error + 1e-6, (q, sigma, steps)
        assert prv.epsilon >= pld.lower - 1e-9
        dev_rdp.append(rdp.epsilon - pld.epsilon)
        dev_prv.append(abs(est - pld.epsilon))
    assert min(dev_rdp) >= -1e-6 and max(dev_prv) <= 0.02


@pytest.mark.parametrize("q,sigma,steps,why", [(1.0, 0.1, 1000, "RDP epsilon"),
                                               (1e-6, 100.0, 10**7, "steps"),
                                               (1e-4, 0.1, 1, "sigma 0.1 < 0.2")])
def test_numerical_accountants_bounded(q: float, sigma: float, steps: int, why: str) -> None:
    """q=1, sigma=0.1, T=1000 made the PLD grid exhaust memory; such settings are skipped
    with a reason and the RDP guarantee stands as the headline."""
    led = PrivacyLedger()
    led.step(q, sigma, steps)
    figs = led.figures(1e-5)
    for name in ("pld", "prv"):
        assert figs[name].epsilon is None and why in figs[name].note
    assert led.headline(1e-5, figs).accountant in ("rdp", "moments")
