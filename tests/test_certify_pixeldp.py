"""PixelDP (Lecuyer et al. 2019): noise calibration, sensitivity control, the robustness
test and L_max, the attack-at-L_max bug detector, and unsupported pre-noise layers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from bastion.attacks.evasion import PGD
from bastion.core import Classifier, ConfigError, InputSpec
from bastion.defenses.certify.pixeldp import (
    PixelDPClassifier,
    PixelDPConfig,
    layer_sensitivity,
    pixeldp_fit,
    robust_at,
)
from bastion.models import build_classifier
from bastion.training import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")
L = 0.3


@pytest.fixture(scope="module")
def pdp(mnist_train, mnist_test) -> PixelDPClassifier:
    torch.manual_seed(0)
    base = build_classifier("mlp", mnist_train.input_spec(), 10, {"hidden": [64]}, device="cpu")
    clf = PixelDPClassifier(base, PixelDPConfig(construction_bound=L))
    pixeldp_fit(clf, mnist_train.take(2000), None, TrainConfig(epochs=2, batch_size=64, progress=False))
    return clf


def test_noise_calibration() -> None:
    cfg = PixelDPConfig(epsilon=1.0, delta=0.05, construction_bound=0.1)
    assert cfg.noise_scale() == pytest.approx(math.sqrt(2 * math.log(1.25 / 0.05)) * 0.1)
    lap = PixelDPConfig(mechanism="laplace", epsilon=0.5, construction_bound=0.2)
    assert lap.noise_scale() == pytest.approx(0.4) and lap.dp_delta == 0.0


def test_sensitivity_bound_is_an_upper_bound_and_enforced(mnist_train) -> None:
    torch.manual_seed(0)
    base = build_classifier("cnn-small", mnist_train.input_spec(), 10, {}, device="cpu")
    conv = base.module.features[0]
    with torch.no_grad():
        conv.weight.mul_(5.0)
    # power iteration lower-estimates ||conv||_2; the bound must lie above it
    v = torch.randn(1, 1, 28, 28)
    w = conv.weight.detach()
    for _ in range(30):
        u = nn.functional.conv2d(v, w, None, conv.stride, conv.padding)
        v = nn.functional.conv_transpose2d(u, w, None, conv.stride, conv.padding)
        v = v / v.norm()
    est = float(nn.functional.conv2d(v, w, None, conv.stride, conv.padding).norm())
    assert layer_sensitivity(conv, "l2") >= est * 0.999
    for mech in ("gaussian", "laplace"):
        for ctl in ("normalize", "parseval"):
            clf = PixelDPClassifier(base, PixelDPConfig(mechanism=mech, position="first-layer", sensitivity=ctl))
            assert clf.sensitivity() <= 1.0 + 1e-6


def test_lmax_consistent_with_robustness_test(pdp: PixelDPClassifier, mnist_test) -> None:
    x, y = mnist_test.x[:40], mnist_test.y[:40]
    cert = pdp.certify(x, draws=200, eta=0.05, seed=0)
    assert cert.l_max.max() <= L + 1e-6               # Gaussian: epsilon <= 1 caps L_max at L
    lb, ub = cert.lower.double().numpy(), cert.upper.double().numpy()
    s, sens = pdp.noise.scale, pdp.sensitivity()
    for t in (0.05, 0.1, 0.2):
        passes = robust_at(lb, ub, t, pdp.cfg, s, sens)
        assert np.array_equal(passes, cert.l_max.numpy() >= t) or \
            np.abs(cert.l_max.numpy()[passes != (cert.l_max.numpy() >= t)] - t).max() < 1e-6
    curves = cert.curves(y, [0.05, 0.1, 0.2])
    assert curves["accuracy"][0] > 0.6
    assert curves["robust_accuracy"] == sorted(curves["robust_accuracy"], reverse=True)
    again = pdp.certify(x, draws=200, eta=0.05, seed=0)
    assert torch.equal(again.counts, cert.counts)


def test_attack_at_lmax_never_flips(pdp: PixelDPClassifier, mnist_test) -> None:
    x, y = mnist_test.x[:12], mnist_test.y[:12]
    cert = pdp.certify(x, draws=300, eta=0.05, seed=0)
    ok = torch.nonzero((cert.label == y) & (cert.l_max > 0.02)).flatten()
    assert ok.numel() >= 5
    for i in ok.tolist():
        eps = float(cert.l_max[i])
        adv = PGD(eps=eps, norm="l2", steps=20, seed=0)(pdp.adaptive(8), x[i:i + 1], y[i:i + 1]).x_adv
        after = pdp.certify(adv, draws=300, eta=0.05, seed=1, offset=i)
        assert int(after.label[0]) == int(y[i]), f"input {i} flipped inside L_max {eps:.3f}"


def test_unbounded_pre_noise_layer_explained() -> None:
    net = nn.Sequential(nn.Flatten(), nn.Tanh(), nn.Linear(4, 2))
    clf = Classifier(net, InputSpec((4,)), 2, device="cpu")
    with pytest.raises(ConfigError, match="supported pre-noise layers: Conv2d, Linear"):
        PixelDPClassifier(clf, PixelDPConfig(position="first-layer"))
    with pytest.raises(ConfigError, match="epsilon <= 1"):
        PixelDPClassifier(clf, PixelDPConfig(epsilon=2.0))
    with pytest.raises(ConfigError, match="mechanism"):
        PixelDPConfig(mechanism="uniform").validate()
    assert PixelDPClassifier(clf, PixelDPConfig(mechanism="laplace", epsilon=2.0)).noise.scale > 0
