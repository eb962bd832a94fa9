"""Statistical detection of poisoned client updates, used as an aggregator.

Poisoned updates leave a trace in the robust statistics of the round's updates (the
forensic view of dirty-label poisoning in federated learning, Tolpegin et al., 2020). For each client update g_i this detector computes

    norm_i    = ||g_i||_2
    cos_i     = cos(g_i, mean of the other clients' updates)       (leave-one-out)
    moments_i = per-layer mean and standard deviation of g_i's entries

and turns every statistic into a robust z-score over the round's clients,
z = (x - median) / (1.4826 * MAD). The evidence per client is the largest of |z(norm)|,
the one-sided -z(cos) of the whole update and of each layer (pointing away from the
others) and the one-sided z of each layer's standard deviation (a wider spread than the
others). The per-layer means are computed and recorded but not flagged on: across honest
clients they are too heavy-tailed. A client is flagged when its evidence exceeds the
threshold (3.5, Iglewicz and Hoaglin's cut-off for the modified z-score). The remaining
updates are aggregated with the base rule (FedAvg); each round's flags and scores are
recorded, so precision/recall against the true attackers follow (`detection_metrics`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch

from bastion.core import ConfigError
from bastion.federated.aggregators import Aggregator, ClientUpdate, Tensors, _check, fedavg, median

MAD_SCALE = 1.4826  # MAD of a standard normal is 1 / 1.4826


def robust_z(x: torch.Tensor) -> torch.Tensor:
    """(x - median) / (1.4826 MAD) per column of x [n, k]; a zero MAD is floored at a tiny
    fraction of the column's scale so identical columns give z = 0, not NaN."""
    x = x.double()
    med = x.median(0).values
    mad = (x - med).abs().median(0).values
    floor = 1e-9 * (med.abs() + x.abs().mean(0)) + 1e-30
    return (x - med) / (MAD_SCALE * torch.maximum(mad, floor))


def _loo_cosine(mat: torch.Tensor) -> torch.Tensor:
    """cos(row_i, sum of the other rows) for mat [n, d]."""
    if mat.shape[0] < 2:
        return torch.ones(mat.shape[0], dtype=mat.dtype)
    total = mat.sum(0)
    sq = (mat * mat).sum(1)
    dots = mat @ total                                   # g_i . S
    num = dots - sq                                      # g_i . (S - g_i)
    other_sq = (total @ total - 2 * dots + sq).clamp_min(0.0)  # ||S - g_i||^2
    return num / (sq.sqrt() * other_sq.sqrt()).clamp_min(1e-30)


def update_statistics(updates: Sequence[ClientUpdate]) -> dict[str, torch.Tensor]:
    """norm [n], leave-one-out cosine [n], per-layer leave-one-out cosine [n, L] and
    per-layer moments: mean [n, L] and standard deviation [n, L] (float64 results)."""
    names = _check(updates)
    mat = torch.stack([torch.cat([u.delta[k].reshape(-1).float() for k in names]) for u in updates])
    sizes = [updates[0].delta[k].numel() for k in names]
    layers = list(torch.split(mat, sizes, dim=1))  # views, no copies
    n = mat.shape[0]
    return {"norm": mat.norm(dim=1).double(), "cosine": _loo_cosine(mat).double(),
            "layer_cosine": torch.stack([_loo_cosine(v) for v in layers], 1).double(),
            "layer_mean": torch.stack([v.mean(1) for v in layers], 1).double(),
            "layer_std": torch.stack([v.std(1) if v.shape[1] > 1 else torch.zeros(n) for v in layers],
                                     1).double()}


class StatisticalDetector:
    """Flag outlying updates by robust z-scores of their statistics, aggregate the rest.

    Args:
        threshold: z cut-off (default 3.5).
        statistics: which of 'norm', 'cosine', 'moments' to use.
        base: aggregator for the unflagged updates (default FedAvg).
        min_clients: with fewer updates than this nothing is flagged (MAD is meaningless).

    `records` holds per round: clients, flagged clients and each client's scores.
    """

    STATISTICS = ("norm", "cosine", "moments")

    def __init__(self, threshold: float = 3.5, statistics: Sequence[str] = STATISTICS,
                 base: Aggregator = fedavg, min_clients: int = 4) -> None:
        if not threshold > 0:
            raise ConfigError(f"detector threshold must be positive, got {threshold}")
        bad = [s for s in statistics if s not in self.STATISTICS]
        if bad or not statistics:
            raise ConfigError(f"unknown detector statistics {bad}; valid: {list(self.STATISTICS)}")
        self.threshold, self.statistics, self.base = threshold, tuple(statistics), base
        self.min_clients = min_clients
        self.records: list[dict[str, Any]] = []

    def scores(self, updates: Sequence[ClientUpdate]) -> dict[str, torch.Tensor]:
        """Evidence per statistic group (higher = more suspicious), one value per client."""
        st = update_statistics(updates)
        out = {}
        if "norm" in self.statistics:
            out["norm"] = robust_z(st["norm"][:, None])[:, 0].abs()
        if "cosine" in self.statistics:
            out["cosine"] = torch.maximum(-robust_z(st["cosine"][:, None])[:, 0],
                                          (-robust_z(st["layer_cosine"])).max(1).values)
        if "moments" in self.statistics:
            out["moments"] = robust_z(st["layer_std"]).max(1).values
        return out

    def flag(self, updates: Sequence[ClientUpdate]) -> list[bool]:
        if len(updates) < self.min_clients:
            flags = [False] * len(updates)
            sc: dict[str, torch.Tensor] = {}
        else:
            sc = self.scores(updates)
            worst = torch.stack(list(sc.values())).max(0).values
            flags = [bool(v > self.threshold) for v in worst]
        self.records.append({
            "round": updates[0].round, "clients": [u.client for u in updates],
            "flagged": [u.client for u, f in zip(updates, flags, strict=True) if f],
            "scores": {k: [round(float(x), 4) for x in v] for k, v in sc.items()}})
        return flags

    def __call__(self, updates: Sequence[ClientUpdate]) -> Tensors:
        flags = self.flag(updates)
        kept = [u for u, f in zip(updates, flags, strict=True) if not f]
        return self.base(kept) if kept else median(updates)

    def flagged_pairs(self) -> set[tuple[int, int]]:
        return {(r["round"], c) for r in self.records for c in r["flagged"]}

    def seen_pairs(self) -> set[tuple[int, int]]:
        return {(r["round"], c) for r in self.records for c in r["clients"]}


def detection_metrics(flagged: Iterable[Any], truth: Iterable[Any], universe: Iterable[Any] | None = None
                      ) -> dict[str, float | int]:
    """Precision, recall, F1 (and the counts) of `flagged` against `truth`; items outside
    `universe` (when given) are ignored. Precision is 1.0 by convention with nothing
    flagged and recall 1.0 with nothing to find."""
    fl, tr = set(flagged), set(truth)
    if universe is not None:
        u = set(universe)
        fl, tr = fl & u, tr & u
    tp = len(fl & tr)
    precision = tp / len(fl) if fl else 1.0
    recall = tp / len(tr) if tr else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "true_positives": tp,
            "flagged": len(fl), "malicious": len(tr)}


def statistical_detector(threshold: float = 3.5, statistics: Sequence[str] = StatisticalDetector.STATISTICS
                         ) -> StatisticalDetector:
    return StatisticalDetector(threshold, statistics)


def _register() -> None:
    from bastion.federated.aggregators import AGGREGATORS, FACTORIES

    AGGREGATORS["detector"] = statistical_detector
    FACTORIES.add("detector")


_register()
