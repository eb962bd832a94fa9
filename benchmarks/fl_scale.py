"""Federated scale: rounds per second for 100 and 1,000 clients (10% sampled per round) on
the MNIST MLP, four ways, and vectorised against one-client-at-a-time local training.

    .venv/bin/python benchmarks/fl_scale.py [--rounds 3] [--cpus 2] [--only local,flower,plain,vec]

- ``bastion-local-loop``: `run_fedavg`, clients trained one at a time.
- ``bastion-local-vectorized``: `run_fedavg(vectorize=True)`, the sampled clients trained
  in lockstep (torch.func.vmap over their stacked weights).
- ``bastion-flower``: `run_flower`, the same study on Flower's simulation engine (Ray
  backend, `--cpus` CPUs, one CPU per ClientApp actor).
- ``plain-flower-fedavg``: a textbook Flower app of the same model and data written with
  Flower's own API only (a ClientApp running a torch SGD loop, Flower's FedAvg strategy).

Study: mnist-5k (5,000 images) split IID over N clients, K = N / 10 sampled, one local epoch
at batch 10, lr 0.05. Rounds/s is measured between the end of round 1 and the end of the
last round (start-up -- Ray, actor creation, node discovery -- is reported separately as
`startup_s`). The in-process runs use `--local-threads` intra-op threads (default 1), each
Flower ClientApp actor one thread. A second table: 100 clients all sampled, loop versus vectorised, MLP and
LeNet. Writes benchmarks/results/fl_scale.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bastion.core import InputSpec
from bastion.data import load
from bastion.federated import FedConfig, run_fedavg
from bastion.models import build_classifier

OUT = Path(__file__).resolve().parent / "results" / "fl_scale.json"
_PLAIN: dict[str, Any] = {}


def model(arch: str = "mlp") -> Any:
    torch.manual_seed(0)
    return build_classifier(arch, InputSpec((1, 28, 28)), 10, {}, device="cpu")


def rate(ends: list[float], start: float) -> dict[str, float]:
    steady = (len(ends) - 1) / (ends[-1] - ends[0]) if len(ends) > 1 else float("nan")
    first = ends[0] - start - (1 / steady if len(ends) > 1 else 0.0)
    return {"rounds_per_s": steady, "startup_s": max(first, 0.0),
            "total_s": ends[-1] - start, "rounds": len(ends)}


def fed_config(n: int, rounds: int, vectorize: bool = False) -> FedConfig:
    return FedConfig(num_clients=n, clients_per_round=max(1, n // 10), rounds=rounds,
                     local_batch_size=10, local_lr=0.05, vectorize=vectorize, progress=False)


def local(n: int, rounds: int, vectorize: bool, train: Any) -> dict[str, float]:
    """In-process rounds/s from the total wall time (no hooks: a hook would add the leakage
    events' bookkeeping to every round and turn vectorisation off), after a one-round warm-up."""
    run_fedavg(model(), train, None, fed_config(n, 1, vectorize))   # warm-up (first vmap call)
    t = time.perf_counter()
    run_fedavg(model(), train, None, fed_config(n, rounds, vectorize))
    total = time.perf_counter() - t
    return {"rounds_per_s": rounds / total, "startup_s": 0.0, "total_s": total, "rounds": rounds}


def bastion_flower(n: int, rounds: int, cpus: int, train: Any) -> dict[str, float]:
    from bastion.federated import flower_app
    from bastion.federated.flower import run_flower

    ends: list[float] = []
    orig = flower_app.BastionStrategy.aggregate_train

    def timed(self: Any, server_round: int, replies: Any) -> Any:
        out = orig(self, server_round, replies)
        ends.append(time.perf_counter())
        return out
    flower_app.BastionStrategy.aggregate_train = timed  # type: ignore[method-assign]
    try:
        t = time.perf_counter()
        run_flower(model(), train, None, fed_config(n, rounds), num_cpus=cpus)
    finally:
        flower_app.BastionStrategy.aggregate_train = orig  # type: ignore[method-assign]
    return rate(ends, t)


def plain_flower(n: int, rounds: int, cpus: int, train: Any) -> dict[str, float]:
    """A Flower FedAvg app written with Flower's API only (no Bastion code in the loop)."""
    import ray
    from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    logging.getLogger("flwr").setLevel(logging.WARNING)
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False,
             logging_level=logging.ERROR)
    net = model()
    per = len(train) // n
    ref = ray.put((train.x[: per * n].reshape(n, per, *train.x.shape[1:]),
                   train.y[: per * n].reshape(n, per), net))
    client = ClientApp()

    @client.train()
    def train_fn(msg: Message, context: Any) -> Message:
        if "data" not in _PLAIN:
            torch.set_num_threads(1)
            _PLAIN["data"] = ray.get(ref)
        xs, ys, m = _PLAIN["data"]
        pid = int(context.node_config["partition-id"])
        m.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        opt = torch.optim.SGD(m.parameters(), lr=0.05)
        x, y = xs[pid], ys[pid]
        order = torch.randperm(len(y))
        for i in range(0, len(y), 10):
            idx = order[i:i + 10]
            opt.zero_grad()
            F.cross_entropy(m(x[idx]), y[idx]).backward()
            opt.step()
        return Message(RecordDict({"arrays": ArrayRecord(m.state_dict()),
                                   "metrics": MetricRecord({"num-examples": len(y)})}),
                       reply_to=msg)

    ends: list[float] = []
    server = ServerApp()

    @server.main()
    def main(grid: Any, context: Any) -> None:
        strategy = FedAvg(fraction_train=0.1, fraction_evaluate=0.0, min_available_nodes=n,
                          min_train_nodes=max(1, n // 10))

        def tick(rnd: int, arrays: Any) -> None:
            if rnd > 0:
                ends.append(time.perf_counter())
        strategy.start(grid, ArrayRecord(net.state_dict()), num_rounds=rounds, evaluate_fn=tick)

    t = time.perf_counter()
    try:
        run_simulation(server_app=server, client_app=client, num_supernodes=n,
                       backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})
    finally:
        ray.shutdown()
        _PLAIN.clear()
    return rate(ends, t)


class _LocalClock:
    """Accumulates the wall time spent in local training (one client at a time or one
    lockstep group) by wrapping the two trainers of `bastion.federated.simulation`."""

    def __init__(self) -> None:
        from bastion.federated import simulation
        self.sim, self.seconds = simulation, 0.0
        self.real = (simulation.local_train, simulation.local_train_vectorized)

    def _timed(self, fn: Any) -> Any:
        def run(*a: Any, **k: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.seconds += time.perf_counter() - t
        return run

    def __enter__(self) -> _LocalClock:
        self.sim.local_train = self._timed(self.real[0])
        self.sim.local_train_vectorized = self._timed(self.real[1])
        return self

    def __exit__(self, *exc: Any) -> None:
        self.sim.local_train, self.sim.local_train_vectorized = self.real


MODES = {"loop": (False, None), "vectorized": (True, None), "vectorized-one-group": (True, 100)}


def vectorised_vs_loop(train: Any, rounds: int, repeats: int = 3) -> list[dict[str, Any]]:
    """100 clients all sampled, one at a time against lockstep (the default CPU groups, and
    all 100 in one group); the best of `repeats` runs of each, whole rounds and local
    training alone."""
    rows = []
    for arch in ("mlp", "lenet"):
        for vec in (False, True):   # warm-up: the first vmap / autograd calls of each model
            run_fedavg(model(arch), train, None, FedConfig(
                num_clients=100, clients_per_round=4, rounds=1, local_steps=1,
                local_batch_size=10, vectorize=vec, progress=False))
        total: dict[str, float] = {}
        local_s: dict[str, float] = {}
        weights = {}
        for _ in range(repeats):
            for mode, (vec, group) in MODES.items():
                cfg = FedConfig(num_clients=100, clients_per_round=100, rounds=rounds,
                                local_batch_size=10, local_lr=0.05, vectorize=vec,
                                vectorize_group=group, progress=False)
                with _LocalClock() as clock:
                    t = time.perf_counter()
                    res = run_fedavg(model(arch), train, None, cfg)
                    dt = time.perf_counter() - t
                total[mode] = min(total.get(mode, float("inf")), dt)
                local_s[mode] = min(local_s.get(mode, float("inf")), clock.seconds)
                weights[mode] = res.weights
        diff = max(float((weights["vectorized"][k] - weights["loop"][k]).abs().max())
                   for k in weights["loop"])
        rows.append({"model": arch, "clients": 100, "sampled": 100, "rounds": rounds,
                     "threads": torch.get_num_threads(), "repeats": repeats,
                     "total_s": total, "local_training_s": local_s,
                     "speedup_total": total["loop"] / total["vectorized"],
                     "speedup_local_training": local_s["loop"] / local_s["vectorized"],
                     "speedup_local_training_one_group":
                         local_s["loop"] / local_s["vectorized-one-group"],
                     "max_abs_weight_diff": diff})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--clients", default="100,1000")
    ap.add_argument("--only", default="local,vec,flower,plain")
    ap.add_argument("--local-threads", type=int, default=1, help="intra-op threads of the "
                    "in-process runs (1: on a shared 2-core machine two threads oversubscribe "
                    "and small steps slow down many-fold)")
    args = ap.parse_args()
    torch.set_num_threads(args.local_threads)
    only = set(args.only.split(","))
    train = load("mnist-5k", "train")
    out: dict[str, Any] = json.loads(OUT.read_text()) if OUT.exists() else {}
    out.setdefault("rounds_per_s", {})
    for n in [int(c) for c in args.clients.split(",")]:
        row = out["rounds_per_s"].setdefault(str(n), {"clients": n, "sampled": max(1, n // 10)})
        if "local" in only:
            row["bastion-local-loop"] = local(n, args.rounds, False, train)
            row["bastion-local-vectorized"] = local(n, args.rounds, True, train)
        if "flower" in only:
            row["bastion-flower"] = bastion_flower(n, args.rounds, args.cpus, train)
        if "plain" in only:
            row["plain-flower-fedavg"] = plain_flower(n, args.rounds, args.cpus, train)
        print(n, json.dumps(row, indent=1), flush=True)
        out["env"] = {"torch": torch.__version__, "python": platform.python_version(),
                      "cpus": args.cpus, "local_threads": args.local_threads, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
        out["command"] = f"python benchmarks/fl_scale.py --rounds {args.rounds} --cpus {args.cpus}"
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text(json.dumps(out, indent=2))
    if "vec" in only:
        out.pop("vectorized_vs_loop", None)
        out[f"vectorized_vs_loop_threads{args.local_threads}"] = vectorised_vs_loop(train, 2)
        out[f"vectorized_vs_loop_threads{args.local_threads}_env"] = {
            "torch": torch.__version__, "load_average_1min": os.getloadavg()[0],
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
        OUT.write_text(json.dumps(out, indent=2))
    print(OUT)


if __name__ == "__main__":
    main()
