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
    "AGGREGATORS", "Aggregator", "ClientUpdate", "FedConfig", "FedHook", "FedResult",
    "LeakageEvent", "PayloadCollector", "evaluate", "fedavg", "get_aggregator", "local_train",
    "mean", "median", "per_example_gradients", "run_fedavg", "trimmed_mean",
]
__all__ += ["client_update", "server_update"]
# Fed-SDP / Fed-CDP: bastion.federated.dp; the Flower engine: bastion.federated.flower
