"""Activation clustering (Chen et al. 2018): poisons that carry a trigger are classified
as the target for a different reason than the target's clean examples, so within the
target class the penultimate activations split into two groups. For each (possibly
poisoned) training label: reduce the activations to 10 dimensions (ICA, as the paper,
or PCA), run 2-means, and score the split.

Two ways to decide which classes are poisoned and which of their two clusters holds the
poisons (`decide`):

- 'size' (Chen et al.'s relative size and silhouette analysis): a class whose silhouette
  reaches the threshold (or whose smaller cluster is at most `size_threshold` of it) is
  flagged and its *smaller* cluster is reported. This assumes the poisons are a minority
  of their label; when they are half of it, either cluster may be the smaller one.
- 'persistence' (default): each training input is superimposed on `n_overlays` training
  images of *other* labels (the input plus the overlay, clipped to the bounds: the
  perturbation of STRIP, Gao et al. 2019), and its persistence is the share of the
  blends still classified as its label. An input classified as its label because of a
  trigger keeps that label whatever it is blended with; inputs recognised by their
  content lose it far more often. For each class the cluster with the higher
  persistence is the candidate, and the class is flagged when the candidate's failure
  rate (1 - persistence) is at most `failure_ratio` (0.25) times the other cluster's. No
  assumption on the poisons' share of the class is needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from bastion.attacks.poisoning.features import penultimate_batched
from bastion.core import Classifier, ConfigError, check_number, check_seed

REDUCERS = ("ica", "pca")
DECISIONS = ("persistence", "size")


@dataclass(frozen=True)
class ActivationClusteringConfig:
    """dims: components kept (10 in the paper); reducer: 'ica' or 'pca';
    decide: 'persistence' (default) or 'size' (see the module docstring);
    silhouette_threshold: with decide='size', flag a class whose 2-means silhouette
    reaches this; size_threshold: with decide='size', also flag a class whose smaller
    cluster holds at most this share (None = silhouette only; Chen et al. suggest 0.35
    for small poison shares); n_overlays: superimposed copies per input for
    persistence (8); failure_ratio: with decide='persistence', flag a class whose
    candidate cluster fails under superimposition at most this times as often as the
    other cluster (0.25); min_cluster: a candidate cluster smaller than this is never
    flagged (its persistence rests on too few inputs)."""

    dims: int = 10
    reducer: str = "ica"
    decide: str = "persistence"
    silhouette_threshold: float = 0.3
    size_threshold: float | None = None
    n_overlays: int = 8
    failure_ratio: float = 0.25
    min_cluster: int = 5
    min_class_size: int = 20
    seed: int = 0

    def validate(self) -> None:
        check_number(self.dims, "dims", low=1, high=10_000, integer=True)
        if self.reducer not in REDUCERS:
            raise ConfigError(f"unknown reducer {self.reducer!r}; valid: {', '.join(REDUCERS)}")
        if self.decide not in DECISIONS:
            raise ConfigError(f"unknown decide {self.decide!r}; valid: {', '.join(DECISIONS)}")
        check_number(self.silhouette_threshold, "silhouette_threshold", low=-1.0, high=1.0)
        if self.size_threshold is not None:
            check_number(self.size_threshold, "size_threshold", low=0.0, high=0.5)
        check_number(self.n_overlays, "n_overlays", low=1, high=10_000, integer=True)
        check_number(self.failure_ratio, "failure_ratio", low=0.0, high=1.0)
        check_number(self.min_cluster, "min_cluster", low=1, high=10**9, integer=True)
        check_number(self.min_class_size, "min_class_size", low=2, high=10**9, integer=True)
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


def persistence(clf: Classifier, x: torch.Tensor, y: torch.Tensor, n_overlays: int = 8, seed: int = 0,
                batch_size: int = 256) -> torch.Tensor:
    """Share of `n_overlays` superimposed copies of each input (x_i + x_j clipped to the
    bounds, x_j drawn from the inputs of other labels) that the model still classifies as
    y_i. Returns a [N] float tensor (NaN where no input of another label exists)."""
    check_number(n_overlays, "n_overlays", low=1, high=10_000, integer=True)
    gen = torch.Generator().manual_seed(seed)
    lo, hi = clf.spec.bounds
    yy = y.cpu()
    out = torch.full((x.shape[0],), float("nan"))
    for k in torch.unique(yy).tolist():
        idx = torch.nonzero(yy == k).flatten()
        others = torch.nonzero(yy != k).flatten()
        if others.numel() == 0:
            continue
        for i in range(0, idx.numel(), batch_size):
            sel = idx[i:i + batch_size]
            pick = others[torch.randint(0, others.numel(), (sel.numel(), n_overlays), generator=gen)]
            mixed = (x[sel][:, None] + x[pick]).clamp(lo, hi).flatten(0, 1)
            pred = clf.predict(mixed, batch_size=4096).cpu().reshape(sel.numel(), n_overlays)
            out[sel] = (pred == k).float().mean(1)
    return out


def activation_clustering(clf: Classifier, x: torch.Tensor, y: torch.Tensor,
                          cfg: ActivationClusteringConfig = ActivationClusteringConfig()) -> dict[str, Any]:
    """Analyse training inputs x with (possibly poisoned) labels y. Returns per-class
    relative sizes, silhouettes (and, with decide='persistence', each cluster's
    persistence), the flagged classes and the flagged indices into x."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    cfg.validate()
    if x.shape[0] != y.shape[0]:
        raise ConfigError(f"x has {x.shape[0]} inputs but y has {y.shape[0]} labels")
    feats = penultimate_batched(clf, x).double().numpy()
    yy = y.cpu().numpy()
    pers = persistence(clf, x, y, cfg.n_overlays, cfg.seed).numpy() if cfg.decide == "persistence" else None
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
        row: dict[str, Any] = {"class": k, "n": int(idx.size), "relative_size": rel, "silhouette": sil}
        if pers is None:
            pick = small
            flag = sil >= cfg.silhouette_threshold or (cfg.size_threshold is not None and rel <= cfg.size_threshold)
        else:
            p = [float(np.nanmean(pers[idx[lab == j]])) if sizes[j] else float("nan") for j in (0, 1)]
            pick = int(np.nanargmax(p)) if sizes.min() > 0 else small
            fail_pick, fail_other = 1 - p[pick], 1 - p[1 - pick]
            ratio = fail_pick / fail_other if fail_other > 0 else float("inf")
            flag = bool(sizes[pick] >= cfg.min_cluster and ratio <= cfg.failure_ratio)
            row.update({"persistence": p, "candidate_share": float(sizes[pick] / idx.size),
                        "failure_ratio": ratio})
        if flag:
            flagged_cls.append(k)
            flagged_idx.extend(idx[lab == pick].tolist())
        row["flagged"] = bool(flag)
        per_class.append(row)
    return {"method": "activation-clustering", "per_class": per_class, "flagged_classes": flagged_cls,
            "flagged_index": sorted(flagged_idx), "config": {"dims": cfg.dims, "reducer": cfg.reducer,
                                                             "decide": cfg.decide,
                                                             "silhouette_threshold": cfg.silhouette_threshold,
                                                             "size_threshold": cfg.size_threshold,
                                                             "n_overlays": cfg.n_overlays,
                                                             "failure_ratio": cfg.failure_ratio}}
