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


def output_layer(updates: Sequence[ClientUpdate]) -> str | None:
    """The name of the output layer's weight: the last two-dimensional parameter (the
    classifier's final linear layer, one row per class), or None without one."""
    names = [k for k in _check(updates) if updates[0].delta[k].dim() == 2]
    return names[-1] if names else None


def update_statistics(updates: Sequence[ClientUpdate]) -> dict[str, torch.Tensor]:
    """norm [n], leave-one-out cosine [n], per-layer leave-one-out cosine [n, L], per-layer
    moments: mean [n, L] and standard deviation [n, L], and the L2 norm of each class's
    row of the output layer's update [n, C] (empty [n, 0] without a 2-D output layer);
    float64 results."""
    names = _check(updates)
    mat = torch.stack([torch.cat([u.delta[k].reshape(-1).float() for k in names]) for u in updates])
    sizes = [updates[0].delta[k].numel() for k in names]
    layers = list(torch.split(mat, sizes, dim=1))  # views, no copies
    n = mat.shape[0]
    out_name = output_layer(updates)
    rows = (torch.stack([u.delta[out_name].float().norm(dim=1) for u in updates]) if out_name is not None
            else torch.zeros(n, 0))
    return {"norm": mat.norm(dim=1).double(), "cosine": _loo_cosine(mat).double(),
            "layer_cosine": torch.stack([_loo_cosine(v) for v in layers], 1).double(),
            "layer_mean": torch.stack([v.mean(1) for v in layers], 1).double(),
            "layer_std": torch.stack([v.std(1) if v.shape[1] > 1 else torch.zeros(n) for v in layers],
                                     1).double(),
            "output_rows": rows.double()}


def _log(x: torch.Tensor) -> torch.Tensor:
    """log of a positive statistic (norms, spreads): their spread across clients is
    multiplicative, so on the log scale one MAD describes the whole round."""
    return x.clamp_min(1e-30).log()


