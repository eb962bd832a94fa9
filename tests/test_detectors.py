"""Evasion detectors: benign false-positive rate at the calibrated level, detection of
FGSM / PGD examples by feature squeezing (Xu et al. 2018), the binary input detector
(Metzen et al. 2017) and the XEnsemble L1 rule, the Detected classifier, the detection
metrics, the detector-aware attack (Carlini & Wagner 2017) and refusals of bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bastion.attacks.evasion import FGSM, PGD
from bastion.core import Classifier, ConfigError
from bastion.defenses.detect import (
    BinaryConfig,
    BinaryDetector,
    Detected,
    DetectorAwarePGD,
    FeatureSqueezing,
    L1Config,
    L1Detector,
    Median2x2,
    SqueezeConfig,
    build_detector,
    detection_metrics,
    evaluate_detection,
    quantile_threshold,
    wilson_interval,
)
from bastion.defenses.preprocess import BitDepth, NonLocalMeans

pytestmark = pytest.mark.usefixtures("one_thread")

N_CAL, N_HELD, N_ATT = 400, 500, 100


@pytest.fixture(scope="module")
def split(mnist_test):
    """Calibration, held-out benign and attack sets from disjoint test images."""
    x, y = mnist_test.x, mnist_test.y
    cal = x[:N_CAL]
    held = x[N_CAL:N_CAL + N_HELD]
    xa, ya = x[N_CAL + N_HELD - N_ATT:N_CAL + N_HELD], y[N_CAL + N_HELD - N_ATT:N_CAL + N_HELD]
    return cal, held, xa, ya


@pytest.fixture(scope="module")
def squeezed(small_model, split):
    det = FeatureSqueezing(small_model)
    det.calibrate(split[0])
    return Detected(small_model, det)


@pytest.fixture(scope="module")
def binary(small_model, mnist_train, split):
    det = BinaryDetector(small_model, BinaryConfig(epochs=2))
    det.fit(mnist_train.x[:1000], mnist_train.y[:1000])
    det.calibrate(split[0])
    return Detected(small_model, det)


def binomial_tolerance(p: float, n_cal: int, n_held: int, z: float = 3.0) -> float:
    """z standard deviations of the difference between a calibrated and a held-out rate."""
    return z * math.sqrt(p * (1 - p) * (1 / n_cal + 1 / n_held))


# --------------------------------------------------------------------------- calibration


def test_quantile_threshold_flags_at_most_fpr():
    s = torch.arange(100, dtype=torch.float32)
    t = quantile_threshold(s, 0.05)
    assert t == 94.0 and int((s > t).sum()) == 5
    assert int((s > quantile_threshold(s, 0.5)).sum()) == 50


def test_heldout_fpr_matches_calibration(squeezed, split):
    _, held, _, _ = split
    det = squeezed.detector
    assert det.calibration["benign_flagged"] <= 0.05
    fpr = float(squeezed.detect(held).float().mean())
    assert abs(fpr - 0.05) <= binomial_tolerance(0.05, N_CAL, N_HELD), fpr
    det2 = FeatureSqueezing(det.classifier, SqueezeConfig(fpr=0.2))
    det2.calibrate(split[0])
    fpr2 = float(det2.flag(held).float().mean())
    assert abs(fpr2 - 0.2) <= binomial_tolerance(0.2, N_CAL, N_HELD), fpr2
    assert det2.threshold < det.threshold


def test_binary_heldout_fpr_matches_calibration(binary, split):
    fpr = float(binary.detect(split[1]).float().mean())
    assert abs(fpr - 0.05) <= binomial_tolerance(0.05, N_CAL, N_HELD), fpr


# --------------------------------------------------------------------------- feature squeezing


def test_median_2x2_matches_scipy():
    ndimage = pytest.importorskip("scipy.ndimage")
    x = torch.rand(2, 3, 7, 6, generator=torch.Generator().manual_seed(0))
    ref = ndimage.median_filter(x.numpy(), size=(1, 1, 2, 2), mode="reflect")
    np.testing.assert_allclose(Median2x2()(x).numpy(), ref, atol=1e-7)


def test_default_squeezers_follow_the_paper(small_model):
    fs = FeatureSqueezing(small_model)
    assert [t.name for t in fs.transforms] == ["bit-depth", "median-2x2"]
    assert fs.transforms[0].bits == 1
    cifar = SqueezeConfig().default_squeezers(
        type(small_model.spec)(shape=(3, 32, 32)))
    assert [t.name for t in cifar] == ["bit-depth", "median-2x2", "nlm"]
    assert cifar[0].bits == 5 and cifar[2] == NonLocalMeans(search=13, patch=3, h=2.0)


def test_squeezing_detects_fgsm_and_pgd(squeezed, split):
    _, _, x, y = split
    for attack, floor in ((FGSM(eps=0.3), 0.6), (PGD(eps=0.3, steps=20, alpha=0.03), 0.6)):
        res = attack(squeezed, x, y)
        m = evaluate_detection(squeezed, x, res.x_adv, y, res.success)
        assert m.attack_success_rate.value > 0.8
        # measured on this model: FGSM 0.82, PGD 0.88 detected at a 5% benign FPR
        assert m.detection_rate.value >= floor, (attack.name, m.summary())
        assert m.detection_rate.low > m.false_positive_rate.high
        assert m.robust_accuracy_with_reject.value > m.robust_accuracy.value + 0.5


def test_squeezing_score_is_near_zero_on_benign(squeezed, split):
    s = squeezed.detector.score(split[1])
    assert float(s.median()) < 0.1 and float(s.max()) <= 2.0 + 1e-5  # measured: median 0.054
    _, _, x, y = split
    adv = squeezed.detector.score(FGSM(eps=0.3)(squeezed, x, y).x_adv)
    assert float(adv.median()) > 10 * float(s.median())


# --------------------------------------------------------------------------- binary detector


def test_binary_detector_detects_fgsm(binary, split):
    _, _, x, y = split
    res = FGSM(eps=0.3)(binary, x, y)
    m = evaluate_detection(binary, x, res.x_adv, y, res.success)
    assert m.detection_rate.value >= 0.9, m.summary()
    assert m.detection_rate.low > m.false_positive_rate.high + 0.5
    assert binary.detector.calibration["train_accuracy"] > 0.95


def test_binary_training_is_seeded(small_model, mnist_train):
    def trained() -> BinaryDetector:
        d = BinaryDetector(small_model, BinaryConfig(epochs=1, seed=3))
        return d.fit(mnist_train.x[:200], mnist_train.y[:200])

    a, b = trained(), trained()
    x = mnist_train.x[200:232]
    torch.testing.assert_close(a.score(x), b.score(x))


def test_untrained_binary_detector_refuses(small_model, split):
    with pytest.raises(ConfigError, match="not trained"):
        BinaryDetector(small_model).calibrate(split[0])


# --------------------------------------------------------------------------- L1 rule


def test_l1_rule_fixed_bound_and_calibrated(small_model, split):
    cal, held, x, y = split
    det = L1Detector(small_model)
    assert det.threshold == 0.5 and [t.name for t in det.transforms] == [
        "bit-depth", "median", "rotation"]
    assert det.transforms[2].degrees == -12.0
    screened = Detected(small_model, det)
    res = FGSM(eps=0.3)(screened, x, y)
    m = evaluate_detection(screened, x, res.x_adv, y, res.success)
    # a label change puts the distance above 1, so the lower bound catches most examples
    assert m.detection_rate.value >= 0.7, m.summary()
    assert m.detection_rate.value > m.false_positive_rate.value + 0.4
    assert L1Detector(small_model, L1Config(bound="upper")).threshold == 1.5
    det.calibrate(cal, fpr=0.1)
    fpr = float(det.flag(held).float().mean())
    assert abs(fpr - 0.1) <= binomial_tolerance(0.1, N_CAL, N_HELD), fpr
    d = det.distances(x[:8])
    assert d.shape == (8, 3) and bool((d >= 0).all()) and bool((d <= 2 + 1e-5).all())


# --------------------------------------------------------------------------- Detected


def test_detected_is_a_classifier_attacks_run_against(squeezed, small_model, split):
    _, _, x, y = split
    assert isinstance(squeezed, Classifier)
    torch.testing.assert_close(squeezed.logits(x[:16]), small_model.logits(x[:16]))
    a = PGD(eps=0.1, steps=5)(squeezed, x[:16], y[:16])
    b = PGD(eps=0.1, steps=5)(small_model, x[:16], y[:16])
    torch.testing.assert_close(a.x_adv, b.x_adv)
    pred, flagged = squeezed.predict_with_reject(a.x_adv)
    assert pred.shape == flagged.shape == (16,) and flagged.dtype == torch.bool
    assert squeezed.meta["defense"]["kind"] == "detector"


def test_detection_metrics_by_hand():
    fc = torch.tensor([0, 0, 1, 0], dtype=torch.bool)
    fa = torch.tensor([1, 0, 1, 0], dtype=torch.bool)
    y = torch.tensor([0, 1, 2, 3])
    pred = torch.tensor([5, 5, 5, 3])
    ok = pred != y
    m = detection_metrics(fc, fa, pred, y, ok)
    assert m.detection_rate.value == pytest.approx(2 / 3)
    assert m.false_positive_rate.value == 0.25
    assert m.robust_accuracy_with_reject.value == 0.75  # flagged 0, 2; correct 3
    assert m.robust_accuracy.value == 0.25
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)


# --------------------------------------------------------------------------- adaptive attack


def test_detector_aware_attack_lowers_detection(binary, split):
    _, _, x, y = split
    x, y = x[:64], y[:64]
    plain = PGD(eps=0.3, steps=30, alpha=0.025)(binary, x, y)
    aware = DetectorAwarePGD(eps=0.3, steps=30)(binary, x, y)
    mp = evaluate_detection(binary, x, plain.x_adv, y, plain.success)
    ma = evaluate_detection(binary, x, aware.x_adv, y, aware.success)
    assert mp.detection_rate.value >= 0.9
    assert ma.attack_success_rate.value >= 0.9
    assert ma.detection_rate.value <= mp.detection_rate.value - 0.5, (mp.summary(), ma.summary())
    assert ma.robust_accuracy_with_reject.value < mp.robust_accuracy_with_reject.value - 0.4
    assert float((aware.x_adv - x).abs().max()) <= 0.3 + 1e-6


def test_detector_aware_attack_through_bpda_lowers_squeezing(squeezed, split):
    _, _, x, y = split
    x, y = x[:48], y[:48]
    plain = PGD(eps=0.3, steps=20, alpha=0.03)(squeezed, x, y)
    aware = DetectorAwarePGD(eps=0.3, steps=20)(squeezed, x, y)
    mp = evaluate_detection(squeezed, x, plain.x_adv, y, plain.success)
    ma = evaluate_detection(squeezed, x, aware.x_adv, y, aware.success)
    assert ma.attack_success_rate.value >= 0.9
    assert ma.detection_rate.value < mp.detection_rate.value, (mp.summary(), ma.summary())
    # measured: mean squeezing distance 1.42 after PGD, 1.01 after the aware attack
    score = squeezed.detector.score
    assert float(score(aware.x_adv).mean()) < float(score(plain.x_adv).mean()) - 0.2


def test_detector_aware_l2_attack_lowers_squeezing_and_stays_in_the_l2_ball(squeezed, split):
    _, _, x, y = split
    x, y = x[:48], y[:48]
    plain = PGD(norm="l2", eps=3.0, steps=20)(squeezed, x, y)
    aware = DetectorAwarePGD(norm="l2", eps=3.0, steps=20)(squeezed, x, y)
    mp = evaluate_detection(squeezed, x, plain.x_adv, y, plain.success)
    ma = evaluate_detection(squeezed, x, aware.x_adv, y, aware.success)
    assert ma.attack_success_rate.value >= 0.85, ma.summary()
    assert ma.detection_rate.value < mp.detection_rate.value, (mp.summary(), ma.summary())
    score = squeezed.detector.score
    assert float(score(aware.x_adv).mean()) < float(score(plain.x_adv).mean()) - 0.1
    assert float((aware.x_adv - x).flatten(1).norm(dim=1).max()) <= 3.0 + 1e-4
    with pytest.raises(ConfigError, match="norm"):
        DetectorAwarePGD(norm="l1")(squeezed, x[:2], y[:2])


def test_detector_aware_attack_needs_a_detected_model(small_model, split):
    _, _, x, y = split
    with pytest.raises(ConfigError, match="Detected"):
        DetectorAwarePGD(steps=1)(small_model, x[:4], y[:4])
    with pytest.raises(ConfigError, match="lam"):
        DetectorAwarePGD(lam=-1.0)(small_model, x[:4], y[:4])


# --------------------------------------------------------------------------- bad input


def test_unknown_detector_lists_valid_ones(small_model):
    with pytest.raises(ConfigError, match="binary, feature-squeezing, l1"):
        build_detector("mahalanobis", small_model)
    with pytest.raises(ConfigError, match="valid parameters"):
        build_detector("feature-squeezing", small_model, bits=3)


@pytest.mark.parametrize("fpr", [0.0, 1.0, -0.1, 1.5, float("nan"), True, "0.05"])
def test_fpr_outside_unit_interval_refused(small_model, fpr):
    for name in ("feature-squeezing", "binary", "l1"):
        with pytest.raises(ConfigError) as e:
            build_detector(name, small_model, fpr=fpr)
        assert "fpr must lie strictly between 0 and 1" in str(e.value)
        assert "\n" not in str(e.value)


def test_wrong_parameter_ranges_refused(small_model, split):
    bad = [("feature-squeezing", {"bits_gray": 0}), ("feature-squeezing", {"squeezers": []}),
           ("feature-squeezing", {"squeezers": ["warp"]}),
           ("feature-squeezing", {"squeezers": "bit-depth"}), ("l1", {"denoisers": "median"}),
           ("feature-squeezing", {"squeezers": [{"name": "median-2x2", "kernel": 3}]}),
           ("l1", {"bound": 2.5}), ("l1", {"bound": "middle"}),
           ("binary", {"epochs": 0}), ("binary", {"lr": -1.0}),
           ("binary", {"attack": "nope"}), ("binary", {"attack_params": {"epz": 0.3}})]
    for name, params in bad:
        with pytest.raises(ConfigError):
            build_detector(name, small_model, **params)
    det = FeatureSqueezing(small_model)
    with pytest.raises(ConfigError, match="calibrate"):
        det.flag(split[0][:4])
    with pytest.raises(ConfigError, match="at least 20"):
        det.calibrate(split[0][:10])
    with pytest.raises(ConfigError, match="fpr"):
        det.calibrate(split[0], fpr=1.0)


def test_detected_refuses_a_detector_of_another_model(small_model, trained_model):
    other = trained_model("cnn-small", epochs=3)
    with pytest.raises(ConfigError, match="different model"):
        Detected(other, FeatureSqueezing(small_model))
    with pytest.raises(ConfigError, match="Detector"):
        Detected(small_model, BitDepth(1))  # type: ignore[arg-type]
