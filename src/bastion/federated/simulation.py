"""In-process federated averaging (McMahan et al., 2017) with leakage points.

    split the training set over N clients (seeded IID or Dirichlet(alpha), data.partition)
    for each round t:
        sample K of the N clients
        each client k: start from w_t, run local SGD (local epochs or a step budget,
            local batch size, local lr) -> delta_k = w_k - w_t      [type-2 taps inside]
        apply the client update transforms (defenses, attacks) to delta_k  [type-1 tap]
        w_{t+1} = w_t + aggregator(delta_1..delta_K)                       [type-0 tap]

Leakage points (dissertation ch. 5.5): hooks receive the type-2 payload (per-example
gradients during local SGD, `SharedGradient` of batch size 1), the type-1 payload (a
client's update before upload, `WeightUpdate`) and the type-0 payload (the server's
aggregate, `WeightUpdate`). Events also carry the victim's examples, for scoring
reconstructions only; attack code receives just `event.payload`.

Extension points, all plain callables: `aggregator` (aggregators.py), `update_transforms`
(ClientUpdate -> ClientUpdate, e.g. update-level defenses or model poisoning) and
`local_transform` (a gradient transform applied at every local SGD step; transforms with
`per_example = True`, such as per-example clipping + noise, receive per-example gradients
computed with torch.func.vmap). Local training uses plain SGD on a functional copy of
the weights, so the global model object is never mutated during a round.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad_and_value, vmap

from bastion.attacks.privacy.leakage.payload import SharedGradient, WeightUpdate
from bastion.core import Classifier, ConfigError
from bastion.data.dataset import Dataset
from bastion.data.partition import partition
from bastion.federated.aggregators import Aggregator, ClientUpdate, fedavg
from bastion.progress import task
from bastion.training.per_example import per_example_gradients

Tensors = dict[str, torch.Tensor]


def client_generator(seed: int, round: int, client: int) -> torch.Generator:
    """The generator of client `client`'s local randomness in round `round` (minibatch order,
    transform noise): a function of (seed, round, client) only, so a client computes the
    same update whichever process or engine runs it, and in whatever order."""
    mixed = (int(seed) * 0x9E3779B1 + (int(round) + 1) * 0x85EBCA77 + (int(client) + 1) * 0xC2B2AE3D)
    return torch.Generator().manual_seed(mixed % (2**63 - 1))


def sample_clients(gen: torch.Generator, num_clients: int, clients_per_round: int) -> list[int]:
    """The K clients of one round, drawn without replacement from the server's generator,
    in ascending order (the order updates are aggregated in)."""
    return sorted(torch.randperm(num_clients, generator=gen)[:clients_per_round].tolist())


@dataclass(frozen=True)
class FedConfig:
    """FedAvg simulation parameters.

    Attributes:
        num_clients: N clients the training set is split over.
        clients_per_round: K clients sampled (without replacement) each round.
        rounds: federated rounds.
        local_epochs: passes over the client's data per round.
        local_steps: optional cap on local SGD steps per round (None = full epochs).
        local_batch_size: local minibatch size.
        local_lr: local SGD learning rate (no momentum, so delta / lr is a gradient sum).
        partition: 'iid' or 'dirichlet'; alpha: Dirichlet concentration.
        seed: seeds the split, the client sampling, the minibatches and the transforms.
        eval_every: evaluate the global model on the test set every this many rounds.
        vectorize: train the sampled clients in lockstep with torch.func.vmap (one batched
            step for all clients) when they hold equally many examples and no hook or local
            transform needs per-client work; each client draws the same minibatches as in
            the loop (its own generator), so the results agree up to float rounding.
        vectorize_group: clients per lockstep group when `vectorize` is on. None picks by
            device: all sampled clients on CUDA; on CPU as many as keep one group's stacked
            weights within `LOCKSTEP_CPU_BYTES` (16 MB), so that a group's weights, gradients
            and activations stay in cache across its local steps (a 100-client stack of a
            1 MB model is memory-bound and no faster than the loop).
        progress: show a progress bar (None = only on an interactive terminal).
    """

    num_clients: int = 10
    clients_per_round: int = 10
    rounds: int = 10
    local_epochs: int = 1
    local_steps: int | None = None
    local_batch_size: int = 32
    local_lr: float = 0.1
    partition: str = "iid"
    alpha: float = 0.5
    seed: int = 0
    eval_every: int = 1
    vectorize: bool = False
    vectorize_group: int | None = None
    progress: bool | None = None

    def validate(self, n_train: int | None = None) -> None:
        if self.num_clients < 1:
            raise ConfigError(f"num_clients must be >= 1, got {self.num_clients}")
        if not 1 <= self.clients_per_round <= self.num_clients:
            raise ConfigError(f"clients_per_round must be in [1, {self.num_clients}], got "
                              f"{self.clients_per_round}")
        for name in ("rounds", "local_epochs", "local_batch_size", "eval_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.vectorize_group is not None and self.vectorize_group < 1:
            raise ConfigError(f"vectorize_group must be >= 1 or None, got {self.vectorize_group}")
        if self.local_steps is not None and self.local_steps < 1:
            raise ConfigError(f"local_steps must be >= 1 or None, got {self.local_steps}")
        if not self.local_lr > 0:
            raise ConfigError(f"local_lr must be positive, got {self.local_lr}")
        if self.partition not in ("iid", "dirichlet"):
            raise ConfigError(f"unknown partition {self.partition!r}; valid: iid, dirichlet")
        if n_train is not None and self.num_clients > n_train:
            raise ConfigError(f"{self.num_clients} clients but only {n_train} training examples")


class LocalTransform(Protocol):
    """A gradient transform inside local SGD. `per_example = True` transforms get
    `aggregate(per_example_grads [B, ...], gen) -> mean gradient`; all provide
    `apply(grads, gen)` (used on batch gradients and on type-2 views)."""

    per_example: bool

    def apply(self, grads: Tensors, gen: torch.Generator) -> Tensors: ...


@dataclass
class LeakageEvent:
    """One payload at a leakage point.

    Attributes:
        leakage_type: 2 (per-example gradient in local SGD), 1 (client update before
            upload) or 0 (server aggregate).
        round, client, step: where it happened (client/step None for type 0).
        payload: what the attacker gets.
        victim_x, victim_y: the examples behind the payload, for scoring only.
    """

    leakage_type: int
    round: int
    client: int | None
    step: int | None
    payload: SharedGradient | WeightUpdate
    victim_x: torch.Tensor | None = None
    victim_y: torch.Tensor | None = None


class FedHook:
    """Base class of simulation callbacks; override what you need."""

    def wants_type2(self, round: int, client: int, step: int) -> bool:
        """Return True to receive per-example gradients of this local step (they cost a
        vmap per-example gradient computation, so they are only computed on demand)."""
        return False

    def on_type2(self, event: LeakageEvent) -> None: ...

    def on_type1(self, event: LeakageEvent) -> None: ...

    def on_type0(self, event: LeakageEvent) -> None: ...

    def on_round_end(self, round: int, record: dict[str, Any]) -> None: ...


class PayloadCollector(FedHook):
    """Collects leakage events of the given types in the given rounds (and, for types 2
    and 1, clients), up to `limit` per type."""

    def __init__(self, types: Sequence[int] = (0, 1, 2), rounds: Sequence[int] = (0,),
                 clients: Sequence[int] | None = None, steps: Sequence[int] = (0,),
                 limit: int = 16) -> None:
        self.types, self.rounds = set(types), set(rounds)
        self.clients = None if clients is None else set(clients)
        self.steps, self.limit = set(steps), limit
        self.events: dict[int, list[LeakageEvent]] = {0: [], 1: [], 2: []}

    def _ok(self, t: int, round: int, client: int | None) -> bool:
        return (t in self.types and round in self.rounds and len(self.events[t]) < self.limit
                and (client is None or self.clients is None or client in self.clients))

    def wants_type2(self, round: int, client: int, step: int) -> bool:
        return self._ok(2, round, client) and step in self.steps

    def on_type2(self, event: LeakageEvent) -> None:
        if self._ok(2, event.round, event.client):
            self.events[2].append(event)

    def on_type1(self, event: LeakageEvent) -> None:
        if self._ok(1, event.round, event.client):
            self.events[1].append(event)

    def on_type0(self, event: LeakageEvent) -> None:
        if self._ok(0, event.round, None):
            self.events[0].append(event)


@dataclass
class FedResult:
    """History per round (test accuracy, mean local loss, clients), the final global
    weights and the trained model (a copy of the input model with those weights)."""

    history: list[dict[str, Any]]
    model: Classifier
    weights: Tensors
    test_accuracy: float | None
    wall_time: float
    config: dict[str, Any] = field(default_factory=dict)


def batch_gradient(model: Classifier, weights: Tensors, x: torch.Tensor, y: torch.Tensor
                   ) -> tuple[Tensors, float]:
    w = {k: v.detach().requires_grad_(True) for k, v in weights.items()}
    loss = F.cross_entropy(functional_call(model, w, (x,)), y)
    g = torch.autograd.grad(loss, list(w.values()))
    return dict(zip(w, g, strict=True)), float(loss.detach())


def evaluate(model: Classifier, weights: Tensors, data: Dataset, batch_size: int = 1000) -> float:
    """Accuracy of `model`'s architecture at `weights` on `data`."""
    dev = model.device
    correct = 0
    with torch.no_grad():
        for i in range(0, len(data), batch_size):
            xb, yb = data.x[i:i + batch_size].to(dev), data.y[i:i + batch_size].to(dev)
            correct += int((functional_call(model, weights, (xb,)).argmax(-1) == yb).sum())
    return correct / max(len(data), 1)


