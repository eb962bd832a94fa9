"""Malicious clients for the federated simulation: data poisoning and model poisoning.

Data poisoning changes what the attackers TRAIN on (a `client_data_transform` of
`run_fedavg`): dirty-label flipping source -> target (Tolpegin et al., 2020) or backdoor
data, a trigger stamped on a fraction of the client's examples relabelled to the target
(Gu et al., 2017). Model poisoning changes what they UPLOAD (an `update_transform`):

- boosting / model replacement (Bagdasaryan et al., 2020): the attacker scales its update
  by gamma = n / eta (n clients averaged, eta the server learning rate; 1 for FedAvg), so
  the average is replaced by roughly the attacker's model;
- constrain-and-scale: the boosted update projected onto the norm ball the server checks
  (Sun et al., 2019, the norm-bounded attacker), so it passes a norm filter at the
  largest allowed size.

`AttackSchedule` decides when the attackers act: `timing` picks the window of rounds
(early = first third, middle, late = last third, always) and `participation` the chance an
attacker acts in a round of that window (seeded per round and client). Outside it the
attackers train and upload honestly. `MaliciousClients` bundles attackers, attack and
schedule and records which (round, client) updates were malicious, the ground truth for
the detection precision/recall of `bastion.federated.detect`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from bastion.core import ConfigError, unknown_name
from bastion.federated.aggregators import ClientUpdate

TIMINGS = ("early", "middle", "late", "always")
ATTACKS = ("label-flip", "backdoor", "model-replacement", "constrain-scale")


def check_fraction(value: float, name: str) -> None:
    """ConfigError unless 0 <= value <= 1."""
    if not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise ConfigError(f"{name} must be a fraction in [0, 1], got {value!r}")


def select_attackers(num_clients: int, attackers: int | float | Sequence[int], seed: int = 0) -> list[int]:
    """The malicious client ids: a count m (0 <= m <= num_clients), a fraction in [0, 1)
    of the clients (rounded), or explicit ids; seeded choice for counts and fractions."""
    if num_clients < 1:
        raise ConfigError(f"num_clients must be >= 1, got {num_clients}")
    if isinstance(attackers, (list, tuple, np.ndarray)):
        ids = sorted({int(a) for a in attackers})
        bad = [a for a in ids if not 0 <= a < num_clients]
        if bad:
            raise ConfigError(f"attacker ids {bad} outside the clients 0..{num_clients - 1}")
        return ids
    if isinstance(attackers, float) and not float(attackers).is_integer():
        check_fraction(attackers, "attacker fraction")
        m = round(attackers * num_clients)
    else:
        m = int(attackers)
    if m < 0:
        raise ConfigError(f"the number of attackers must be >= 0, got {m}")
    if m > num_clients:
        raise ConfigError(f"more attackers ({m}) than clients ({num_clients}): need attackers <= clients")
    return sorted(np.random.default_rng(seed).choice(num_clients, m, replace=False).tolist())


@dataclass(frozen=True)
class AttackSchedule:
    """When the attackers act.

    Attributes:
        rounds: total federated rounds of the run (windows are thirds of it).
        timing: 'early' (first third), 'middle', 'late' (last third) or 'always'.
        participation: probability an attacker acts in a round of the window, in [0, 1].
        seed: seeds the participation draws.
    """

    rounds: int
    timing: str = "always"
    participation: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ConfigError(f"rounds must be >= 1, got {self.rounds}")
        if self.timing not in TIMINGS:
            raise unknown_name("attack timing", self.timing, TIMINGS)
        check_fraction(self.participation, "participation")

    def window(self) -> range:
        """The rounds of the timing window."""
        third = max(1, self.rounds // 3)
        return {"early": range(0, third), "middle": range(third, max(third + 1, self.rounds - third)),
                "late": range(self.rounds - third, self.rounds),
                "always": range(self.rounds)}[self.timing]

    def active(self, round: int, client: int) -> bool:
        """True when `client` (an attacker) acts maliciously in `round`."""
        if round not in self.window():
            return False
        if self.participation >= 1.0:
            return True
        u = np.random.default_rng([self.seed, round, client]).random()
        return bool(u < self.participation)


def stamp_trigger(x: torch.Tensor, size: int = 3, value: float = 1.0) -> torch.Tensor:
    """A copy of image batch x [B, C, H, W] with a size x size square of `value` in the
    bottom-right corner: the BadNets square trigger (Gu et al., 2017) of
    `bastion.attacks.poisoning`, flush with the border."""
    from bastion.attacks.poisoning.trigger import Trigger

    if x.dim() != 4:
        raise ConfigError(f"trigger stamping needs image batches [B, C, H, W], got shape {tuple(x.shape)}")
    if not 1 <= size <= min(x.shape[-2:]):
        raise ConfigError(f"trigger size {size} must be in [1, {min(x.shape[-2:])}] (the image side)")
    return Trigger("square", size, "bottom-right", margin=0, value=value).apply(x)


@dataclass(frozen=True)
class MaliciousConfig:
    """A malicious-client attack.

    Attributes:
        attack: 'label-flip' (source -> target labels), 'backdoor' (trigger + target label
            on `poison_fraction` of the data), 'model-replacement' (backdoor data, update
            boosted by `boost`) or 'constrain-scale' (backdoor data, boosted, projected onto
            the norm ball of radius `norm_bound`).
        source, target: classes for label flipping (source -> target); `target` is also the
            backdoor's target class.
        poison_fraction: fraction of the attacker's eligible examples poisoned, in [0, 1]
            (label flip: of its source-class examples; backdoor: of its non-target examples).
        boost: update scale gamma; None = the clients per round n (model replacement with
            eta = 1, Bagdasaryan et al., 2020).
        norm_bound: constrain-and-scale radius; None = the median norm of the honest
            updates in the same round (what a norm filter at the median would let through).
        trigger_size, trigger_value: the square trigger at the bottom-right corner.
    """

    attack: str = "label-flip"
    source: int = 7
    target: int = 1
    poison_fraction: float = 1.0
    boost: float | None = None
    norm_bound: float | None = None
    trigger_size: int = 3
    trigger_value: float = 1.0

    def __post_init__(self) -> None:
        if self.attack not in ATTACKS:
            raise unknown_name("malicious-client attack", self.attack, ATTACKS)
        check_fraction(self.poison_fraction, "poison_fraction")
        if self.boost is not None and not self.boost > 0:
            raise ConfigError(f"boost must be positive, got {self.boost}")
        if self.norm_bound is not None and not self.norm_bound > 0:
            raise ConfigError(f"norm_bound must be positive, got {self.norm_bound}")
        if self.attack == "label-flip" and self.source == self.target:
            raise ConfigError(f"label flipping needs source != target, got {self.source} -> {self.target}")

    @property
    def uses_backdoor(self) -> bool:
        return self.attack != "label-flip"

    def check_classes(self, num_classes: int) -> None:
        for name in ("source", "target") if self.attack == "label-flip" else ("target",):
            v = getattr(self, name)
            if not 0 <= v < num_classes:
                raise ConfigError(f"{name} class {v} outside the labels 0..{num_classes - 1}")


def _flat_norm(delta: dict[str, torch.Tensor]) -> float:
    return float(torch.sqrt(sum((v.double() ** 2).sum() for v in delta.values())))


@dataclass
class MaliciousClients:
    """Attackers, attack and schedule, usable as both simulation extension points:
    `data_transform` (pass as `client_data_transform`) and `update_transform` (pass in
    `update_transforms`). `malicious` collects the (round, client) pairs that acted.

    Attributes:
        attackers: malicious client ids.
        config: `MaliciousConfig`.
        schedule: `AttackSchedule`.
        clients_per_round: n for the default boost n / eta.
        seed: seeds which examples are poisoned.
    """

    attackers: Sequence[int]
    config: MaliciousConfig
    schedule: AttackSchedule
    clients_per_round: int = 10
    seed: int = 0
    malicious: set[tuple[int, int]] = field(default_factory=set)
    _honest_norms: dict[int, list[float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.attackers = sorted(int(a) for a in self.attackers)

    def acts(self, round: int, client: int) -> bool:
        return client in self.attackers and self.schedule.active(round, client)

    def _chosen(self, n: int, client: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed * 100_003 + client)
        k = round(self.config.poison_fraction * n)
        return torch.randperm(n, generator=gen)[:k]

    def data_transform(self, round: int, client: int, x: torch.Tensor, y: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """The client's training data this round: poisoned when it acts, else unchanged."""
        if not self.acts(round, client):
            return x, y
        self.malicious.add((round, client))
        cfg = self.config
        if cfg.attack == "label-flip":
            elig = torch.nonzero(y == cfg.source).flatten()
            pick = elig[self._chosen(len(elig), client).to(elig.device)]
            y = y.clone()
            y[pick] = cfg.target
            return x, y
        elig = torch.nonzero(y != cfg.target).flatten()
        pick = elig[self._chosen(len(elig), client).to(elig.device)]
        x, y = x.clone(), y.clone()
        x[pick] = stamp_trigger(x[pick], cfg.trigger_size, cfg.trigger_value)
        y[pick] = cfg.target
        return x, y

    def update_transform(self, upd: ClientUpdate) -> ClientUpdate:
        """Boost (model replacement) or constrain-and-scale the attackers' acting updates;
        honest updates pass unchanged (their norms are remembered for the median bound)."""
        acting = self.acts(upd.round, upd.client)
        if not acting:
            self._honest_norms.setdefault(upd.round, []).append(_flat_norm(upd.delta))
            return upd
        self.malicious.add((upd.round, upd.client))
        cfg = self.config
        if cfg.attack not in ("model-replacement", "constrain-scale"):
            upd.meta["malicious"] = cfg.attack
            return upd
        gamma = cfg.boost if cfg.boost is not None else float(self.clients_per_round)
        delta = {k: v * gamma for k, v in upd.delta.items()}
        if cfg.attack == "constrain-scale":
            bound = cfg.norm_bound
            if bound is None:  # honest clients of this round seen so far (sorted order) or the last round
                seen = self._honest_norms.get(upd.round) or self._honest_norms.get(upd.round - 1) or []
                bound = float(np.median(seen)) if seen else _flat_norm(upd.delta)
            norm = _flat_norm(delta)
            if norm > bound:
                delta = {k: v * (bound / norm) for k, v in delta.items()}
        meta = {**upd.meta, "malicious": cfg.attack, "boost": gamma}
        return ClientUpdate(upd.client, upd.round, delta, upd.num_examples, upd.lr, upd.local_steps, meta)

    def is_malicious(self, round: int, client: int) -> bool:
        return (round, client) in self.malicious

    def summary(self) -> dict[str, Any]:
        return {"attackers": list(self.attackers), "attack": self.config.attack,
                "timing": self.schedule.timing, "participation": self.schedule.participation,
                "window": [self.schedule.window().start, self.schedule.window().stop],
                "malicious_updates": len(self.malicious)}


def make_malicious(num_clients: int, attackers: int | float | Sequence[int], config: MaliciousConfig,
                   rounds: int, timing: str = "always", participation: float = 1.0,
                   clients_per_round: int | None = None, seed: int = 0) -> MaliciousClients:
    """Validated `MaliciousClients` (attacker count/fraction, timing and participation)."""
    ids = select_attackers(num_clients, attackers, seed)
    sched = AttackSchedule(rounds, timing, participation, seed)
    return MaliciousClients(ids, config, sched, clients_per_round or num_clients, seed)
