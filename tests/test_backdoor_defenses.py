"""Backdoor defenses on a small backdoored model: Neural Cleanse flags the target and its
unlearning lowers the attack success, activation clustering and spectral signatures find
the poisoned training examples, STRIP flags triggered inputs, pruning and fine-pruning."""

from __future__ import annotations

import copy

import pytest
import torch

from bastion.attacks.poisoning import Trigger
from bastion.core import ConfigError
from bastion.defenses.backdoor import (
    ActivationClusteringConfig,
    FinePruningConfig,
    NeuralCleanseConfig,
    Strip,
    UnlearnConfig,
    activation_clustering,
    fine_prune,
    neural_cleanse,
    persistence,
    prune_neurons,
    spectral_signatures,
    unlearn,
)
from bastion.metrics.poisoning import anomaly_index, attack_success_rate, detection_scores
from poisoning_helpers import TARGET, backdoored_model, poisoned_train

NC = NeuralCleanseConfig(epochs=8)


@pytest.fixture(scope="module")
def model():
    return backdoored_model()


@pytest.fixture(scope="module")
def poison():
    return poisoned_train()


@pytest.fixture(scope="module")
def cleanse(model, mnist_test):
    return neural_cleanse(model, mnist_test.x[:200], NC, progress=False)


def test_anomaly_index_is_the_mad_score() -> None:
    v = torch.tensor([10.0, 11.0, 9.0, 10.0, 2.0])
    med, mad = 10.0, 1.4826 * 1.0
    assert anomaly_index(v).tolist() == pytest.approx([0, 1 / mad, 1 / mad, 0, 8 / mad], rel=1e-5)
    assert med == 10.0


@pytest.mark.slow  # Neural Cleanse / fine-tuning: ~25 s of CPU together
def test_neural_cleanse_finds_the_target(cleanse) -> None:
    # the target's reversed trigger is by far the smallest and works; on this short run
    # the other classes' norms are too spread for the MAD index to pass 2 (see docs)
    assert cleanse.smallest == TARGET, cleanse.summary()
    i = cleanse.classes.index(TARGET)
    assert cleanse.summary()["smallest_to_median"] < 0.35
    assert float(cleanse.success[i]) >= 0.9
    assert cleanse.suspected in (None, TARGET)


@pytest.mark.slow  # Neural Cleanse / fine-tuning: ~25 s of CPU together
def test_unlearning_lowers_attack_success(model, cleanse, mnist_train, mnist_test) -> None:
    before = attack_success_rate(model, mnist_test.x, mnist_test.y, Trigger(), TARGET)
    fixed = copy.deepcopy(model)
    mask, pattern = cleanse.trigger(TARGET)
    unlearn(fixed, mnist_train.subset(torch.arange(2000, 3000)), mask, pattern, UnlearnConfig())
    after = attack_success_rate(fixed, mnist_test.x, mnist_test.y, Trigger(), TARGET)
    assert after < 0.5 * before, (before, after)
    assert fixed.accuracy(mnist_test.x, mnist_test.y) >= model.accuracy(mnist_test.x, mnist_test.y) - 0.1


@pytest.mark.slow  # Neural Cleanse / fine-tuning: ~25 s of CPU together
def test_neuron_pruning_disables_the_reversed_trigger(model, cleanse, mnist_test) -> None:
    pruned = copy.deepcopy(model)
    mask, pattern = cleanse.trigger(TARGET)
    info = prune_neurons(pruned, mnist_test.x[:200], mask, pattern, TARGET, max_fraction=0.5)
    assert info["pruned"] > 0 and info["reversed_trigger_success"] < float(cleanse.success[TARGET])
    w = [m for m in pruned.module.modules() if isinstance(m, torch.nn.Linear)][-1].weight
    assert int((w.abs().sum(0) == 0).sum()) >= info["pruned"]
    assert attack_success_rate(pruned, mnist_test.x, mnist_test.y, Trigger(), TARGET) < \
        attack_success_rate(model, mnist_test.x, mnist_test.y, Trigger(), TARGET)


def _in_target(flagged, poison):
    tgt = [i for i in flagged if int(poison.data.y[i]) == TARGET]
    return detection_scores(tgt, poison.record.index, len(poison.data))


def test_spectral_signatures_find_the_poisons(model, poison) -> None:
    share = poison.record.n_poisoned / int((poison.data.y == TARGET).sum())     # 1/3 of the target class
    out = spectral_signatures(model, poison.data.x, poison.data.y, eps=share)
    s = _in_target(out["flagged_index"], poison)
    assert s["recall"] >= 0.5 and s["precision"] > share, s
    assert sum(p["removed"] for p in out["per_class"]) == len(out["flagged_index"])


def test_spectral_rounds_spend_the_same_budget(model, poison) -> None:
    share = poison.record.n_poisoned / int((poison.data.y == TARGET).sum())
    one = spectral_signatures(model, poison.data.x, poison.data.y, eps=share)
    many = spectral_signatures(model, poison.data.x, poison.data.y, eps=share, rounds=5)
    assert [p["removed"] for p in one["per_class"]] == [p["removed"] for p in many["per_class"]]
    assert len(set(many["flagged_index"])) == len(many["flagged_index"])
    assert _in_target(many["flagged_index"], poison)["recall"] >= 0.5
    assert many["flagged_index"] != one["flagged_index"]     # the later rounds re-centre and re-score