def _trainable(model: Classifier) -> Tensors:
    return {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}


def local_train(model: Classifier, start: Tensors, x: torch.Tensor, y: torch.Tensor,
                cfg: FedConfig, gen: torch.Generator, round: int, client: int,
                local_transform: LocalTransform | None, hooks: Sequence[FedHook]
                ) -> tuple[Tensors, int, float]:
    """Local SGD from `start` on (x, y). Returns (final weights, steps, mean loss)."""
    w = {k: v.clone() for k, v in start.items()}
    n = x.shape[0]
    steps, loss_sum = 0, 0.0
    bs = min(cfg.local_batch_size, n)
    for _ in range(cfg.local_epochs):
        order = torch.randperm(n, generator=gen).to(x.device)
        for i in range(0, n, bs):
            if cfg.local_steps is not None and steps >= cfg.local_steps:
                break
            idx = order[i:i + bs]
            xb, yb = x[idx], y[idx]
            tap = [h for h in hooks if h.wants_type2(round, client, steps)]
            per_ex = local_transform is not None and getattr(local_transform, "per_example", False)
            if tap or per_ex:
                pe = per_example_gradients(model, w, xb, yb)
                for j in range(xb.shape[0]) if tap else ():
                    gj = {k: v[j] for k, v in pe.items()}
                    if local_transform is not None:
                        gj = local_transform.apply(gj, gen)
                    ev = LeakageEvent(2, round, client, steps,
                                      SharedGradient(dict(w), gj, batch_size=1,
                                                     meta={"leakage_type": 2, "round": round,
                                                           "client": client, "step": steps}),
                                      xb[j:j + 1], yb[j:j + 1])
                    for h in tap:
                        h.on_type2(ev)
                if per_ex:
                    g = local_transform.aggregate(pe, gen)  # type: ignore[union-attr]
                else:
                    g = {k: v.mean(0) for k, v in pe.items()}
                with torch.no_grad():
                    loss_sum += float(F.cross_entropy(functional_call(model, w, (xb,)), yb))
            else:
                g, loss = batch_gradient(model, w, xb, yb)
                loss_sum += loss
                if local_transform is not None:
                    g = local_transform.apply(g, gen)
            w = {k: (v - cfg.local_lr * g[k]).detach() for k, v in w.items()}
            steps += 1
    return w, steps, loss_sum / max(steps, 1)


