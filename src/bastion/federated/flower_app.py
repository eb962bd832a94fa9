"""Flower ClientApp / ServerApp / Strategy adapters (imported by `bastion.federated.flower`
after the flwr version check; see that module for the design)."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy

from bastion.attacks.privacy.leakage.payload import SharedGradient
from bastion.core import Classifier, ConfigError
from bastion.data.dataset import Dataset
from bastion.federated.aggregators import Aggregator, ClientUpdate
from bastion.federated.simulation import (
    FedConfig,
    FedHook,
    FedResult,
    LeakageEvent,
    LocalTrainer,
    LocalTransform,
    _trainable,
    client_data,
    client_update,
    default_trainer,
    evaluate,
    final_model,
    sample_clients,
    server_update,
    type1_event,
)

Tensors = dict[str, torch.Tensor]
_STUDIES: dict[str, ClientStudy] = {}


@dataclass
class ClientStudy:
    """What every ClientApp needs: the architecture, the client splits and the local
    procedure. Shipped once to each worker process (Ray object store), not per message."""

    model: Classifier
    data: list[tuple[torch.Tensor, torch.Tensor]]
    cfg: FedConfig
    trainer: LocalTrainer
    update_transforms: Sequence[Callable[[ClientUpdate], ClientUpdate]]
    threads: int = 1


def _study(key: str, ref: Any) -> ClientStudy:
    study = _STUDIES.get(key)
    if study is None:
        import ray
        study = ray.get(ref)
        _STUDIES[key] = study
        torch.set_num_threads(study.threads)
        if hasattr(study.trainer, "account_here"):
            study.trainer.account_here = False   # the server accounts from the reply
    return study


class _Type2Recorder(FedHook):
    """Inside a client: records the type-2 events of the steps the server asked for."""

    def __init__(self, steps: Sequence[int]) -> None:
        self.steps = set(steps)
        self.events: list[LeakageEvent] = []

    def wants_type2(self, round: int, client: int, step: int) -> bool:
        return step in self.steps

    def on_type2(self, event: LeakageEvent) -> None:
        self.events.append(event)


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, torch.Tensor):
        return v.tolist()
    if isinstance(v, (int, float, str, bool)) or v is None:
        return v
    return repr(v)


def _pack_type2(events: list[LeakageEvent]) -> tuple[ArrayRecord, list[dict[str, Any]]]:
    arrays: dict[str, torch.Tensor] = {}
    meta = []
    for i, ev in enumerate(events):
        p = ev.payload
        assert isinstance(p, SharedGradient)
        for k in p.weights:
            arrays[f"{i}/w/{k}"] = p.weights[k].detach().cpu()
            arrays[f"{i}/g/{k}"] = p.gradients[k].detach().cpu()
        arrays[f"{i}/x"] = ev.victim_x.detach().cpu()
        arrays[f"{i}/y"] = ev.victim_y.detach().cpu()
        meta.append({"step": ev.step, "batch_size": p.batch_size, "meta": _jsonable(p.meta),
                     "names": list(p.weights)})
    return ArrayRecord(arrays), meta


def _unpack_type2(rec: ArrayRecord, meta: list[dict[str, Any]], rnd: int, client: int
                  ) -> list[LeakageEvent]:
    t = rec.to_torch_state_dict()
    out = []
    for i, m in enumerate(meta):
        w = {k: t[f"{i}/w/{k}"] for k in m["names"]}
        g = {k: t[f"{i}/g/{k}"] for k in m["names"]}
        out.append(LeakageEvent(2, rnd, client, m["step"],
                                SharedGradient(w, g, batch_size=m["batch_size"], meta=m["meta"]),
                                t[f"{i}/x"], t[f"{i}/y"].long()))
    return out


def make_client_app(key: str, ref: Any) -> ClientApp:
    """The ClientApp: `train` runs `client_update` for the node's partition; `query`
    reports the partition id (so the server can address client k)."""
    app = ClientApp()

    @app.query()
    def query(msg: Message, context: Any) -> Message:
        pid = int(context.node_config["partition-id"])
        return Message(RecordDict({"info": ConfigRecord({"partition-id": pid})}), reply_to=msg)

    @app.train()
    def train(msg: Message, context: Any) -> Message:
        study = _study(key, ref)
        c = int(context.node_config["partition-id"])
        conf = msg.content["config"]
        rnd = int(conf["round"])
        wanted = json.loads(str(conf["type2"]))
        dev = study.model.device
        weights = {k: v.to(dev) for k, v in msg.content["arrays"].to_torch_state_dict().items()}
        xc, yc = study.data[c]
        rec = _Type2Recorder(wanted) if wanted else None
        upd = client_update(study.model, weights, xc, yc, study.cfg, rnd, c, study.trainer,
                            study.update_transforms, [rec] if rec else [])
        info: dict[str, Any] = {"client": c, "round": rnd, "local_steps": upd.local_steps,
                                "lr": upd.lr, "meta": _jsonable(upd.meta)}
        last = getattr(study.trainer, "last", None)
        if last:
            info["dp"] = _jsonable(last)
        content = RecordDict({
            "arrays": ArrayRecord({k: v.detach().cpu() for k, v in upd.delta.items()}),
            "metrics": MetricRecord({"num-examples": upd.num_examples,
                                     "loss": float(upd.meta.get("loss", 0.0))}),
        })
        if rec is not None and rec.events:
            arr, meta = _pack_type2(rec.events)
            content["type2"] = arr
            info["type2"] = meta
        content["info"] = ConfigRecord({"json": json.dumps(info)})
        return Message(content, reply_to=msg)

    return app


class BastionStrategy(Strategy):
    """A Flower Strategy around Bastion's server side: the seeded client sampling of
    `run_fedavg`, any `Aggregator` (fedavg, median, trimmed mean, the robust rules, Fed-SDP's
    noisy aggregation), the type-1 and type-0 taps, Fed-CDP accounting from the clients'
    reports and central evaluation.

    Args:
        model: architecture (for evaluation). weights: initial global weights.
        data: the client splits (victim examples for the leakage events; sizes).
        cfg: FedConfig. aggregator: server rule. hooks: FedHooks.
        accountant: an object with `account(client, round, schedule, trace)` (Fed-CDP).
        test: test set for central evaluation.
    """

    def __init__(self, model: Classifier, weights: Tensors,
                 data: Sequence[tuple[torch.Tensor, torch.Tensor]], cfg: FedConfig,
                 aggregator: Aggregator, hooks: Sequence[FedHook] = (),
                 accountant: Any = None, test: Dataset | None = None) -> None:
        self.model, self.weights, self.data, self.cfg = model, weights, data, cfg
        self.aggregator, self.hooks, self.accountant, self.test = aggregator, hooks, accountant, test
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.node_of: dict[int, int] | None = None
        self.history: list[dict[str, Any]] = []
        self.acc: float | None = None

    # -- Flower's Strategy interface --------------------------------------------
    def summary(self) -> None:
        return None

    def _discover(self, grid: Grid) -> dict[int, int]:
        deadline = time.monotonic() + 600
        while len(nodes := list(grid.get_node_ids())) < self.cfg.num_clients:
            if time.monotonic() > deadline:
                raise ConfigError(f"only {len(nodes)} of {self.cfg.num_clients} Flower nodes "
                                  "connected within 600 s")
            time.sleep(0.2)
        msgs = [Message(RecordDict({"info": ConfigRecord({})}), dst_node_id=n,
                        message_type=MessageType.QUERY) for n in nodes]
        out = {}
        for r in grid.send_and_receive(msgs, timeout=600):
            if r.has_error():
                raise ConfigError(f"Flower node {r.metadata.src_node_id} failed: {r.error.reason}")
            out[int(r.content["info"]["partition-id"])] = r.metadata.src_node_id
        if len(out) != self.cfg.num_clients:
            raise ConfigError(f"{len(out)} Flower nodes answered, expected {self.cfg.num_clients}")
        return out

    def _max_steps(self, c: int) -> int:
        n = int(self.data[c][0].shape[0])
        bs = min(self.cfg.local_batch_size, max(n, 1))
        steps = self.cfg.local_epochs * -(-n // bs)
        trainer_steps = getattr(self.accountant, "steps_per_round", None)
        if trainer_steps is not None:
            steps = max(steps, trainer_steps(n))
        return min(steps, self.cfg.local_steps) if self.cfg.local_steps is not None else steps

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        if self.node_of is None:
            self.node_of = self._discover(grid)
        rnd = server_round - 1
        chosen = sample_clients(self.gen, self.cfg.num_clients, self.cfg.clients_per_round)
        msgs = []
        for c in chosen:
            if self.data[c][0].shape[0] == 0:
                continue
            wanted = [s for s in range(self._max_steps(c))
                      if any(h.wants_type2(rnd, c, s) for h in self.hooks)] if self.hooks else []
            rec = RecordDict({"arrays": arrays,
                              "config": ConfigRecord({"round": rnd, "type2": json.dumps(wanted)})})
            msgs.append(Message(rec, dst_node_id=self.node_of[c], message_type=MessageType.TRAIN))
        return msgs

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        rnd = server_round - 1
        got = []
        for r in replies:
            if r.has_error():
                raise ConfigError(f"Flower client on node {r.metadata.src_node_id} failed in round "
                                  f"{rnd}: {r.error.reason}")
            info = json.loads(str(r.content["info"]["json"]))
            got.append((info["client"], info, r.content))
        got.sort(key=lambda t: t[0])
        dev = self.model.device
        updates = []
        for c, info, content in got:
            delta = {k: v.to(dev) for k, v in content["arrays"].to_torch_state_dict().items()}
            n = int(content["metrics"]["num-examples"])
            upd = ClientUpdate(c, rnd, delta, n, float(info["lr"]), int(info["local_steps"]),
                               dict(info["meta"]))
            if self.accountant is not None and "dp" in info:
                d = info["dp"]
                self.accountant.account(c, rnd, d["schedule"], d.get("trace", ()))
            if self.hooks:
                if "type2" in info:
                    for ev in _unpack_type2(content["type2"], info["type2"], rnd, c):
                        for h in self.hooks:
                            h.on_type2(ev)
                xc, yc = self.data[c]
                ev1 = type1_event(self.weights, upd, xc, yc, self.cfg)
                for h in self.hooks:
                    h.on_type1(ev1)
            updates.append(upd)
        self.weights = server_update(self.weights, updates, self.aggregator, self.data, self.cfg,
                                     rnd, self.hooks)
        losses = [float(u.meta.get("loss", 0.0)) for u in updates]
        record: dict[str, Any] = {"round": rnd, "clients": [u.client for u in updates],
                                  "local_loss": sum(losses) / len(losses)}
        if self.test is not None and ((rnd + 1) % self.cfg.eval_every == 0
                                      or rnd == self.cfg.rounds - 1):
            self.acc = evaluate(self.model, self.weights, self.test)
            record["test_accuracy"] = self.acc
        self.history.append(record)
        for h in self.hooks:
            h.on_round_end(rnd, record)
        return (ArrayRecord({k: v.detach().cpu() for k, v in self.weights.items()}),
                MetricRecord({"local_loss": record["local_loss"]}))

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return []

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        return None


@dataclass
class _Outcome:
    error: BaseException | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def run_study(model: Classifier, train: Dataset, test: Dataset | None, cfg: FedConfig, *,
              aggregator: Aggregator, update_transforms: Sequence[Callable[[ClientUpdate], ClientUpdate]],
              local_transform: LocalTransform | None, hooks: Sequence[FedHook],
              client_indices: list[Any] | None, local_trainer: Any, num_cpus: int | None,
              client_cpus: float, verbose: bool, flwr_version: str) -> FedResult:
    """See `bastion.federated.flower.run_flower`."""
    import ray
    from flwr.simulation import run_simulation

    if local_trainer is not None and local_transform is not None:
        raise ConfigError("give local_trainer or local_transform, not both")
    data = client_data(model, train, cfg, client_indices)
    trainer = local_trainer or default_trainer(local_transform)
    start = time.perf_counter()
    weights = _trainable(model)
    if not verbose:   # Flower's INFO lines and its run_simulation deprecation notice
        for name in ("flwr", "ray"):
            logging.getLogger(name).setLevel(logging.ERROR)
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=verbose,
                 logging_level=logging.INFO if verbose else logging.ERROR)
    key = uuid.uuid4().hex
    study = ClientStudy(model, [(x.cpu(), y.cpu()) for x, y in data], cfg, trainer,
                        list(update_transforms))
    ref = ray.put(study)
    accountant = local_trainer if hasattr(local_trainer, "account") else None
    strategy = BastionStrategy(model, weights, data, cfg, aggregator, hooks, accountant, test)
    outcome = _Outcome()
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Any) -> None:
        try:
            strategy.start(grid, ArrayRecord({k: v.detach().cpu() for k, v in weights.items()}),
                           num_rounds=cfg.rounds, timeout=3600)
        except BaseException as e:  # surfaced after the simulation stops
            outcome.error = e

    try:
        run_simulation(server_app=server, client_app=make_client_app(key, ref),
                       num_supernodes=cfg.num_clients,
                       backend_config={"client_resources": {"num_cpus": client_cpus,
                                                            "num_gpus": 0.0}},
                       verbose_logging=verbose)
    finally:
        if started_ray:
            ray.shutdown()
    if outcome.error is not None:
        if isinstance(outcome.error, ConfigError):
            raise outcome.error
        raise ConfigError(f"the Flower simulation failed: {outcome.error}") from outcome.error
    if len(strategy.history) != cfg.rounds:
        raise ConfigError(f"the Flower simulation stopped after {len(strategy.history)} of "
                          f"{cfg.rounds} rounds")
    conf = {**asdict(cfg), "engine": "flower", "flwr": flwr_version}
    return FedResult(strategy.history, final_model(model, strategy.weights), strategy.weights,
                     strategy.acc, time.perf_counter() - start, conf)


__all__ = ["BastionStrategy", "ClientStudy", "make_client_app", "run_study"]
