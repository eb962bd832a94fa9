"""Accountants against the dissertation's published values and Opacus's RDP accountant."""

from __future__ import annotations

import math

import pytest

from bastion.core import ConfigError
from bastion.privacy import PrivacyLedger, compute_epsilon, compute_epsilons, noise_multiplier
from bastion.privacy.accountants import gaussian_step_epsilon

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
    for acc in ("rdp", "moments", "zcdp"):
        s = noise_multiplier(1.0, 0.01, 10000, 1e-5, accountant=acc)
        assert compute_epsilon(0.01, s, 10000, 1e-5, acc) <= 1.0
        assert compute_epsilon(0.01, s * 0.99, 10000, 1e-5, acc) > 1.0
    # published zCDP at sigma 6 -> inverting 1.159 gives back ~6
    assert noise_multiplier(1.1588, 0.01, 10000, 1e-5, "zcdp") == pytest.approx(6.0, rel=1e-3)


@pytest.mark.parametrize("kwargs", [dict(delta=1.0), dict(delta=0.0), dict(sigma=0.0), dict(sigma=-1.0),
                                    dict(q=0.0), dict(q=1.5), dict(accountant="nope")])
def test_bad_inputs(kwargs: dict) -> None:
    args = dict(q=0.01, sigma=6.0, steps=100, delta=1e-5, accountant="rdp") | kwargs
    with pytest.raises(ConfigError):
        compute_epsilon(**args)
