"""DP-SGD privacy fixes: quantile clipping's noise split (Andrew et al. 2021), secure noise
by default with a labelled seeded mode, guarantee-only budgets, and the DP statement."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from bastion.core import ConfigError, InputSpec
from bastion.data import load
from bastion.data.dataset import Dataset
from bastion.models import build_classifier
from bastion.privacy import PrivacyLedger, compute_epsilon
from bastion.privacy.statement import NOISE_SECURE, NOISE_SEEDED, dp_statement
from bastion.training.dp import (
    DPSGD,
    DPConfig,
    effective_noise_multiplier,
    quantile_gradient_multiplier,
    train_dp,
)


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load("digits", "train", size=8)


def _mlp(seed: int = 0):
    torch.manual_seed(seed)
    return build_classifier("mlp", InputSpec((1, 8, 8)), 10, {"hidden": [16]}, device="cpu")


@pytest.mark.parametrize("sigma,batch,old", [(6.0, 256, 5.5589), (2.0, 64, 1.7589)])
def test_quantile_effective_multiplier(sigma: float, batch: int, old: float) -> None:
    """The count of unclipped examples has sensitivity 1; privatised with noise calibrated for
    sensitivity 1/2 it left an effective multiplier of 5.56 (not 6) at the defaults and 1.76
    (not 2) at batch 64. With Andrew et al.'s shifted count (sensitivity 1/2) it is sigma."""
    sb = batch / 20
    g = quantile_gradient_multiplier(sigma, sb)
    assert g == pytest.approx((sigma ** -2 - (2 * sb) ** -2) ** -0.5)
    assert effective_noise_multiplier(g, sb, 1.0) == pytest.approx(old, abs=5e-4)
    assert effective_noise_multiplier(g, sb, 0.5) == pytest.approx(sigma, rel=1e-12)
    dp = DPSGD(_mlp(), DPConfig(variant="quantile", sigma=sigma, batch_size=batch), n=2000)
    assert dp.sigma_at(0) == pytest.approx(sigma, rel=1e-12)       # what the ledger charges
    x = torch.zeros(0, 1, 8, 8)
    _, info = dp.privatize(x, torch.zeros(0, dtype=torch.long))
    assert info.noise_std == pytest.approx(g * dp.clip_at(0))
    assert info.sigma == pytest.approx(sigma, rel=1e-12)
    dp.close()


def test_quantile_count_has_sensitivity_half() -> None:
    """Adding one example moves the released count by exactly +-1/2 (Andrew et al.'s
    b_i - 1/2 terms), not by 1 or 0."""
    dp = DPSGD(_mlp(), DPConfig(variant="quantile", sigma=1e-10, count_noise=1e-9, batch_size=50),
               n=1000)
    m = dp.expected_batch
    base = dp.quantile_fraction(30, 50)
    assert base == pytest.approx(30 / 50, abs=1e-6)
    assert (dp.quantile_fraction(31, 51) - base) * m == pytest.approx(0.5, abs=1e-5)
    assert (dp.quantile_fraction(30, 51) - base) * m == pytest.approx(-0.5, abs=1e-5)
    dp.close()


def _noise(cfg: DPConfig) -> torch.Tensor:
    dp = DPSGD(_mlp(), cfg, n=1000)
    grads, _ = dp.privatize(torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long))
    keep = dp.sample(torch.zeros(1000, 1), torch.zeros(1000))[0].shape[0]
    dp.close()
    return torch.cat([g.flatten() for g in grads] + [torch.tensor([float(keep)])])


def test_default_noise_is_secure() -> None:
    """Two default runs with the same seed draw different noise and samples (a seed-0
    generator let anyone subtract the noise exactly)."""
    cfg = DPConfig(sigma=2.0, clip=1.0, batch_size=50, seed=0)
    assert cfg.noise_mode == NOISE_SECURE
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # the secure mode does not warn
        a, b = _noise(cfg), _noise(cfg)
    assert not torch.equal(a[:-1], b[:-1])


