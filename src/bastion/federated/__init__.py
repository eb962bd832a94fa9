"""Federated learning simulation (in-process FedAvg) with type-0/1/2 leakage points,
pluggable aggregators, client-update transforms and local gradient transforms."""

from bastion.federated.aggregators import (
    AGGREGATORS,
    Aggregator,
    ClientUpdate,
    fedavg,
    get_aggregator,
    mean,
    median,
    trimmed_mean,
)
from bastion.federated.detect import StatisticalDetector, detection_metrics
from bastion.federated.malicious import (
    AttackSchedule,
    MaliciousClients,
    MaliciousConfig,
    make_malicious,
    select_attackers,
)
from bastion.federated.robust import (
    Bulyan,
    FLTrust,
    Krum,
    NormClip,
    bulyan,
    fltrust,
    krum,
    multi_krum,
    norm_clip,
)
from bastion.federated.simulation import (
    FedConfig,
    FedHook,
    FedResult,
    LeakageEvent,
    PayloadCollector,
    client_update,
    evaluate,
    local_train,
    per_example_gradients,
    run_fedavg,
    server_update,
)

__all__ = [
    "AGGREGATORS",
    "Aggregator",
    "AttackSchedule",
    "Bulyan",
    "ClientUpdate",
    "FLTrust",
    "FedConfig",
    "FedHook",
    "FedResult",
    "Krum",
    "LeakageEvent",
    "MaliciousClients",
    "MaliciousConfig",
    "NormClip",
    "PayloadCollector",
    "StatisticalDetector",
    "bulyan",
    "detection_metrics",
    "evaluate",
    "fedavg",
    "fltrust",
    "get_aggregator",
    "krum",
    "local_train",
    "make_malicious",
    "mean",
    "median",
    "multi_krum",
    "norm_clip",
    "per_example_gradients",
    "run_fedavg",
    "select_attackers",
    "trimmed_mean",
]
__all__ += ["client_update", "server_update"]
# Fed-SDP / Fed-CDP: bastion.federated.dp; the Flower engine: bastion.federated.flower
