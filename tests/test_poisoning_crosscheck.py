"""Cross-checks against ART (optional: skipped when ART is not installed): its BadNets
pattern poisoner places the same trigger as Bastion's, and its activation defence and
spectral signature defence flag the same poisoned training examples as Bastion's
activation clustering and spectral signatures on the same model and data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bastion.attacks.poisoning import Trigger
from bastion.attacks.poisoning.features import penultimate_batched
from bastion.defenses.backdoor import (
    ActivationClusteringConfig,
    activation_clustering,
    spectral_signatures,
)
from bastion.metrics.poisoning import detection_scores
from poisoning_helpers import TARGET, backdoored_model, poisoned_train

pytestmark = pytest.mark.crosscheck
art = pytest.importorskip("art")


def _penultimate_net(clf):
    """The model up to its penultimate layer as a flat nn.Sequential (ART reads the last
    layer's activations of a Sequential's top-level modules)."""
    body = [clf.normalize, *clf.module.features, torch.nn.Flatten(), *list(clf.module.head)[:-1]]
    return torch.nn.Sequential(*body).eval()


@pytest.fixture(scope="module")
def setup():
    from art.estimators.classification import PyTorchClassifier

    clf, pz = backdoored_model(), poisoned_train()
    net = _penultimate_net(clf)
    feats = penultimate_batched(clf, pz.data.x[:64])
    with torch.no_grad():
        assert torch.allclose(net(pz.data.x[:64]), feats, atol=1e-5)
    est = PyTorchClassifier(net, loss=torch.nn.CrossEntropyLoss(), input_shape=(1, 28, 28), nb_classes=10,
                            clip_values=(0.0, 1.0), device_type="cpu")
    x, y = pz.data.x.numpy(), np.eye(10)[pz.data.y.numpy()]
    return clf, pz, est, x, y


def test_art_pattern_trigger_matches_ours() -> None:
    from art.attacks.poisoning.perturbations import add_pattern_bd

    x = torch.rand(4, 1, 28, 28) * 0.5
    theirs = add_pattern_bd(x[:, 0].numpy().copy(), distance=2, pixel_value=1)
    ours = Trigger(kind="pattern", size=3, position="bottom-right", margin=1).apply(x)[:, 0].numpy()
    changed_t, changed_o = theirs != x[:, 0].numpy(), ours != x[:, 0].numpy()
    # ART's pattern: four pixels (a diagonal and corners) in the bottom-right 3 x 3 block
    assert changed_t.any(axis=0).sum() == 4
    assert (changed_t.any(axis=0) & ~changed_o.any(axis=0)).sum() <= 1
    assert np.allclose(theirs[changed_t & changed_o], 1.0) and np.allclose(ours[changed_t & changed_o], 1.0)


def test_spectral_signatures_agree_with_art(setup) -> None:
    """ART scores the projection of the *uncentred* representations on the top singular
    vector of the centred ones; Tran et al. (and Bastion) project the centred ones. With
    ART's scoring on Bastion's features the flags coincide; with the paper's, Bastion
    finds at least as many poisons."""
    from art.defences.detector.poison import SpectralSignatureDefense

    clf, pz, est, x, y = setup
    share = pz.record.n_poisoned / int((pz.data.y == TARGET).sum())
    _, clean = SpectralSignatureDefense(est, x, y, batch_size=256, eps_multiplier=1.5,
                                        expected_pp_poison=share).detect_poison()
    theirs = set(np.flatnonzero(np.array(clean) == 0).tolist())
    feats = penultimate_batched(clf, pz.data.x).double()
    tgt = torch.nonzero(pz.data.y == TARGET).flatten()
    r = feats[tgt]
    _, _, vh = torch.linalg.svd(r - r.mean(0), full_matrices=False)
    art_style = (r @ vh[0]).abs().numpy()
    cut = np.quantile(art_style, 1 - 1.5 * share)
    mine_art_style = {int(tgt[i]) for i in np.flatnonzero(art_style >= cut)}
    tgt_set = set(tgt.tolist())
    assert len(mine_art_style ^ (theirs & tgt_set)) <= 0.05 * len(tgt_set)
    ours = set(spectral_signatures(clf, pz.data.x, pz.data.y, eps=share)["flagged_index"])
    r_t = detection_scores(sorted(theirs & tgt_set), pz.record.index, len(pz.data))["recall"]
    r_o = detection_scores(sorted(ours & tgt_set), pz.record.index, len(pz.data))["recall"]
    assert r_o >= r_t, (r_o, r_t)


def test_activation_clustering_agrees_with_art(setup) -> None:
    from art.defences.detector.poison import ActivationDefence

    clf, pz, est, x, y = setup
    _, clean = ActivationDefence(est, x, y).detect_poison(nb_clusters=2, nb_dims=10, reduce="PCA")
    theirs = set(np.flatnonzero(np.array(clean) == 0).tolist())
    ours = activation_clustering(clf, pz.data.x, pz.data.y,
                                 ActivationClusteringConfig(reducer="pca", decide="size", silhouette_threshold=1.0,
                                                            size_threshold=0.5))
    mine = set(ours["flagged_index"])
    tgt = {i for i in range(len(pz.data)) if int(pz.data.y[i]) == TARGET}
    inter = len(theirs & mine & tgt) / max(1, len((theirs | mine) & tgt))
    assert inter >= 0.8, inter
