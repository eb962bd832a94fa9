"""Activation clustering (Chen et al. 2018): poisons that carry a trigger are classified
as the target for a different reason than the target's clean examples, so within the
target class the penultimate activations split into two groups. For each (possibly
poisoned) training label: reduce the activations to 10 dimensions (ICA, as the paper,
or PCA), run 2-means, and score the split by the smaller cluster's relative size and the
silhouette score. A class whose silhouette reaches the threshold is flagged and its
smaller cluster is reported as poisoned; a clean class splits arbitrarily (low
silhouette)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from bastion.attacks.poisoning.features import penultimate_batched
from bastion.core import Classifier, ConfigError, check_number, check_seed

REDUCERS = ("ica", "pca")


@dataclass(frozen=True)
class ActivationClusteringConfig:
    """dims: components kept (10 in the paper); reducer: 'ica' or 'pca';
    silhouette_threshold: flag a class whose 2-means silhouette reaches this;
    size_threshold: also flag a class whose smaller cluster holds at most this share
    (None = silhouette only; Chen et al. suggest 0.35 for small poison shares)."""

    dims: int = 10
    reducer: str = "ica"
    silhouette_threshold: float = 0.3
    size_threshold: float | None = None
    min_class_size: int = 20
    seed: int = 0

    def validate(self) -> None:
        check_number(self.dims, "dims", low=1, high=10_000, integer=True)
        if self.reducer not in REDUCERS:
            raise ConfigError(f"unknown reducer {self.reducer!r}; valid: {', '.join(REDUCERS)}")
        check_number(self.silhouette_threshold, "silhouette_threshold", low=-1.0, high=1.0)
        if self.size_threshold is not None:
            check_number(self.size_threshold, "size_threshold", low=0.0, high=0.5)
        check_seed(self.seed)


def _reduce(f: np.ndarray, cfg: ActivationClusteringConfig) -> np.ndarray:
    from sklearn.decomposition import PCA, FastICA

    dims = min(cfg.dims, f.shape[1], f.shape[0] - 1)
    if cfg.reducer == "pca":
        return PCA(n_components=dims, random_state=cfg.seed).fit_transform(f)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # FastICA's convergence warnings on near-degenerate classes
        return FastICA(n_components=dims, random_state=cfg.seed, whiten="unit-variance",
                       max_iter=400).fit_transform(f)


def activation_clustering(clf: Classifier, x: torch.Tensor, y: torch.Tensor,
                          cfg: ActivationClusteringConfig = ActivationClusteringConfig()) -> dict[str, Any]:
    """Analyse training inputs x with (possibly poisoned) labels y. Returns per-class
    relative sizes, silhouettes, the flagged classes and the flagged indices into x."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    cfg.validate()
    feats = penultimate_batched(clf, x).double().numpy()
    yy = y.cpu().numpy()
    per_class, flagged_idx, flagged_cls = [], [], []
    for k in range(clf.num_classes):
        idx = np.flatnonzero(yy == k)
        if idx.size < cfg.min_class_size:
            per_class.append({"class": k, "n": int(idx.size), "relative_size": None, "silhouette": None,
                              "flagged": False})
            continue
        z = _reduce(feats[idx], cfg)
        lab = KMeans(2, n_init=10, random_state=cfg.seed).fit_predict(z)
        sizes = np.bincount(lab, minlength=2)
        small = int(np.argmin(sizes))
        rel = float(sizes[small] / idx.size)
        sil = float(silhouette_score(z, lab)) if sizes.min() > 0 else 0.0
        flag = sil >= cfg.silhouette_threshold or (cfg.size_threshold is not None and rel <= cfg.size_threshold)
        if flag:
            flagged_cls.append(k)
            flagged_idx.extend(idx[lab == small].tolist())
        per_class.append({"class": k, "n": int(idx.size), "relative_size": rel, "silhouette": sil, "flagged": flag})
    return {"method": "activation-clustering", "per_class": per_class, "flagged_classes": flagged_cls,
            "flagged_index": sorted(flagged_idx), "config": {"dims": cfg.dims, "reducer": cfg.reducer,
                                                             "silhouette_threshold": cfg.silhouette_threshold,
                                                             "size_threshold": cfg.size_threshold}}
