"""Run Bastion's federated studies on Flower (flwr >= 1.20, the Message API).

`run_flower` takes the arguments of `bastion.federated.run_fedavg` and runs the same study in
Flower's simulation engine (Ray backend): every sampled client is a Flower `ClientApp` that
runs our local training (`client_update`: local SGD or Fed-CDP's DP-SGD, then the update
transforms, e.g. Fed-SDP's clipping or an attack); the server is a Flower `Strategy`
(`BastionStrategy`) that samples clients with the in-process engine's seeded rule, applies
any of our aggregators (`bastion.federated.aggregators.get_aggregator`, Fed-SDP's noisy
aggregation, or any callable) and fires our leakage taps: type 0 on the new global model
and type 1 on each upload at the server, type 2 inside the client (the events travel back
in the client's reply). Clients use per-(seed, round, client) generators, so the same
config, seed and data give the same global model as `run_fedavg` up to float rounding.

Flower is an optional extra (`pip install 'bastion[scale]'`), imported only here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from importlib import metadata
from typing import Any

from bastion.core import Classifier, ConfigError
from bastion.data.dataset import Dataset
from bastion.federated.aggregators import Aggregator, ClientUpdate, fedavg
from bastion.federated.simulation import FedConfig, FedHook, FedResult, LocalTransform

#: the oldest Flower with the Message API used here (ClientApp.train/query, ServerApp.main,
#: flwr.serverapp.strategy.Strategy, ArrayRecord / ConfigRecord / MetricRecord)
FLWR_REQUIRED = "1.20"
INSTALL_HINT = "pip install 'bastion[scale]'"


def _version_tuple(v: str) -> tuple[int, ...]:
    out = []
    for part in v.split(".")[:3]:
        digits = "".join(ch for ch in part if ch.isdigit())
        out.append(int(digits) if digits else 0)
    return tuple(out)


def flower_version() -> str | None:
    """The installed flwr version, None when it is not installed."""
    try:
        return metadata.version("flwr")
    except metadata.PackageNotFoundError:
        return None


def require_flower() -> str:
    """Check that a Flower with the needed API is installed; return its version. Raises
    ConfigError saying how to install it, or which version was found and which is needed."""
    found = flower_version()
    if found is None:
        raise ConfigError(f"the Flower engine needs the 'flwr' package, which is not installed; "
                          f"install the scale extra: {INSTALL_HINT}")
    if _version_tuple(found) < _version_tuple(FLWR_REQUIRED):
        raise ConfigError(f"the Flower engine needs flwr >= {FLWR_REQUIRED} (the ClientApp / "
                          f"ServerApp Message API); found flwr {found}; upgrade: {INSTALL_HINT}")
    try:
        from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord  # noqa: F401
        from flwr.clientapp import ClientApp  # noqa: F401
        from flwr.serverapp import ServerApp  # noqa: F401
        from flwr.serverapp.strategy import Strategy  # noqa: F401
        from flwr.simulation import run_simulation  # noqa: F401
    except ImportError as e:
        raise ConfigError(f"flwr {found} lacks the API the Flower engine uses ({e}); it needs "
                          f"flwr >= {FLWR_REQUIRED} with flwr.app, flwr.clientapp, "
                          f"flwr.serverapp.strategy and flwr.simulation: {INSTALL_HINT}") from e
    try:
        metadata.version("ray")
    except metadata.PackageNotFoundError as e:
        raise ConfigError("Flower's simulation engine needs Ray, which is not installed; "
                          f"install the scale extra: {INSTALL_HINT}") from e
    return found


def run_flower(model: Classifier, train: Dataset, test: Dataset | None = None,
               config: FedConfig | None = None, *, aggregator: Aggregator = fedavg,
               update_transforms: Sequence[Callable[[ClientUpdate], ClientUpdate]] = (),
               local_transform: LocalTransform | None = None,
               hooks: Sequence[FedHook] = (), client_indices: list[Any] | None = None,
               local_trainer: Any = None, num_cpus: int | None = None,
               client_cpus: float = 1.0, verbose: bool = False) -> FedResult:
    """`run_fedavg` on Flower's simulation engine (one Flower SuperNode per client).

    Args: as `run_fedavg`, plus
        num_cpus: CPUs Ray may use (None = all); client_cpus: CPUs per ClientApp actor.
        verbose: keep Flower's and Ray's INFO logging.
    Returns the FedResult, with `config['engine'] = 'flower'` and the flwr version.
    """
    version = require_flower()
    from bastion.federated.flower_app import run_study
    return run_study(model, train, test, config or FedConfig(), aggregator=aggregator,
                     update_transforms=update_transforms, local_transform=local_transform,
                     hooks=hooks, client_indices=client_indices, local_trainer=local_trainer,
                     num_cpus=num_cpus, client_cpus=client_cpus, verbose=verbose,
                     flwr_version=version)
