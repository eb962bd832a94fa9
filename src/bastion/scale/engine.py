"""Connect to Ray: a local one-machine cluster by default, an existing cluster by address.

Ray (Moritz et al. 2018) is an optional extra (`pip install bastion[scale]`), imported only
here and only when a Ray engine is asked for. `connect()` is idempotent: a process that
already called `ray.init` keeps its cluster. Before `ray.init(address=...)` the address is
probed with a plain TCP connection (a few seconds at most), because Ray itself keeps
retrying an unreachable cluster for a long time; the error names the address and the Ray
version installed here.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

from bastion.errors import ConfigError

RAY_REQUIRED = "2.30"
INSTALL_HINT = "pip install 'bastion[scale]'"
ENGINES = ("local", "ray")
PROBE_TIMEOUT_S = 3.0


def _version_tuple(v: str) -> tuple[int, ...]:
    out: list[int] = []
    for part in v.split("."):
        digits = "".join(c for c in part if c.isdigit())
        if not digits:
            break
        out.append(int(digits))
    return tuple(out)


def import_ray() -> Any:
    """The `ray` module, or a ConfigError saying how to install it (and which version is
    required when an older one is installed)."""
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # silence a FutureWarning
    try:
        import ray
    except ImportError:
        raise ConfigError(f"the Ray engine needs ray >= {RAY_REQUIRED}, which is not installed here; "
                          f"install it with: {INSTALL_HINT}") from None
    if _version_tuple(ray.__version__) < _version_tuple(RAY_REQUIRED):
        raise ConfigError(f"the Ray engine needs ray >= {RAY_REQUIRED}, found ray {ray.__version__}; "
                          f"upgrade with: {INSTALL_HINT}")
    return ray


def check_engine(engine: str, address: str | None = None) -> None:
    """Refuse an unknown engine, or an address without the Ray engine."""
    if engine not in ENGINES:
        raise ConfigError(f"unknown engine {engine!r}; valid: {', '.join(ENGINES)}")
    if address is not None and engine != "ray":
        raise ConfigError("--address names a Ray cluster: use it with --engine ray")


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of a 'host:port' or 'ray://host:port' address; None for 'auto' / 'local'."""
    a = address.strip()
    if a in ("auto", "local", ""):
        return None
    if "://" in a:
        a = a.split("://", 1)[1]
    host, sep, port = a.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"Ray address {address!r} is not host:port (e.g. 10.0.0.5:6379, "
                          "ray://10.0.0.5:10001) or 'auto'")
    return host.strip("[]") or "127.0.0.1", int(port)


def probe(address: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Fail in one line, within `timeout` seconds, when nothing listens at `address`."""
    hp = _host_port(address)
    if hp is None:
        return
    try:
        with socket.create_connection(hp, timeout=timeout):
            return
    except OSError as e:
        why = "timed out" if isinstance(e, TimeoutError) else (e.strerror or type(e).__name__)
        raise ConfigError(f"cannot reach the Ray cluster at {address} ({why} after at most {timeout:g} s); "
                          f"ray {_ray_version()} is installed here (bastion needs >= {RAY_REQUIRED}, and the "
                          "cluster must run the same version); start one with `ray start --head` or "
                          "drop --address to use this machine's cores") from None


def _ray_version() -> str:
    try:
        import ray
        return str(ray.__version__)
    except ImportError:
        return "(none)"


@dataclass(frozen=True)
class Cluster:
    """What `connect` attached to: address ('local' for a cluster started here), nodes and CPUs."""

    address: str
    nodes: int
    cpus: int
    ray_version: str

    def to_dict(self) -> dict[str, Any]:
        return {"address": self.address, "nodes": self.nodes, "cpus": self.cpus, "ray": self.ray_version}


def connect(address: str | None = None, num_cpus: int | None = None,
            object_store_mb: int | None = 256) -> Cluster:
    """Attach this process to Ray (once; later calls reuse the connection).

    Args:
        address: an existing cluster ('host:port', 'ray://host:port', or 'auto' for one
            started on this machine with `ray start`); None starts a local cluster.
        num_cpus: CPUs of a local cluster (None = all cores). Ignored with `address`.
        object_store_mb: object-store size of a local cluster (shadow weights and pools
            are small; the Ray default takes 30% of RAM).
    """
    ray = import_ray()
    if not ray.is_initialized():
        kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                              "configure_logging": True, "logging_level": "ERROR"}
        if address is not None:
            probe(address)
            try:
                ray.init(address=address, **kw)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise ConfigError(f"cannot connect to the Ray cluster at {address} ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0][:200]}); ray {ray.__version__} is installed here "
                                  f"(bastion needs >= {RAY_REQUIRED}; the cluster must run the same "
                                  "version)") from None
        else:
            if num_cpus is not None:
                kw["num_cpus"] = num_cpus
            if object_store_mb is not None:
                kw["object_store_memory"] = object_store_mb * 1024 * 1024
            ray.init(**kw)
    res = ray.cluster_resources()
    alive = [n for n in ray.nodes() if n.get("Alive")]
    return Cluster(address or "local", len(alive), int(res.get("CPU", 0)), str(ray.__version__))


def get(ref: Any) -> Any:
    """`ray.get(ref)`, re-raising a task's own exception (a ConfigError stays a one-line
    ConfigError) instead of Ray's wrapper with the worker's traceback."""
    ray = import_ray()
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, BaseException):
            raise cause from None
        raise


def cluster_cpus() -> int:
    """CPUs of the connected cluster (at least 1)."""
    ray = import_ray()
    return max(int(ray.cluster_resources().get("CPU", 1)), 1)


def shutdown() -> None:
    """Disconnect (and stop a local cluster started by `connect`)."""
    try:
        import ray
    except ImportError:
        return
    if ray.is_initialized():
        ray.shutdown()