def local_train_vectorized(model: Classifier, start: Tensors, xs: torch.Tensor, ys: torch.Tensor,
                           cfg: FedConfig, gens: Sequence[torch.Generator]
                           ) -> tuple[Tensors, int, torch.Tensor]:
    """Local SGD for K clients at once: xs [K, n, ...], ys [K, n], one generator per client
    (the minibatch orders are those `local_train` draws). Returns the stacked final weights
    [K, ...], the number of steps and the mean loss per client. Every step is one batched
    forward/backward over the K clients' minibatches (torch.func.vmap over stacked weights)."""
    k = ys.shape[0]
    w = {name: v.unsqueeze(0).expand(k, *v.shape).clone() for name, v in start.items()}

    def loss_fn(wk: Tensors, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(model, wk, (xb,)), yb)

    step_fn = vmap(grad_and_value(loss_fn))
    with _native_grouped_conv(ys.device):
        return _lockstep_sgd(step_fn, w, xs, ys, cfg, gens)


@contextmanager
def _native_grouped_conv(device: torch.device) -> Iterator[None]:
    """vmap turns a convolution with per-client weights into one grouped convolution
    (groups = clients); on CPU, oneDNN runs that 1.3-1.5x slower than PyTorch's native
    kernel for the small convolutions of MNIST-size models, so oneDNN is off meanwhile."""
    if device.type != "cpu" or not torch.backends.mkldnn.enabled:
        yield
        return
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = True