class StatisticalDetector:
    """Flag outlying updates by robust z-scores of their statistics, aggregate the rest.

    Args:
        threshold: the outlier cut-off on one round's z-scores (default 3.5, Iglewicz and
            Hoaglin's for the modified z-score).
        statistics: which of 'norm', 'cosine', 'moments', 'output' to use.
        base: aggregator for the unflagged updates (default FedAvg).
        min_clients: with fewer updates than this nothing is flagged (MAD is meaningless).
        evidence: accumulate the evidence of every client and statistic over the rounds
            the client takes part in (a CUSUM, Page 1954): S <- max(0, S + z - threshold),
            so only what lies beyond the outlier cut-off adds up; a client is flagged in a
            round when some statistic's S exceeds `evidence` (default 8) and the same
            statistic's z is beyond the threshold in this round. None flags on one round
            alone (largest z > threshold).

    `records` holds per round: clients, flagged clients, each client's scores per
    statistic group, its round evidence (largest z), accumulated evidence and the raw
    statistics.
    """

    STATISTICS = ("norm", "cosine", "moments", "output")

    def __init__(self, threshold: float = 3.5, statistics: Sequence[str] = STATISTICS,
                 base: Aggregator = fedavg, min_clients: int = 4, evidence: float | None = 8.0) -> None:
        if not threshold > 0:
            raise ConfigError(f"detector threshold must be positive, got {threshold}")
        bad = [s for s in statistics if s not in self.STATISTICS]
        if bad or not statistics:
            raise ConfigError(f"unknown detector statistics {bad}; valid: {list(self.STATISTICS)}")
        if evidence is not None and not evidence > 0:
            raise ConfigError(f"detector evidence threshold must be positive (or None), got {evidence}")
        self.threshold, self.statistics, self.base = threshold, tuple(statistics), base
        self.min_clients, self.evidence = min_clients, evidence
        self.records: list[dict[str, Any]] = []
        self.cusum: dict[int, torch.Tensor] = {}
        self._round = -1

    @staticmethod
    def column_scores(st: dict[str, torch.Tensor], statistics: Sequence[str] = STATISTICS
                      ) -> dict[str, torch.Tensor]:
        """One-sided robust z-scores per statistic group, [n, columns] each (higher = more
        suspicious), from `update_statistics`' output: |z| of the log norm, -z of the
        cosines (pointing away from the others), z of each layer's log spread and of
        each class's log output-row norm (larger than the others')."""
        out = {}
        if "norm" in statistics:
            out["norm"] = robust_z(_log(st["norm"])[:, None]).abs()
        if "cosine" in statistics:
            out["cosine"] = -robust_z(torch.cat([st["cosine"][:, None], st["layer_cosine"]], 1))
        if "moments" in statistics:
            out["moments"] = robust_z(_log(st["layer_std"]))
        if "output" in statistics and st["output_rows"].shape[1] > 0:
            out["output"] = robust_z(_log(st["output_rows"]))
        return out

    def scores(self, updates: Sequence[ClientUpdate]) -> dict[str, torch.Tensor]:
        """Evidence per statistic group (the largest of its z-scores), one value per client."""
        return {k: v.max(1).values for k, v in self.column_scores(update_statistics(updates),
                                                                    self.statistics).items()}

    def flag(self, updates: Sequence[ClientUpdate]) -> list[bool]:
        """Flags for one round's updates (True = suspected), recorded in `records`."""
        clients = [u.client for u in updates]
        st = update_statistics(updates) if len(updates) >= self.min_clients else {}
        return self.flag_statistics(updates[0].round, clients, st)

    def flag_statistics(self, rnd: int, clients: Sequence[int], st: dict[str, torch.Tensor]) -> list[bool]:
        """Flags from one round's precomputed `update_statistics` (empty: too few clients);
        replaying recorded statistics through a detector gives its flags offline."""
        if rnd <= self._round:  # a new run: forget the accumulated evidence
            self.cusum = {}
        self._round = rnd
        clients = list(clients)
        sc: dict[str, torch.Tensor] = {}
        flags = [False] * len(clients)
        round_ev = [0.0] * len(clients)
        acc_ev = [0.0] * len(clients)
        if st and len(clients) >= self.min_clients:
            cols = self.column_scores(st, self.statistics)
            sc = {k: v.max(1).values for k, v in cols.items()}
            z = torch.cat(list(cols.values()), 1)                      # [n, columns]
            round_ev = z.max(1).values.tolist()
            for i, c in enumerate(clients):
                if self.evidence is None:
                    flags[i] = round_ev[i] > self.threshold
                    continue
                prev = self.cusum.get(c)
                s = torch.clamp((prev if prev is not None and prev.shape == z[i].shape else 0.0)
                                + z[i] - self.threshold, min=0.0)
                self.cusum[c] = s
                live = z[i] > self.threshold
                acc_ev[i] = float(s.max())
                flags[i] = bool(((s > self.evidence) & live).any())
        self.records.append({
            "round": rnd, "clients": clients,
            "flagged": [c for c, f in zip(clients, flags, strict=True) if f],
            "scores": {k: [round(float(x), 4) for x in v] for k, v in sc.items()},
            "evidence": [round(float(e), 4) for e in round_ev],
            "accumulated": [round(e, 4) for e in acc_ev],
            "stats": {k: v.tolist() for k, v in st.items()}})
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


def statistical_detector(threshold: float = 3.5, statistics: Sequence[str] = StatisticalDetector.STATISTICS,
                         evidence: float | None = 8.0) -> StatisticalDetector:
    return StatisticalDetector(threshold, statistics, evidence=evidence)


def _register() -> None:
    from bastion.federated.aggregators import AGGREGATORS, FACTORIES

    AGGREGATORS["detector"] = statistical_detector
    FACTORIES.add("detector")


_register()
