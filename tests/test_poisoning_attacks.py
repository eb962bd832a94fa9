"""Poisoning attacks: which examples change and how, the backdoor working on a trained
model, the .npz round trip, and the errors that name a constraint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bastion.attacks.poisoning import (
    Trigger,
    badnets,
    clean_label,
    feature_collision,
    flip_labels,
    retrain_last_layer,
)
from bastion.attacks.poisoning.features import penultimate
from bastion.attacks.poisoning.run import PoisonSettings, apply_poison, npz_bytes
from bastion.core import ConfigError
from bastion.data import load
from bastion.data.formats import load_npz
from bastion.metrics.poisoning import attack_success_rate
from poisoning_helpers import FRACTION, N_TRAIN, TARGET, backdoored_model, poisoned_train


@pytest.fixture(scope="module")
def small_train(mnist_train):
    return mnist_train.take(600)


def test_label_flip_source_target_only_relabels_source(small_train) -> None:
    res = flip_labels(small_train, 0.05, source=7, target=1, seed=3)
    idx = res.record.index
    assert idx.numel() == round(0.05 * len(small_train))
    assert bool((small_train.y[idx] == 7).all()) and bool((res.data.y[idx] == 1).all())
    keep = ~res.record.mask(len(small_train))
    assert torch.equal(res.data.y[keep], small_train.y[keep]) and torch.equal(res.data.x, small_train.x)
    again = flip_labels(small_train, 0.05, source=7, target=1, seed=3)
    assert torch.equal(again.record.index, idx)


def test_label_flip_random_always_changes_the_label(small_train) -> None:
    res = flip_labels(small_train, 0.2, mode="random", seed=0)
    assert bool((res.record.new_labels != res.record.original_labels).all())
    assert len(set(res.record.new_labels.tolist())) > 3


def test_badnets_stamps_the_trigger_and_relabels(small_train) -> None:
    trig = Trigger(kind="pattern", size=3, position="bottom-right")
    res = badnets(small_train, 0.1, target=2, trigger=trig, seed=0)
    idx = res.record.index
    assert idx.numel() == 60 and bool((small_train.y[idx] != 2).all()) and bool((res.data.y[idx] == 2).all())
    mask, _ = trig.mask_pattern((1, 28, 28))
    on = mask[0].bool()
    assert bool((res.data.x[idx][:, 0][:, on] == 1.0).all())                       # trigger pixels set
    assert torch.equal(res.data.x[idx][:, 0][:, ~on], small_train.x[idx][:, 0][:, ~on])  # nothing else
    assert int(on.sum()) == 5 and bool(on[24:27, 24:27].any())                      # a 3 x 3 checkerboard
    a2a = badnets(small_train, 0.1, mode="all-to-all", trigger=Trigger(kind="pixel"), seed=0)
    assert torch.equal(a2a.data.y[a2a.record.index], (small_train.y[a2a.record.index] + 1) % 10)
    assert int((a2a.data.x[a2a.record.index] != small_train.x[a2a.record.index]).flatten(1).sum(1).max()) <= 1


def test_badnets_plants_a_working_backdoor(mnist_test) -> None:
    clf = backdoored_model()
    asr = attack_success_rate(clf, mnist_test.x, mnist_test.y, Trigger(), TARGET)
    assert asr >= 0.9, asr
    assert clf.accuracy(mnist_test.x, mnist_test.y) >= 0.85
    # the trigger alone does not send a clean model's inputs to the target
    assert poisoned_train().record.n_poisoned == round(FRACTION * N_TRAIN)


def test_clean_label_keeps_labels_and_stays_in_budget(small_model, small_train) -> None:
    res = clean_label(small_train, small_model, 0.05, target=3, eps=0.1, steps=5, seed=0)
    idx = res.record.index
    assert bool((small_train.y[idx] == 3).all()) and torch.equal(res.data.y, small_train.y)
    mask, _ = Trigger().mask_pattern((1, 28, 28))
    off = ~mask[0].bool()
    delta = (res.data.x[idx] - small_train.x[idx])[:, 0][:, off]
    assert float(delta.abs().max()) <= 0.1 + 1e-6 and float(delta.abs().max()) > 0.05
    # the perturbation raises the surrogate's loss on the true labels
    base = small_model.probs(small_train.x[idx])[:, 3].mean()
    pert = small_model.probs(Trigger().apply(res.data.x[idx]) * 0 + res.data.x[idx])[:, 3].mean()
    assert float(pert) < float(base)


def test_feature_collision_moves_features_to_the_target(small_model, small_train, mnist_test) -> None:
    target = mnist_test.x[0]
    base = int((mnist_test.y[0] + 1) % 10)
    res = feature_collision(small_train, small_model, target, base_class=base, n_poisons=8, steps=60, lr=0.05,
                            opacity=0.2, seed=0)
    ex = res.record.extras
    assert ex["feature_distance_after"] < 0.6 * ex["feature_distance_before"]
    assert torch.equal(res.data.y, small_train.y)                  # clean labels
    idx = res.record.index
    assert bool((small_train.y[idx] == base).all())
    ft = penultimate(small_model, target[None])
    assert float((penultimate(small_model, res.data.x[idx]) - ft).norm(dim=1).mean()) == pytest.approx(
        ex["feature_distance_after"], rel=1e-3)


def test_feature_collision_flips_the_target_after_last_layer_retraining(small_model, small_train,
                                                                        mnist_test) -> None:
    """Shafahi et al.'s transfer-learning victim: the frozen extractor's last layer retrained
    on the poisoned set labels the target as the base class; retrained on the clean set, not."""
    hits = []
    for j in (0, 1):
        target, base = mnist_test.x[j], int((mnist_test.y[j] + 1) % 10)
        assert int(small_model.predict(target[None])[0]) == int(mnist_test.y[j])
        res = feature_collision(small_train, small_model, target, base_class=base, n_poisons=20,
                                steps=100, seed=j)
        assert res.record.extras["feature_distance_after"] < 0.1 * res.record.extras["feature_distance_before"]
        hits.append(int(retrain_last_layer(small_model, res.data).predict(target[None])[0]) == base)
        assert int(retrain_last_layer(small_model, small_train).predict(target[None])[0]) != base
    assert all(hits)


def test_feature_collision_survives_a_too_large_step(small_model, small_train, mnist_test) -> None:
    """The step decay: at 20x the default step the objective still falls instead of diverging."""
    res = feature_collision(small_train, small_model, mnist_test.x[0], base_class=1, n_poisons=4,
                            steps=60, lr=0.2, seed=0)
    assert res.record.extras["feature_distance_after"] < 0.2 * res.record.extras["feature_distance_before"]


def test_retrain_last_layer_changes_only_the_last_layer(small_model, small_train) -> None:
    out = retrain_last_layer(small_model, small_train.take(200), epochs=15, reinit=True)
    before, after = dict(small_model.named_parameters()), dict(out.named_parameters())
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and all(k.endswith(("weight", "bias")) for k in changed)
    assert len(changed) <= 2 and out.accuracy(small_train.x[:200], small_train.y[:200]) > 0.8
    with pytest.raises(ConfigError, match="epochs"):
        retrain_last_layer(small_model, small_train, epochs=0)


def test_npz_round_trip_keeps_poison_and_clean_test(tmp_path, small_train, mnist_test) -> None:
    res = apply_poison(small_train, PoisonSettings(attack="badnets", fraction=0.05, target=1))
    path = tmp_path / "p.npz"
    path.write_bytes(npz_bytes(res, mnist_test, {"attack": "badnets"}))
    tr, te = load_npz(path, "train"), load_npz(path, "test")
    assert torch.equal(tr.x, res.data.x) and torch.equal(tr.y, res.data.y)
    assert torch.equal(te.x, mnist_test.x) and torch.equal(te.y, mnist_test.y)
    with np.load(path, allow_pickle=False) as z:
        assert z["poisoned_index"].tolist() == res.record.index.tolist()
    assert torch.equal(load(str(path), "train").y, res.data.y)


@pytest.mark.parametrize("call,msg", [
    (lambda d: badnets(d, 1.5), r"\[0, 1\]"),
    (lambda d: badnets(d, -0.1), r"\[0, 1\]"),
    (lambda d: badnets(d, 0.1, target=10), r"\[0, 9\]"),
    (lambda d: flip_labels(d, 0.1, source=3, target=-1), r"\[0, 9\]"),
    (lambda d: badnets(d, 0.1, trigger=Trigger(kind="square", size=29)), "no larger than the image"),
    (lambda d: badnets(d, 0.1, trigger=Trigger(size=3, position=(26, 0))), "inside"),
    (lambda d: flip_labels(d, 0.9, source=3, target=1), "only"),
])
def test_bad_input_names_the_constraint(small_train, call, msg) -> None:
    with pytest.raises(ConfigError, match=msg):
        call(small_train)