def _lockstep_sgd(step_fn: Callable[..., tuple[Tensors, torch.Tensor]], w: Tensors,
                  xs: torch.Tensor, ys: torch.Tensor, cfg: FedConfig,
                  gens: Sequence[torch.Generator]) -> tuple[Tensors, int, torch.Tensor]:
    k, n = ys.shape
    bs = min(cfg.local_batch_size, n)
    steps = 0
    loss_sum = torch.zeros(k, device=ys.device)
    rows = torch.arange(k, device=ys.device)[:, None]
    for _ in range(cfg.local_epochs):
        order = torch.stack([torch.randperm(n, generator=g) for g in gens]).to(ys.device)
        for i in range(0, n, bs):
            if cfg.local_steps is not None and steps >= cfg.local_steps:
                break
            idx = order[:, i:i + bs]
            g, loss = step_fn(w, xs[rows, idx], ys[rows, idx])
            # in place: the stacked weights are this function's own copy, and a new K-fold
            # copy of every tensor per step would cost more than the step itself
            torch._foreach_add_(list(w.values()), [g[name] for name in w], alpha=-cfg.local_lr)
            loss_sum += loss.detach()
            steps += 1
    return w, steps, loss_sum / max(steps, 1)


LOCKSTEP_CPU_BYTES = 16 * 2**20
"""Default CPU budget for one lockstep group's stacked weights (see FedConfig.vectorize_group)."""