def test_activation_clustering_by_size_finds_the_poisons(model, poison) -> None:
    # Chen et al.'s relative-size rule: the smaller cluster of a flagged class
    cfg = ActivationClusteringConfig(reducer="pca", decide="size", size_threshold=0.35)
    out = activation_clustering(model, poison.data.x, poison.data.y, cfg)
    assert TARGET in out["flagged_classes"]
    s = _in_target(out["flagged_index"], poison)
    assert s["recall"] >= 0.5 and s["precision"] >= 0.6, (s, out["per_class"][TARGET])


def test_activation_clustering_by_persistence_flags_only_the_target(model, poison) -> None:
    out = activation_clustering(model, poison.data.x, poison.data.y, ActivationClusteringConfig())
    assert out["flagged_classes"] == [TARGET], out["per_class"]
    s = detection_scores(out["flagged_index"], poison.record.index, len(poison.data))
    # on this small model the 2-means split leaves some poisons with the clean examples
    assert s["recall"] >= 0.5 and s["precision"] >= 0.9, (s, out["per_class"][TARGET])
    row = out["per_class"][TARGET]
    assert max(row["persistence"]) > 0.9 and row["failure_ratio"] <= 0.25


def test_persistence_is_high_for_triggered_inputs(model, mnist_test) -> None:
    # a triggered input keeps the target label when blended with other images; a clean one does not
    x, y = mnist_test.x[:300], mnist_test.y[:300]
    keep = y != TARGET
    xt = torch.cat([Trigger().apply(x[keep][:100]), x[keep][:100]])
    yt = torch.cat([torch.full((100,), TARGET), y[keep][:100]])
    p = persistence(model, xt, yt, n_overlays=8)
    assert float(p[:100].mean()) > float(p[100:].mean()) + 0.3, (p[:100].mean(), p[100:].mean())


def test_activation_clustering_picks_the_poisoned_half(model, poison) -> None:
    # drop clean target-class examples until the poisons are half of the label: the smaller
    # cluster is then no guide, persistence still picks the poisoned one
    y = poison.data.y
    pois = torch.zeros(len(y), dtype=torch.bool)
    pois[torch.as_tensor(poison.record.index)] = True
    clean_t = torch.nonzero((y == TARGET) & ~pois).flatten()
    drop = clean_t[int(pois.sum()):]
    keep = torch.ones(len(y), dtype=torch.bool)
    keep[drop] = False
    x2, y2, p2 = poison.data.x[keep], y[keep], pois[keep]
    assert int(p2.sum()) * 2 == int((y2 == TARGET).sum())
    out = activation_clustering(model, x2, y2, ActivationClusteringConfig())
    s = detection_scores(out["flagged_index"], torch.nonzero(p2).flatten().tolist(), len(y2))
    assert TARGET in out["flagged_classes"] and s["recall"] >= 0.5 and s["precision"] >= 0.9, (s, out["per_class"])


def test_strip_flags_triggered_inputs(model, mnist_test) -> None:
    strip = Strip(model, mnist_test.x[600:], n_overlays=16, frr=0.05).fit(mnist_test.x[:200])
    held = mnist_test.x[200:500][mnist_test.y[200:500] != TARGET]
    flagged = strip.flag(Trigger().apply(held)).float().mean()
    false = strip.flag(held).float().mean()
    assert float(flagged) >= 0.8 and float(false) <= 0.15, (flagged, false)


@pytest.mark.slow  # Neural Cleanse / fine-tuning: ~25 s of CPU together
def test_fine_pruning_lowers_attack_success(model, mnist_train, mnist_test) -> None:
    fp = copy.deepcopy(model)
    info = fine_prune(fp, mnist_train.subset(torch.arange(3000, 3600)), mnist_test.subset(torch.arange(500, 800)),
                      FinePruningConfig(max_accuracy_drop=0.1, epochs=1))
    assert info["pruned"] > 0
    assert attack_success_rate(fp, mnist_test.x, mnist_test.y, Trigger(), TARGET) < \
        attack_success_rate(model, mnist_test.x, mnist_test.y, Trigger(), TARGET)


def test_bad_settings_are_refused(model, mnist_test) -> None:
    with pytest.raises(ConfigError, match="success_threshold"):
        neural_cleanse(model, mnist_test.x[:10], NeuralCleanseConfig(success_threshold=1.5))
    with pytest.raises(ConfigError, match="reducer"):
        activation_clustering(model, mnist_test.x[:50], mnist_test.y[:50], ActivationClusteringConfig(reducer="tsne"))
    with pytest.raises(ConfigError, match="eps"):
        spectral_signatures(model, mnist_test.x[:50], mnist_test.y[:50], eps=2.0)
    with pytest.raises(ConfigError, match="rounds"):
        spectral_signatures(model, mnist_test.x[:50], mnist_test.y[:50], rounds=0)
    with pytest.raises(ConfigError, match="decide"):
        activation_clustering(model, mnist_test.x[:50], mnist_test.y[:50], ActivationClusteringConfig(decide="vote"))
    with pytest.raises(ConfigError, match="failure_ratio"):
        ActivationClusteringConfig(failure_ratio=1.5).validate()
    with pytest.raises(ConfigError, match="schedule"):
        UnlearnConfig(schedule="step").validate()
