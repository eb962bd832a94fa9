"""Randomized smoothing (Cohen et al. 2019): statistical validity on a synthetic base model
with known class probabilities, reproducibility under a seed, the attack-at-radius bug
detector, Gaussian-augmentation training and bad input."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import norm
from torch import nn

from bastion.attacks.evasion import PGD
from bastion.core import Classifier, ConfigError, InputSpec
from bastion.defenses.certify import (
    ABSTAIN,
    GaussianAugmentation,
    SmoothedClassifier,
    gaussian_augmentation_fit,
)
from bastion.models import build_classifier
from bastion.training import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")
SIGMA = 0.5


def threshold_model(t: float) -> Classifier:
    """f(z) = 1 if z > t else 0 on 1-d inputs: under N(0, sigma^2) noise at x = 0,
    P(class 0) = Phi(t / sigma) exactly and the smoothed classifier's true L2 radius at 0
    is exactly t."""
    lin = nn.Linear(1, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.0], [1.0]]))
        lin.bias.copy_(torch.tensor([0.0, -t]))
    return Classifier(lin, InputSpec((1,), bounds=(-1.0, 1.0)), 2, device="cpu")


def tolerance(alpha: float, trials: int) -> float:
    return alpha + 3 * math.sqrt(alpha * (1 - alpha) / trials)


def test_certify_overclaims_at_most_alpha() -> None:
    p_a, alpha, trials, n = 0.8, 0.05, 3000, 200
    t = SIGMA * norm.ppf(p_a)
    g = SmoothedClassifier(threshold_model(t), SIGMA, batch_size=4000)
    cert = g.certify(torch.zeros(trials, 1), n0=20, n=n, alpha=alpha, seed=1)
    wrong = (cert.label != 0) & (cert.label != ABSTAIN)
    over = (cert.radius > t) | wrong
    assert float(over.float().mean()) <= tolerance(alpha, trials)
    # the check has power: the plug-in estimate (no confidence bound) overstates half the time
    plug_in = SIGMA * torch.from_numpy(norm.ppf((cert.count.double() / n).clamp(0.5, 1 - 1e-9).numpy()))
    assert float((plug_in > t).float().mean()) > 0.3
    # and the certificate is not vacuous
    assert float(cert.radius.mean()) > 0.3 * t


def test_predict_wrong_label_at_most_alpha() -> None:
    alpha, trials = 0.05, 3000
    t = SIGMA * norm.ppf(0.6)              # class 0 has probability 0.6: a hard call
    g = SmoothedClassifier(threshold_model(t), SIGMA, batch_size=4000)
    pred = g.predict_smoothed(torch.zeros(trials, 1), n=100, alpha=alpha, seed=2)
    assert float((pred == 1).float().mean()) <= tolerance(alpha, trials)
    assert float((pred == 0).float().mean()) > 0.2        # it does answer, not only abstain
    # the vectorised two-sided test is scipy's binomtest
    from scipy.stats import binomtest

    counts = g.sample_counts(torch.zeros(20, 1), 100, 2, 2)
    for i in range(20):
        na, nb = int(counts[i].max()), int(counts[i].min())
        assert (binomtest(na, na + nb, 0.5).pvalue <= alpha) == (int(pred[i]) != ABSTAIN)


def test_certificates_reproducible_and_batch_independent(small_model: Classifier, mnist_test) -> None:
    x = mnist_test.x[:6]
    a = SmoothedClassifier(small_model, 1.0, batch_size=600).certify(x, n0=50, n=300, seed=3)
    b = SmoothedClassifier(small_model, 1.0, batch_size=100).certify(x, n0=50, n=300, seed=3)
    assert torch.equal(a.label, b.label) and torch.equal(a.count, b.count)
    # input i's certificate depends on its own index, not on its neighbours
    c = SmoothedClassifier(small_model, 1.0).certify(x[2:4], n0=50, n=300, seed=3, offset=2)
    assert torch.equal(c.count, a.count[2:4])
    d = SmoothedClassifier(small_model, 1.0).certify(x, n0=50, n=300, seed=4)
    assert not torch.equal(d.count, a.count)


@pytest.fixture(scope="module")
def noisy_mlp(mnist_train, mnist_test) -> Classifier:
    torch.manual_seed(0)
    clf = build_classifier("mlp", mnist_train.input_spec(), 10, {"hidden": [64]}, device="cpu")
    res = gaussian_augmentation_fit(clf, mnist_train.take(2000), mnist_test.take(200),
                                    GaussianAugmentation(sigma=0.25),
                                    TrainConfig(epochs=2, batch_size=64, progress=False, seed=0))
    assert res.defense["name"] == "gaussian-aug" and clf.meta["defense"]["sigma"] == 0.25
    return clf


def test_gaussian_augmentation_helps_under_noise(noisy_mlp: Classifier, mnist_test) -> None:
    x, y = mnist_test.x[:300], mnist_test.y[:300]
    gen = torch.Generator().manual_seed(0)
    noisy = (x + 0.25 * torch.randn(x.shape, generator=gen))
    assert noisy_mlp.accuracy(noisy, y) > 0.7


def test_attack_at_certified_radius_never_flips(noisy_mlp: Classifier, mnist_test) -> None:
    """Bug detector: PGD-L2 with EOT over the noise, at each input's certified radius, must
    not change the smoothed prediction of any certified-correct input."""
    g = SmoothedClassifier(noisy_mlp, 0.25, batch_size=2000)
    x, y = mnist_test.x[:16], mnist_test.y[:16]
    cert = g.certify(x, n0=50, n=500, alpha=0.001, seed=0)
    ok = torch.nonzero(cert.certified_correct(y)).flatten()
    assert ok.numel() >= 8
    flips_far = 0
    for i in ok.tolist():
        r = float(cert.radius[i])
        for eps, far in ((r, False), (4 * r + 1.0, True)):
            adv = PGD(eps=eps, norm="l2", steps=20, seed=0)(g.adaptive(8), x[i:i + 1], y[i:i + 1]).x_adv
            pred = int(g.predict_smoothed(adv, n=500, alpha=0.001, seed=9, offset=i)[0])
            if far:
                flips_far += pred not in (int(y[i]), ABSTAIN)
            else:
                assert pred in (int(y[i]), ABSTAIN), f"input {i}: flipped inside its certified radius {r:.3f}"
    assert flips_far >= 1          # the attack is strong enough to flip outside the radius


@pytest.mark.parametrize("kwargs, match", [
    ({"sigma": 0.0}, "sigma"), ({"sigma": -1.0}, "sigma"), ({"sigma": float("nan")}, "sigma"),
])
def test_bad_sigma(small_model: Classifier, kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        SmoothedClassifier(small_model, **kwargs)


@pytest.mark.parametrize("kwargs, match", [
    ({"alpha": 0.0}, "alpha"), ({"alpha": 0.5}, "alpha"), ({"alpha": 1.2}, "alpha"),
    ({"n0": 0}, "n0"), ({"n": 0}, "n must"), ({"n": 2.5}, "n must"),
])
def test_bad_certify_arguments(small_model: Classifier, kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        SmoothedClassifier(small_model, 0.25).certify(torch.zeros(1, 1, 28, 28), **kwargs)


def test_bad_training_sigma() -> None:
    with pytest.raises(ConfigError, match="sigma"):
        GaussianAugmentation(sigma=0).validate()


def test_denoised_smoothing_certifies_an_off_the_shelf_model(trained_model, mnist_train, mnist_test) -> None:
    """Salman et al. (2020): a denoiser in front of an unchanged classifier raises its
    certified accuracy under noise it was never trained for."""
    from bastion.defenses.certify.denoise import DenoiserConfig, train_denoiser

    base = trained_model("cnn-small", epochs=3)
    x, y = mnist_test.x[:30], mnist_test.y[:30]
    before = SmoothedClassifier(base, 0.5).certify(x, n0=30, n=100, alpha=0.01).certified_accuracy(y, [0.25])
    weights = {k: v.clone() for k, v in base.state_dict().items()}
    model, rec = train_denoiser(base, mnist_train.take(2000),      # after a certify: weights must train
                                DenoiserConfig(sigma=0.5, objective="mse", epochs=1, width=8, depth=3, lr=3e-3))
    assert all(torch.equal(weights[k], v) for k, v in base.state_dict().items())
    after = SmoothedClassifier(model, 0.5).certify(x, n0=30, n=100, alpha=0.01).certified_accuracy(y, [0.25])
    assert after[0.25] > before[0.25] + 0.1
    assert rec["history"][0]["objective"] == "mse"
    with pytest.raises(ConfigError, match="objective"):
        DenoiserConfig(objective="l1").validate()


def test_run_certify_with_a_denoiser(small_model: Classifier, mnist_train, mnist_test) -> None:
    """`bastion certify --denoise-epochs N` path: the record of the denoiser comes back."""
    from bastion.defenses.certify.run import CertifySettings, run_certify

    s = CertifySettings(sigma=0.5, n0=10, samples=50, alpha=0.01, radii=(0.0,), denoise_epochs=1,
                        denoise_objective="mse")
    res = run_certify(small_model, mnist_test.x[:4], mnist_test.y[:4], s, mnist_train.take(200))
    assert res["summary"]["denoiser"]["objective"] == "mse" and len(res["rows"]) == 4
    with pytest.raises(ConfigError, match="training data"):
        run_certify(small_model, mnist_test.x[:4], mnist_test.y[:4], s)
