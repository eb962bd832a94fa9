"""IBP, CROWN-IBP and CROWN (Gowal et al. 2018; Zhang et al. 2018, 2020): soundness against
sampled points, verified accuracy never above PGD-40 robust accuracy, IBP training, and
unsupported layers named before work."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bastion.attacks.evasion import PGD
from bastion.core import Classifier, ConfigError, InputSpec
from bastion.defenses.certify import IBPTraining, ibp_fit, verify
from bastion.defenses.certify.bounds import METHODS, crown_margins, ibp_margins, layers_of
from bastion.models import build_classifier
from bastion.training import TrainConfig, fit

pytestmark = pytest.mark.usefixtures("one_thread")
EPS = 0.05


@pytest.fixture(scope="module")
def ibp_mlp(mnist_train, mnist_test) -> Classifier:
    torch.manual_seed(0)
    clf = build_classifier("mlp", mnist_train.input_spec(), 10, {"hidden": [64]}, device="cpu")
    ibp_fit(clf, mnist_train.take(2000), None, IBPTraining(eps=2 * EPS, warmup_epochs=0.2, ramp_epochs=1.0),
            TrainConfig(epochs=3, batch_size=50, lr=3e-3, progress=False, seed=0))
    return clf


@pytest.mark.parametrize("method", METHODS)
def test_bounds_hold_at_sampled_points(small_model: Classifier, mnist_test, method: str) -> None:
    x, y = mnist_test.x[:4], mnist_test.y[:4]
    eps = 0.02
    lower = (ibp_margins(small_model, x, y, eps) if method == "ibp"
             else crown_margins(small_model, x, y, eps, crown_inner=method == "crown"))
    gen = torch.Generator().manual_seed(0)
    for _ in range(4):
        pt = (x + eps * (2 * torch.rand(x.shape, generator=gen) - 1)).clamp(0, 1)
        corner = (x + eps * torch.sign(torch.randn(x.shape, generator=gen))).clamp(0, 1)
        for p in (pt, corner):
            z = small_model.logits(p)
            m = z.gather(1, y[:, None]) - z
            actual = torch.stack([torch.cat([m[i, :y[i]], m[i, y[i] + 1:]]) for i in range(4)])
            assert bool((actual >= lower - 1e-4).all())


def test_crown_tighter_than_ibp(small_model: Classifier, mnist_test) -> None:
    x, y = mnist_test.x[:20], mnist_test.y[:20]
    ibp = verify(small_model, x, y, 0.01, "ibp")
    crown = verify(small_model, x, y, 0.01, "crown-ibp")
    assert bool((crown.margin >= ibp.margin - 1e-5).all())
    assert crown.verified_accuracy >= ibp.verified_accuracy
    assert crown.verified_accuracy > 0


def test_verified_never_above_pgd(ibp_mlp: Classifier, small_model: Classifier, mnist_test) -> None:
    x, y = mnist_test.x[:100], mnist_test.y[:100]
    for clf, eps in ((ibp_mlp, EPS), (small_model, 0.02)):
        adv = PGD(eps=eps, steps=40, seed=0)(clf, x, y)
        robust = adv.pred_adv.cpu() == y
        for method in ("ibp", "crown-ibp"):
            v = verify(clf, x, y, eps, method)
            assert v.verified_accuracy <= float(robust.float().mean())
            assert not bool((v.verified & ~robust).any()), "PGD broke a verified input"


def test_ibp_training_verifies_more(ibp_mlp: Classifier, mnist_train, mnist_test) -> None:
    x, y = mnist_test.x[:200], mnist_test.y[:200]
    v = verify(ibp_mlp, x, y, EPS, "ibp")
    assert v.clean_accuracy > 0.7
    assert v.verified_accuracy > 0.3
    assert ibp_mlp.meta["defense"]["name"] == "ibp"
    torch.manual_seed(0)
    plain = build_classifier("mlp", ibp_mlp.spec, 10, {"hidden": [64]}, device="cpu")
    fit(plain, mnist_train.take(2000), None, TrainConfig(epochs=3, batch_size=50, lr=3e-3, progress=False))
    assert plain.accuracy(x, y) > 0.7
    assert verify(plain, x, y, EPS, "ibp").verified_accuracy < v.verified_accuracy - 0.2


def test_unsupported_layer_named() -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    clf = Classifier(net, InputSpec((4,)), 2, device="cpu")
    with pytest.raises(ConfigError, match="Tanh"):
        verify(clf, torch.zeros(1, 4), torch.zeros(1, dtype=torch.long), 0.1)
    ok = Classifier(nn.Sequential(nn.Linear(4, 2)), InputSpec((4,)), 2, device="cpu")
    with pytest.raises(ConfigError, match="bound method"):
        verify(ok, torch.zeros(1, 4), torch.zeros(1, dtype=torch.long), 0.1, method="lp")
    with pytest.raises(ConfigError, match="eps"):
        verify(ok, torch.zeros(1, 4), torch.zeros(1, dtype=torch.long), -0.1)
    assert len(layers_of(ok)) == 1


def test_zero_eps_verifies_the_correct_inputs(small_model: Classifier, mnist_test) -> None:
    x, y = mnist_test.x[:20], mnist_test.y[:20]
    v = verify(small_model, x, y, 0.0, "crown")
    assert torch.equal(v.verified, v.correct)