def lockstep_group(cfg: FedConfig, weights: Tensors, clients: int) -> int:
    """Clients per lockstep group: `cfg.vectorize_group`, or all of them on CUDA, or as many
    as fit `LOCKSTEP_CPU_BYTES` of stacked weights on CPU (at least one)."""
    if cfg.vectorize_group is not None:
        return min(cfg.vectorize_group, clients)
    first = next(iter(weights.values()))
    if first.device.type != "cpu":
        return clients
    size = sum(v.numel() * v.element_size() for v in weights.values())
    return max(1, min(clients, LOCKSTEP_CPU_BYTES // max(size, 1)))


def lockstep_updates(model: Classifier, weights: Tensors,
                     data: Sequence[tuple[torch.Tensor, torch.Tensor]], chosen: Sequence[int],
                     cfg: FedConfig, rnd: int,
                     update_transforms: Sequence[Callable[[ClientUpdate], ClientUpdate]] = ()
                     ) -> list[ClientUpdate]:
    """The round's client updates from `local_train_vectorized`, group by group (clients of
    equal data size); each client's delta is a view of its group's stacked delta."""
    group = lockstep_group(cfg, weights, len(chosen))
    updates: list[ClientUpdate] = []
    for s in range(0, len(chosen), group):
        part = chosen[s:s + group]
        xs = torch.stack([data[c][0] for c in part])
        ys = torch.stack([data[c][1] for c in part])
        gens = [client_generator(cfg.seed, rnd, c) for c in part]
        wk, steps, lk = local_train_vectorized(model, weights, xs, ys, cfg, gens)
        torch._foreach_sub_(list(wk.values()), [weights[k] for k in wk])
        losses = lk.tolist()
        for j, c in enumerate(part):
            upd = ClientUpdate(c, rnd, {k: v[j] for k, v in wk.items()}, int(xs.shape[1]),
                               cfg.local_lr, steps, {"loss": losses[j]})
            for tf in update_transforms:
                upd = tf(upd)
            updates.append(upd)
    return updates


LocalTrainer = Callable[..., tuple[Tensors, int, float]]
"""(model, start, x, y, cfg, gen, round, client, hooks) -> (weights, steps, mean loss): a
client's local training; the default is `local_train` with the run's `local_transform`
(Fed-CDP plugs in its DP-SGD local training here)."""


def client_update(model: Classifier, weights: Tensors, xc: torch.Tensor, yc: torch.Tensor,
                  cfg: FedConfig, rnd: int, client: int, trainer: LocalTrainer,
                  update_transforms: Sequence[Callable[[ClientUpdate], ClientUpdate]] = (),
                  hooks: Sequence[FedHook] = ()) -> ClientUpdate:
    """One client's round: local training from the global `weights` with the client's own
    generator, the update w_after - w_t and the update transforms, in order (what the
    client uploads). Both engines (in-process and Flower) run exactly this."""
    gen = client_generator(cfg.seed, rnd, client)
    w_after, steps, loss = trainer(model, weights, xc, yc, cfg, gen, rnd, client, hooks)
    upd = ClientUpdate(client, rnd, {k: w_after[k] - weights[k] for k in weights},
                       int(xc.shape[0]), cfg.local_lr, steps, {"loss": loss})
    for tf in update_transforms:
        upd = tf(upd)
    return upd


def type1_event(weights: Tensors, upd: ClientUpdate, xc: torch.Tensor, yc: torch.Tensor,
                cfg: FedConfig) -> LeakageEvent:
    """The type-1 leakage event of an uploaded client update."""
    one_batch = upd.local_steps == 1 and xc.shape[0] <= cfg.local_batch_size
    return LeakageEvent(1, upd.round, upd.client, None, WeightUpdate(
        dict(weights), {k: weights[k] + upd.delta[k] for k in weights}, cfg.local_lr,
        upd.local_steps, batch_size=int(xc.shape[0]) if one_batch else None,
        meta={"leakage_type": 1, "round": upd.round, "client": upd.client,
              "num_examples": int(xc.shape[0])}), xc, yc)


def server_update(weights: Tensors, updates: Sequence[ClientUpdate], aggregator: Aggregator,
                  data: Sequence[tuple[torch.Tensor, torch.Tensor]], cfg: FedConfig, rnd: int,
                  hooks: Sequence[FedHook] = ()) -> Tensors:
    """w_{t+1} = w_t + aggregator(updates), with the type-0 tap on the new global model."""
    if not updates:
        raise ConfigError(f"round {rnd}: no sampled client holds data")
    delta = aggregator(updates)
    new = {k: weights[k] + delta[k].to(weights[k].dtype) for k in weights}
    if hooks:
        mean_steps = max(1, round(sum(u.local_steps for u in updates) / len(updates)))
        xs = torch.cat([data[u.client][0] for u in updates])
        ys = torch.cat([data[u.client][1] for u in updates])
        ev = LeakageEvent(0, rnd, None, None, WeightUpdate(
            dict(weights), new, cfg.local_lr, mean_steps,
            meta={"leakage_type": 0, "round": rnd, "clients": [u.client for u in updates],
                  "num_examples": int(xs.shape[0])}), xs, ys)
        for h in hooks:
            h.on_type0(ev)
    return new


def client_data(model: Classifier, train: Dataset, cfg: FedConfig,
                client_indices: list[Any] | None = None
                ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Validate the run and split `train` over the clients (seeded `partition` unless
    explicit `client_indices`), on the model's device."""
    cfg.validate(len(train))
    if tuple(train.input_shape) != model.spec.shape:
        raise ConfigError(f"data shape {train.input_shape} does not match the model's {model.spec.shape}")
    dev = model.device
    splits = client_indices if client_indices is not None else partition(
        train.y, cfg.num_clients, cfg.partition, cfg.alpha, cfg.seed)
    if len(splits) != cfg.num_clients:
        raise ConfigError(f"{len(splits)} client splits for num_clients={cfg.num_clients}")
    x_all, y_all = train.x.to(dev), train.y.to(dev)
    return [(x_all[torch.as_tensor(s, dtype=torch.long, device=dev)],
             y_all[torch.as_tensor(s, dtype=torch.long, device=dev)]) for s in splits]


def default_trainer(local_transform: LocalTransform | None) -> LocalTrainer:
    """`local_train` with a fixed local gradient transform, as a LocalTrainer."""
    def trainer(model: Classifier, start: Tensors, x: torch.Tensor, y: torch.Tensor,
                cfg: FedConfig, gen: torch.Generator, rnd: int, client: int,
                hooks: Sequence[FedHook]) -> tuple[Tensors, int, float]:
        return local_train(model, start, x, y, cfg, gen, rnd, client, local_transform, hooks)
    return trainer


def final_model(model: Classifier, weights: Tensors) -> Classifier:
    """A copy of `model` holding `weights`."""
    final = copy.deepcopy(model)
    with torch.no_grad():
        for k, p in final.named_parameters():
            if k in weights:
                p.copy_(weights[k])
    return final


def run_fedavg(model: Classifier, train: Dataset, test: Dataset | None = None,
               config: FedConfig | None = None, *, aggregator: Aggregator = fedavg,
               update_transforms: Sequence[Callable[[ClientUpdate], ClientUpdate]] = (),
               local_transform: LocalTransform | None = None,
               hooks: Sequence[FedHook] = (), client_indices: list[Any] | None = None,
               client_data_transform: Callable[[int, int, torch.Tensor, torch.Tensor],
                                               tuple[torch.Tensor, torch.Tensor]] | None = None,
               local_trainer: LocalTrainer | None = None,
               start_round: int = 0,
               ) -> FedResult:
    """Simulate FedAvg starting from `model`'s weights (the model itself is not changed).

    Args:
        model: architecture and initial global weights.
        train, test: training data split over the clients; test data for accuracy.
        config: `FedConfig`.
        aggregator: server rule (default FedAvg).
        update_transforms: applied to each client's update before upload, in order.
        local_transform: gradient transform at every local SGD step (e.g. a defense).
        hooks: `FedHook`s receiving the type-2/1/0 leakage events and per-round records.
        client_indices: explicit client splits (list of index arrays) instead of `partition`.
        client_data_transform: (round, client, x, y) -> (x, y) applied to each sampled
            client's local data every round (e.g. data poisoning on malicious clients).
        local_trainer: replaces local SGD (e.g. Fed-CDP's DP-SGD); excludes local_transform.
        start_round: resume a run at this round: `model` holds the global weights after
            rounds 0..start_round-1 and the server's client sampling is advanced past them,
            so rounds start_round..rounds-1 are those of the uninterrupted run (a clean
            prefix can be shared by runs that differ only from start_round on).
    """
    cfg = config or FedConfig()
    if local_trainer is not None and local_transform is not None:
        raise ConfigError("give local_trainer or local_transform, not both")
    if not 0 <= start_round < cfg.rounds:
        raise ConfigError(f"start_round must be in [0, rounds - 1 = {cfg.rounds - 1}], got {start_round}")
    data = client_data(model, train, cfg, client_indices)
    trainer = local_trainer or default_trainer(local_transform)
    start_time = time.perf_counter()
    gen = torch.Generator().manual_seed(cfg.seed)
    for _ in range(start_round):
        sample_clients(gen, cfg.num_clients, cfg.clients_per_round)
    weights = _trainable(model)
    history: list[dict[str, Any]] = []
    acc = None
    clean = data
    with task("fedavg", cfg.rounds - start_round, cfg.progress) as bar:
        for rnd in range(start_round, cfg.rounds):
            chosen = sample_clients(gen, cfg.num_clients, cfg.clients_per_round)
            if client_data_transform is not None:
                data = [client_data_transform(rnd, c, *clean[c]) if c in chosen else clean[c]
                        for c in range(len(clean))]
            updates: list[ClientUpdate] = []
            sizes = {int(data[c][0].shape[0]) for c in chosen}
            batched = (cfg.vectorize and not hooks and local_transform is None
                       and local_trainer is None and len(sizes) == 1
                       and len(chosen) > 1 and 0 not in sizes)
            if batched:
                updates = lockstep_updates(model, weights, data, chosen, cfg, rnd, update_transforms)
            for c in [] if batched else chosen:
                xc, yc = data[c]
                if xc.shape[0] == 0:
                    continue
                upd = client_update(model, weights, xc, yc, cfg, rnd, c, trainer,
                                    update_transforms, hooks)
                updates.append(upd)
                if hooks:
                    ev = type1_event(weights, upd, xc, yc, cfg)
                    for h in hooks:
                        h.on_type1(ev)
            weights = server_update(weights, updates, aggregator, data, cfg, rnd, hooks)
            losses = [float(u.meta.get("loss", 0.0)) for u in updates]
            record: dict[str, Any] = {"round": rnd, "clients": [u.client for u in updates],
                                      "local_loss": sum(losses) / len(losses)}
            if test is not None and ((rnd + 1) % cfg.eval_every == 0 or rnd == cfg.rounds - 1):
                acc = evaluate(model, weights, test)
                record["test_accuracy"] = acc
            history.append(record)
            for h in hooks:
                h.on_round_end(rnd, record)
            bar.advance(1, info=f"acc {acc:.3f}" if acc is not None else None)
    return FedResult(history, final_model(model, weights), weights, acc,
                     time.perf_counter() - start_time, asdict(cfg))
