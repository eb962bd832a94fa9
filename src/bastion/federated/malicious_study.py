"""One poisoned FedAvg run from a few settings, with its metrics.

`poisoned_run` builds the malicious clients and the aggregator, runs `run_fedavg` and
reports clean test accuracy, source-class recall (and the share of source-class test
examples sent to the target) for label flipping, the backdoor attack success rate on
triggered non-target test examples for backdoor attacks, and the precision/recall/F1 of
the statistical detector's flags against the (round, client) updates that were malicious.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
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
    """A poisoned federated study: who attacks, how, when, and the server's rule.

    Attributes:
        attackers: malicious clients: a count m or a fraction of num_clients.
        malicious: the attack (`MaliciousConfig`: label flipping, backdoor data, model
            replacement or constrain-and-scale, with its classes and sizes).
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
    malicious: MaliciousConfig = field(default_factory=MaliciousConfig)
    timing: str = "always"
    participation: float = 1.0
    aggregator: str = "fedavg"
    f: int | None = None
    beta: float = 0.1
    clip_bound: float | None = None
    clip_noise: float = 0.0
    detector_threshold: float = 3.5
    root_size: int = 100

    def __post_init__(self) -> None:
        if not isinstance(self.malicious, MaliciousConfig):
            raise ConfigError(f"StudyConfig.malicious must be a MaliciousConfig, got {type(self.malicious).__name__}")

    @property
    def attack(self) -> str:
        """The attack's name (`MaliciousConfig.attack`)."""
        return self.malicious.attack

    def without_attackers(self) -> StudyConfig:
        """The same study with no malicious client under FedAvg (the clean reference)."""
        return replace(self, attackers=0, aggregator="fedavg")


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


def target_probability(model: Classifier, data: Dataset, source: int, target: int) -> float:
    """Mean softmax probability of `target` on the `source`-class examples of `data`: how
    far label flipping pushed the source class, finer than the recall's one example."""
    with torch.no_grad():
        logits = model(data.x[data.y == source].to(model.device))
    return float(logits.softmax(-1)[:, target].mean())


def backdoor_asr(model: Classifier, data: Dataset, target: int, size: int, value: float) -> float:
    """Share of triggered non-target test examples classified as the target."""
    mask = data.y != target
    x = stamp_trigger(data.x[mask], size, value)
    return float((model.predict(x).cpu() == target).float().mean())


def poisoned_run(model: Classifier, train: Dataset, test: Dataset, fed: FedConfig, cfg: StudyConfig,
                 *, root: Dataset | None = None, start_round: int = 0, monitor: bool = False
                 ) -> dict[str, Any]:
    """Run FedAvg with `cfg`'s malicious clients and aggregator; the metrics as a dict.

    Args:
        model: architecture and initial global weights (after round start_round - 1 when
            resuming).
        train, test: the clients' training data and the test data.
        fed: the federation; cfg: the study.
        root: FLTrust's root set (None: the last `cfg.root_size` training examples,
            withheld from the clients).
        start_round: resume at this round (`run_fedavg`): runs that differ only from
            start_round on can share the clean rounds before it.
        monitor: with an aggregator other than the detector, also run the statistical
            detector on every round's updates without acting on its flags; its
            precision/recall come back under "monitor" (what it would have flagged).
    """
    fed.validate(len(train))
    mcfg = cfg.malicious
    mcfg.check_classes(train.num_classes)
    if cfg.aggregator == "fltrust" and root is None:
        if not 1 <= cfg.root_size < len(train):
            raise ConfigError(f"root_size must be in [1, {len(train) - 1}], got {cfg.root_size}")
        root = train.subset(torch.arange(len(train) - cfg.root_size, len(train)))
        train = train.take(len(train) - cfg.root_size)
    mal: MaliciousClients = make_malicious(fed.num_clients, cfg.attackers, mcfg, fed.rounds, cfg.timing,
                                           cfg.participation, fed.clients_per_round, fed.seed)
    agg = build_aggregator(cfg, fed.clients_per_round, len(mal.attackers), model, root, fed)
    watch = (StatisticalDetector(cfg.detector_threshold)
             if monitor and not isinstance(agg, StatisticalDetector) else None)

    def server(updates: Any) -> Any:
        if watch is not None:
            watch.flag(updates)
        return agg(updates)

    res = run_fedavg(model, train, test, fed, aggregator=server, update_transforms=[mal.update_transform],
                     client_data_transform=mal.data_transform, start_round=start_round)
    out: dict[str, Any] = {"config": asdict(cfg), "fed": asdict(fed), "malicious": mal.summary(),
                           "clean_accuracy": res.test_accuracy,
                           "accuracy_history": [h.get("test_accuracy") for h in res.history],
                           "wall_time": res.wall_time}
    if mcfg.attack == "label-flip":
        rec, pred = class_recall(res.model, test, mcfg.source)
        out["source_recall"] = rec
        out["source_to_target"] = float((pred == mcfg.target).float().mean())
        out["source_target_prob"] = target_probability(res.model, test, mcfg.source, mcfg.target)
    else:
        out["backdoor_asr"] = backdoor_asr(res.model, test, mcfg.target, mcfg.trigger_size, mcfg.trigger_value)
    if isinstance(agg, StatisticalDetector):
        out["detection"] = detection_metrics(agg.flagged_pairs(), mal.malicious, agg.seen_pairs())
        out["flags"] = [{"round": r["round"], "flagged": r["flagged"]} for r in agg.records]
    if watch is not None:
        out["monitor"] = {"detection": detection_metrics(watch.flagged_pairs(), mal.malicious, watch.seen_pairs()),
                          "records": watch.records, "malicious_pairs": sorted(mal.malicious)}
    if hasattr(agg, "history"):
        out["selected"] = agg.history
    out["model"] = res.model
    return out