def test_seeded_noise_is_reproducible_and_labelled(digits: Dataset) -> None:
    cfg = DPConfig(sigma=2.0, clip=1.0, batch_size=50, noise_seed=7)
    with pytest.warns(UserWarning, match="NOT private"):
        a = _noise(cfg)
    with pytest.warns(UserWarning, match="NOT private"):
        b = _noise(cfg)
    assert torch.equal(a, b)
    small = Dataset(digits.x[:300], digits.y[:300], 10)
    run = DPConfig(sigma=2.0, clip=1.0, batch_size=30, steps=3, lr=0.05, progress=False)
    with pytest.warns(UserWarning, match="NOT private"):
        seeded = train_dp(_mlp(), small, None, DPConfig(**{**run.__dict__, "noise_seed": 3}))
    assert seeded.privacy_record()["noise"] == NOISE_SEEDED == "seeded (reproducible, NOT private)"
    assert "Noise: seeded (reproducible, NOT private)." in "\n".join(dp_statement(seeded.privacy_record()))
    secure = train_dp(_mlp(), small, None, run)
    assert secure.privacy_record()["noise"] == "secure"


def test_budget_with_pld_and_reference_refused(digits: Dataset) -> None:
    pytest.importorskip("dp_accounting")
    small = Dataset(digits.x[:400], digits.y[:400], 10)
    cfg = DPConfig(sigma=1.5, clip=1.0, batch_size=40, steps=60, target_epsilon=2.0, lr=0.05,
                   accountant="pld", progress=False)
    res = train_dp(_mlp(), small, None, cfg)
    assert res.stop_reason == "budget" and 0 < res.steps < 60
    assert res.epsilon["pld"] <= 2.0 < compute_epsilon(0.1, 1.5, res.steps + 1, 1e-5, "pld")
    with pytest.raises(ConfigError, match="reference formula"):
        DPConfig(accountant="zcdp", target_epsilon=1.0).validate()


def test_dp_statement_of_trained_model(digits: Dataset) -> None:
    """TF Privacy's form: data set size, batch and sampling rate, sigma, steps and epochs,
    adjacency, delta, epsilon under Poisson sampling with its accountant, and that every
    checkpoint is covered."""
    small = Dataset(digits.x[:300], digits.y[:300], 10)
    cfg = DPConfig(sigma=1.0, clip=1.0, batch_size=30, steps=31, lr=0.05, progress=False)
    res = train_dp(_mlp(), small, None, cfg)
    rec = res.privacy_record()
    text = "\n".join(dp_statement(rec))
    head = rec["headline"]
    assert head["accountant"] in ("pld", "prv", "rdp", "moments")
    led = PrivacyLedger()
    led.step(0.1, 1.0, 31)
    assert head["epsilon"] == pytest.approx(led.headline(1e-5).epsilon)
    for part in ("over 300 examples", "expected batch size 30", "sampling rate q = 0.100000",
                 "noise multiplier 1.0", "31 steps (3.10 epochs)",
                 "every intermediate model and checkpoint",
                 "add-or-remove-one example adjacency at delta = 1e-05",
                 f"Epsilon assuming Poisson sampling: {head['epsilon']:.3f} (tightest guarantee: "
                 f"{head['accountant']}", "Noise: secure."):
        assert part in text, (part, text)
    assert math.isfinite(head["epsilon"]) and rec["accountants"]["zcdp"]["epsilon"] is None


def test_old_checkpoint_record_is_labelled() -> None:
    """A record written before labelling (six bare numbers) is relabelled from its
    schedule: the zCDP 2.55 it stored is not shown, the headline is a guarantee."""
    from bastion.privacy.statement import record_summary

    old = {"variant": "baseline", "sigma": 1.0, "clip": 1.0, "delta": 1e-5, "batch_size": 256,
           "sample_rate": 0.064, "steps": 31, "sigma_range": [1.0, 1.0],
           "schedule": [[0.064, 1.0, 31]],
           "epsilon": {"basic": 68.35, "advanced": 610.4, "optimal": 68.35, "zcdp": 2.545,
                       "moments": 4.007, "rdp": 3.369}}
    summ = record_summary(old)
    assert summ is not None and summ["accountants"]["zcdp"]["epsilon"] is None
    assert summ["headline"]["epsilon"] <= 3.37 and summ["headline"]["accountant"] != "zcdp"
    text = "\n".join(dp_statement(old))
    assert "2.545" not in text and "over 4000 examples" in text


def test_missing_budget_accountant_refused_upfront(monkeypatch: pytest.MonkeyPatch) -> None:
    import bastion.training.dp as dpmod

    monkeypatch.setattr(dpmod, "pld_available", lambda: False)
    with pytest.raises(ConfigError, match="not installed"):
        DPConfig(accountant="pld", target_epsilon=1.0).validate()
    DPConfig(accountant="rdp", target_epsilon=1.0).validate()
