"""Gradient defenses: transforms on payloads that stop reconstruction, at a cost."""

from __future__ import annotations

import pytest
import torch

from bastion.attacks.privacy.leakage import (
    CPLConfig,
    cpl_attack,
    local_sgd_update,
    shared_gradient,
    uniform_init_,
)
from bastion.core import ConfigError, InputSpec
from bastion.defenses.gradient import ClipNoise, GaussianNoise, Prune, Quantize, parse_defense
from bastion.federated import FedConfig, run_fedavg
from bastion.models import build_classifier

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(mnist_test):
    clf = uniform_init_(build_classifier("lenet", InputSpec((1, 28, 28)), 10,
                                         {"activation": "sigmoid", "variant": "dlg"}, device="cpu"), seed=0)
    x, y = mnist_test.x[:1], mnist_test.y[:1]
    payload = shared_gradient(clf, x, y)
    clean = cpl_attack(clf, payload, CPLConfig(max_iter=10), reference=x, reference_labels=y)
    return clf, x, y, payload, clean


@pytest.mark.parametrize("spec", ["noise:0.1", "prune:0.9", "quant:2", "clip:1,0.01"])
def test_defense_at_strength_stops_cpl(setup, spec):
    clf, x, y, payload, clean = setup
    assert bool(clean.success.all())
    defended = parse_defense(spec)(payload, seed=0)
    assert defended.meta["defense"] == spec
    res = cpl_attack(clf, defended, CPLConfig(max_iter=10), reference=x, reference_labels=y)
    assert not bool(res.success.any())
    assert float(res.mse[0]) > 100 * float(clean.mse[0])


def test_weak_noise_still_leaks(setup):
    clf, x, y, payload, _ = setup
    res = cpl_attack(clf, GaussianNoise(1e-3)(payload), CPLConfig(max_iter=10), reference=x,
                     reference_labels=y)
    assert bool(res.success.all())


def test_transform_properties(setup):
    clf, x, y, payload, _ = setup
    g = payload.gradients
    pr = Prune(0.9).apply(g)
    for k, v in pr.items():
        assert (v == 0).float().mean() >= 0.9 - 1.0 / v.numel() - 1e-6
        kept = v != 0
        if kept.any():  # the largest entries survive
            assert float(v[kept].abs().min()) >= float(g[k][~kept].abs().max()) - 1e-7
    q = Quantize(2).apply(g)
    for v in q.values():
        assert torch.unique(v).numel() <= 3
    noisy = GaussianNoise(0.5).apply(g, torch.Generator().manual_seed(0))
    diff = torch.cat([(noisy[k] - g[k]).flatten() for k in g])
    assert abs(float(diff.std()) - 0.5) < 0.02
    clipped = ClipNoise(1.0, 0.0).apply(g)
    assert abs(float(torch.cat([v.flatten() for v in clipped.values()]).norm()) - 1.0) < 1e-4
    # defenses apply to weight updates through their implied gradient
    upd = local_sgd_update(clf, x, y, lr=1e-3)
    d = Prune(0.5)(upd)
    assert d.meta["from_weight_update"] and d.meta["defense"] == "prune:0.5"
    for k in d.weights:
        assert torch.equal(d.weights[k], upd.weights_before[k])


def test_clipnoise_aggregate_is_dp_sgd_step():
    pe = {"w": torch.tensor([[3.0, 4.0], [0.3, 0.4]])}  # norms 5 and 0.5
    out = ClipNoise(1.0, 0.0).aggregate(pe)
    assert torch.allclose(out["w"], torch.tensor([(0.6 + 0.3) / 2, (0.8 + 0.4) / 2]))


def test_defense_costs_accuracy_in_federated_training(mnist_train, mnist_test):
    cfg = FedConfig(num_clients=5, clients_per_round=5, rounds=4, local_lr=0.1, local_batch_size=16)
    def run(transform):
        torch.manual_seed(0)
        clf = build_classifier("mlp", InputSpec((1, 28, 28)), 10, {"hidden": [64]}, device="cpu")
        return run_fedavg(clf, mnist_train.take(1000), mnist_test, cfg,
                          local_transform=transform).test_accuracy
    base = run(None)
    assert base > 0.6
    assert run(GaussianNoise(1.0)) < base - 0.2


def test_parse_defense_errors():
    assert parse_defense("quant:8") == Quantize(8)
    assert parse_defense("clip:1,0.01") == ClipNoise(1.0, 0.01)
    for bad in ("blur:1", "noise", "noise:a", "clip:1", "quant:2.5", "prune:1.5", "noise:-1"):
        with pytest.raises(ConfigError):
            parse_defense(bad)
