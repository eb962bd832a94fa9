"""OOD metrics against scikit-learn, the three OOD detectors and XEnsemble's flag on a
small digits model, and the offline OOD sets."""

from __future__ import annotations

import pytest
import torch
from sklearn.metrics import roc_auc_score

from bastion.core import Classifier, ConfigError, InputSpec
from bastion.data import load
from bastion.defenses.ood import OOD_SETS, XEnsembleFlag, build_ood_detector, ood_set
from bastion.defenses.preprocess import BitDepth, GaussianBlur
from bastion.defenses.xensemble import XEnsemble
from bastion.metrics.xensemble import auroc, detection_error, fpr_at_tpr, ood_metrics
from bastion.models.checkpoint import build_classifier
from bastion.training.fit import TrainConfig, fit


def test_ood_metrics_by_hand_and_against_sklearn() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(300, generator=g), torch.randn(200, generator=g) + 1.0
    b[:20] = a[:20]  # ties
    ref = roc_auc_score([0] * 300 + [1] * 200, torch.cat([a, b]).numpy())
    assert auroc(a, b) == pytest.approx(ref, abs=1e-12)
    s_in, s_out = torch.tensor([0.0, 1.0, 2.0, 3.0]), torch.tensor([2.5, 3.5, 4.0, 5.0])
    assert fpr_at_tpr(s_in, s_out) == pytest.approx(0.25)  # threshold 2.5 catches all OOD, flags 3.0
    assert detection_error(s_in, s_out) == pytest.approx(0.125)
    m = ood_metrics(s_in, s_out, torch.tensor([0, 0, 0, 1]), torch.tensor([1, 1, 1, 0]))
    assert m["flag_derror"] == pytest.approx(0.5 * 0.25 + 0.5 * 0.25)


@pytest.fixture(scope="module")
def model() -> tuple[Classifier, Classifier]:
    train = load("digits", "train")
    out = []
    torch.manual_seed(0)
    for i, hidden in enumerate(([64], [48])):
        clf = build_classifier("mlp", InputSpec(train.input_shape), 10, {"hidden": hidden}, device="cpu")
        fit(clf, train, None, TrainConfig(epochs=6, lr=0.01, seed=i, progress=False))
        out.append(clf)
    return out[0], out[1]


def test_detectors_separate_noise_from_digits(model) -> None:  # type: ignore[no-untyped-def]
    clf, other = model
    train, test = load("digits", "train"), load("digits", "test")
    x_in = test.x[:200]
    x_out = ood_set("uniform", clf.spec, 200)
    results = {}
    for name, params in (("max-softmax", {}), ("odin", {}), ("mahalanobis", {})):
        det = build_ood_detector(name, clf, **params)
        if name == "mahalanobis":
            det.fit(train.x, train.y)  # type: ignore[attr-defined]
        results[name] = auroc(det.score(x_in), det.score(x_out))
        det.calibrate(train.x[-200:])
        assert float(det.flag(x_in).float().mean()) < 0.15
    assert all(v > 0.8 for v in results.values()), results
    assert results["mahalanobis"] > 0.95, results
    xe = XEnsemble(clf, [BitDepth(bits=3), GaussianBlur(sigma=0.5)], [[clf, other]])
    flag = XEnsembleFlag(xe)
    assert auroc(flag.score(x_in), flag.score(x_out)) > 0.7
    assert flag.flag(x_in).shape == (200,)
    with pytest.raises(ConfigError, match="unknown OOD detector"):
        build_ood_detector("energy", clf)
    with pytest.raises(ConfigError, match="call fit"):
        build_ood_detector("mahalanobis", clf).score(x_in)


def test_ood_sets_are_offline_and_shaped() -> None:
    spec = InputSpec((1, 28, 28))
    x_in = torch.rand(10, 1, 28, 28)
    for name in OOD_SETS:
        x = ood_set(name, spec, 10, x_in=x_in)
        assert x.shape == (10, 1, 28, 28) and float(x.min()) >= 0 and float(x.max()) <= 1, name
    assert torch.allclose(ood_set("inverted", spec, 10, x_in=x_in), 1 - x_in)
    with pytest.raises(ConfigError, match="unknown OOD set"):
        ood_set("nope", spec, 4)
