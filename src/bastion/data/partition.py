"""Seeded client partitions for federated experiments.

- IID: a random permutation cut into near-equal shards.
- Dirichlet(alpha) (Hsu et al., 2019): for each class, proportions p ~ Dir(alpha * 1_K)
  decide how that class's examples are spread over K clients; small alpha = skewed.
"""

from __future__ import annotations

import numpy as np
import torch

from bastion.core import ConfigError


def iid_partition(n: int, num_clients: int, seed: int = 0) -> list[np.ndarray]:
    if num_clients < 1 or num_clients > n:
        raise ConfigError(f"num_clients must be in [1, {n}], got {num_clients}")
    perm = np.random.default_rng(seed).permutation(n)
    return [np.sort(s) for s in np.array_split(perm, num_clients)]


def dirichlet_partition(labels: np.ndarray | torch.Tensor, num_clients: int, alpha: float,
                        seed: int = 0, min_size: int = 1, max_tries: int = 100) -> list[np.ndarray]:
    """Label-skewed split; resamples until every client holds at least `min_size` examples."""
    y = labels.numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if alpha <= 0:
        raise ConfigError(f"Dirichlet alpha must be positive, got {alpha}")
    if num_clients < 1 or num_clients * min_size > len(y):
        raise ConfigError(f"cannot give {num_clients} clients {min_size}+ examples from {len(y)}")
    rng = np.random.default_rng(seed)
    for _ in range(max_tries):
        shards: list[list[int]] = [[] for _ in range(num_clients)]
        for c in np.unique(y):
            idx = np.flatnonzero(y == c)
            rng.shuffle(idx)
            p = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(p)[:-1] * len(idx)).astype(int)
            for k, part in enumerate(np.split(idx, cuts)):
                shards[k].extend(part.tolist())
        if min(len(s) for s in shards) >= min_size:
            return [np.sort(np.array(s, dtype=np.int64)) for s in shards]
    raise ConfigError(f"Dirichlet(alpha={alpha}) split left a client with < {min_size} examples "
                      f"after {max_tries} tries; raise alpha or lower num_clients")


def partition(labels: np.ndarray | torch.Tensor, num_clients: int, scheme: str = "iid",
              alpha: float = 0.5, seed: int = 0) -> list[np.ndarray]:
    """Dispatch on `scheme` ('iid' or 'dirichlet')."""
    if scheme == "iid":
        return iid_partition(len(labels), num_clients, seed)
    if scheme == "dirichlet":
        return dirichlet_partition(labels, num_clients, alpha, seed)
    raise ConfigError(f"unknown partition scheme {scheme!r}; valid: iid, dirichlet")
