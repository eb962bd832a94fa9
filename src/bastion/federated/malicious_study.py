"""One poisoned FedAvg run from a few settings, with its metrics.

`poisoned_run` builds the malicious clients and the aggregator, runs `run_fedavg` and
reports clean test accuracy, source-class recall (and the share of source-class test
examples sent to the target) for label flipping, the backdoor attack success rate on
triggered non-target test examples for backdoor attacks, and the precision/recall/F1 of
the statistical detector's flags against the (round, client) updates that were malicious.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from bastion.core import Classifier, ConfigError
from bastion.data.dataset import Dataset
from bastion.federated.aggregators import AGGREGATORS, get_aggregator
from bastion.federated.detect import StatisticalDetector, detection_metrics
from bastion.federated.malicious import (
    MaliciousClients,
    MaliciousConfig,
    make_malicious,
    stamp_trigger,
)
from bastion.federated.robust import check_bulyan, check_krum
from bastion.federated.simulation import FedConfig, run_fedavg


@dataclass(frozen=True)
class StudyConfig:
    """A poisoned federated study.

    Attributes:
        attackers: malicious clients: a count m or a fraction of num_clients.
        attack: see `MaliciousConfig.attack`; source, target, poison_fraction, boost,
            norm_bound as there.
        timing, participation: the `AttackSchedule`.
        aggregator: a registered aggregator name (fedavg, median, trimmed-mean, krum,
            multi-krum, bulyan, norm-clip, fltrust, detector).
        f: Byzantine clients Krum / Multi-Krum / Bulyan tolerate (None = the attacker count,
            at least 1).
        beta: trimmed-mean fraction; clip_bound / clip_noise: norm clipping (None = median norm).
        detector_threshold: robust-z cut-off of the statistical detector.
        root_size: FLTrust root examples, taken from the end of the training set and
            withheld from the clients.
    """

    attackers: int | float = 1
    attack: str = "label-flip"
    source: int = 7
    target: int = 1
    poison_fraction: float = 1.0
    boost: float | None = None
    norm_bound: float | None = None
    timing: str = "always"
    participation: float = 1.0
    aggregator: str = "fedavg"
    f: int | None = None
    beta: float = 0.1
    clip_bound: float | None = None
    clip_noise: float = 0.0
    detector_threshold: float = 3.5
    root_size: int = 100


def build_aggregator(cfg: StudyConfig, n_per_round: int, m: int, model: Classifier | None = None,
                     root: Dataset | None = None, fed: FedConfig | None = None) -> Any:
    """The aggregator of `cfg`, with its constraint checked against the n updates a round
    (so a Krum f too large for n fails before any training)."""
    name = cfg.aggregator
    if name not in AGGREGATORS:
        return get_aggregator(name)  # raises the unknown-name error
    f = cfg.f if cfg.f is not None else max(1, m)
    if name in ("krum", "multi-krum"):
        check_krum(n_per_round, f)
        return get_aggregator(name, f=f)
    if name == "bulyan":
        check_bulyan(n_per_round, f)
        return get_aggregator(name, f=f)
    if name == "trimmed-mean":
        return get_aggregator(name, beta=cfg.beta)
    if name == "norm-clip":
        return get_aggregator(name, bound=cfg.clip_bound, noise_std=cfg.clip_noise)
    if name == "detector":
        return get_aggregator(name, threshold=cfg.detector_threshold)
    if name == "fltrust":
        if model is None or root is None:
            raise ConfigError("FLTrust needs the model and a root data set")
        fed = fed or FedConfig()
        return get_aggregator(name, model=model, root=root, lr=fed.local_lr, steps=fed.local_steps,
                              batch_size=fed.local_batch_size, epochs=fed.local_epochs, seed=fed.seed)
    return get_aggregator(name)


def class_recall(model: Classifier, data: Dataset, cls: int) -> tuple[float, torch.Tensor]:
    """Recall of class `cls` on `data` and the predictions on its examples."""
    mask = data.y == cls
    if not bool(mask.any()):
        raise ConfigError(f"the test data hold no example of class {cls}")
    pred = model.predict(data.x[mask]).cpu() if hasattr(model, "predict") else None
    if pred is None:  # pragma: no cover - every Classifier has predict
        raise ConfigError("model cannot predict")
    return float((pred == cls).float().mean()), pred


def backdoor_asr(model: Classifier, data: Dataset, target: int, size: int, value: float) -> float:
    """Share of triggered non-target test examples classified as the target."""
    mask = data.y != target
    x = stamp_trigger(data.x[mask], size, value)
    return float((model.predict(x).cpu() == target).float().mean())


def poisoned_run(model: Classifier, train: Dataset, test: Dataset, fed: FedConfig, cfg: StudyConfig
                 ) -> dict[str, Any]:
    """Run FedAvg with `cfg`'s malicious clients and aggregator; the metrics as a dict."""
    fed.validate(len(train))
    mcfg = MaliciousConfig(cfg.attack, cfg.source, cfg.target, cfg.poison_fraction, cfg.boost,
                           cfg.norm_bound)
    mcfg.check_classes(train.num_classes)
    root = None
    if cfg.aggregator == "fltrust":
        if not 1 <= cfg.root_size < len(train):
            raise ConfigError(f"root_size must be in [1, {len(train) - 1}], got {cfg.root_size}")
        root = train.subset(torch.arange(len(train) - cfg.root_size, len(train)))
        train = train.take(len(train) - cfg.root_size)
    mal: MaliciousClients = make_malicious(fed.num_clients, cfg.attackers, mcfg, fed.rounds, cfg.timing,
                                           cfg.participation, fed.clients_per_round, fed.seed)
    agg = build_aggregator(cfg, fed.clients_per_round, len(mal.attackers), model, root, fed)
    res = run_fedavg(model, train, test, fed, aggregator=agg, update_transforms=[mal.update_transform],
                     client_data_transform=mal.data_transform)
    out: dict[str, Any] = {"config": asdict(cfg), "fed": asdict(fed), "malicious": mal.summary(),
                           "clean_accuracy": res.test_accuracy,
                           "accuracy_history": [h.get("test_accuracy") for h in res.history],
                           "wall_time": res.wall_time}
    if cfg.attack == "label-flip":
        rec, pred = class_recall(res.model, test, cfg.source)
        out["source_recall"] = rec
        out["source_to_target"] = float((pred == cfg.target).float().mean())
    else:
        out["backdoor_asr"] = backdoor_asr(res.model, test, cfg.target, mcfg.trigger_size, mcfg.trigger_value)
    if isinstance(agg, StatisticalDetector):
        out["detection"] = detection_metrics(agg.flagged_pairs(), mal.malicious, agg.seen_pairs())
        out["flags"] = [{"round": r["round"], "flagged": r["flagged"]} for r in agg.records]
    if hasattr(agg, "history"):
        out["selected"] = agg.history
    out["model"] = res.model
    return out
