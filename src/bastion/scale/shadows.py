"""Shadow-model training and scoring for membership inference as Ray tasks.

LiRA (Carlini et al. 2022) and RMIA (Zarifzadeh et al. 2024) calibrate on tens to hundreds
of shadow models; each model trains on its own seeded half of the pool, so the models are
independent and parallelise across machines. `train_ray` is the 'ray' path of
`bastion.training.shadow.train_shadows`: the models still missing from the cache are cut
into groups, one Ray task per group trains its models on one CPU (stacked with
`torch.func.vmap`, or one by one for BatchNorm models and a user's `train_fn`) and returns
their weights; the driver writes each model into the same cache the local paths use
(`model-00042.safetensors`, written atomically as each group arrives). Model i's
initialisation, data half and minibatch order depend on (seed, i) only, so a cache can be
filled partly locally and partly by Ray, and resumed by either.

`compute_signals_ray` scores the shadow models the same way: one task per group of models
queries them on the pool and the per-group signal matrices are concatenated in model order.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import torch

from bastion.core import Classifier, InputSpec
from bastion.scale.engine import cluster_cpus, connect, get, import_ray

# per-node task counts and per-task seconds of the last `train_ray` / `compute_signals_ray`
# call (benchmarks: Ray's overhead is the wall time beyond the tasks' own work)
_PLACEMENT: dict[str, Counter[str]] = {"train": Counter(), "score": Counter()}
_TASK_SECONDS: dict[str, list[float]] = {"train": [], "score": []}


def last_placement(kind: str = "train") -> dict[str, int]:
    """Tasks per Ray node id of the last training ('train') or scoring ('score') call."""
    return dict(_PLACEMENT[kind])


def last_task_seconds(kind: str = "train") -> list[float]:
    """Seconds each task of the last training ('train') or scoring ('score') call spent
    inside its own work (excluding scheduling and transfers)."""
    return list(_TASK_SECONDS[kind])


def _node_id() -> str:
    import ray

    return str(ray.get_runtime_context().get_node_id())


def _train_group_task(x: torch.Tensor, y: torch.Tensor, cfg: Any, spec: InputSpec, num_classes: int,
                      ids: list[int], stacked: bool, threads: int) -> tuple[str, float, list[tuple[int, dict, list]]]:
    """One Ray task: train shadow models `ids` on CPU; return (node id, seconds,
    [(i, weights, losses)])."""
    from bastion.training import shadow as sh

    t0 = time.perf_counter()
    torch.set_num_threads(threads)
    n, dev = int(x.shape[0]), torch.device("cpu")
    models = [sh._build(cfg, spec, num_classes, i, dev) for i in ids]
    idxs = [sh.model_indices(n, i, cfg.seed) for i in ids]
    if stacked and len(ids) > 1:
        losses = sh._train_group(models, x, y, idxs, ids, cfg)
    elif cfg.train_fn is not None:
        pairs = [sh._train_user(m, x, y, ix, i, cfg) for m, ix, i in zip(models, idxs, ids, strict=True)]
        models, losses = [p[0] for p in pairs], [p[1] for p in pairs]
    else:
        losses = [sh._train_one(m, x, y, ix, i, cfg) for m, ix, i in zip(models, idxs, ids, strict=True)]
    out = [(i, {k: v.detach().contiguous().numpy() for k, v in m.module.state_dict().items()}, ls)
           for i, m, ls in zip(ids, models, losses, strict=True)]
    return _node_id(), time.perf_counter() - t0, out


def group_sizes(todo: int, cpus: int, group_size: int) -> int:
    """Models per task: at most `group_size`, and small enough that every CPU of the
    cluster gets about two tasks (load balance, and finished groups reach the cache early)."""
    return max(1, min(group_size, -(-todo // (2 * max(cpus, 1)))))


def train_ray(todo: Sequence[int], x: torch.Tensor, y: torch.Tensor, cfg: Any, spec: InputSpec,
              num_classes: int, vmappable: bool,
              finish: Callable[[int, Classifier, list[float]], None]) -> None:
    """Train models `todo` as Ray tasks (connecting to a local cluster when this process is
    not connected yet). `finish(i, classifier, losses)` runs here as each group arrives
    (cache write, progress), so an interrupted run keeps every finished group."""
    from bastion.training import shadow as sh

    ray = import_ray()
    connect()
    if not todo:
        return
    per = group_sizes(len(todo), cluster_cpus(), cfg.group_size)
    stacked = vmappable and cfg.train_fn is None
    remote = ray.remote(num_cpus=1)(_train_group_task)
    xr, yr = ray.put(x.detach().cpu().contiguous()), ray.put(y.detach().cpu().long().contiguous())
    pending = [remote.remote(xr, yr, cfg, spec, num_classes, list(todo[s:s + per]), stacked, 1)
               for s in range(0, len(todo), per)]
    _PLACEMENT["train"], _TASK_SECONDS["train"] = Counter(), []
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            node, secs, results = get(done[0])
            _PLACEMENT["train"][node] += 1
            _TASK_SECONDS["train"].append(secs)
            for i, sd, ls in results:
                clf = sh._build(cfg, spec, num_classes, i, torch.device("cpu"))
                # Ray hands back read-only arrays: copy them into writable tensors
                clf.module.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in sd.items()}, strict=True)
                finish(i, clf.eval(), ls)
    finally:
        for ref in pending:
            ray.cancel(ref)


def _score_group_task(models: list[Classifier], x: torch.Tensor, y: torch.Tensor, member: torch.Tensor,
                      augment: str, batch_size: int) -> tuple[str, float, Any]:
    from bastion.attacks.privacy.membership.signals import compute_signals

    t0 = time.perf_counter()
    torch.set_num_threads(1)
    sig = compute_signals(models, x, y, member, augment=augment, batch_size=batch_size, workers=1)
    return _node_id(), time.perf_counter() - t0, sig


def compute_signals_ray(models: Sequence[Classifier], x: torch.Tensor, y: torch.Tensor,
                        member: torch.Tensor, augment: str = "none", batch_size: int = 1024) -> Any:
    """`compute_signals` over the models as Ray tasks (groups of models, one CPU each); the
    result equals the local computation (the same per-model forward passes)."""
    from bastion.attacks.privacy.membership.signals import SignalMatrix

    ray = import_ray()
    connect()
    m = len(models)
    per = group_sizes(m, cluster_cpus(), m)
    xr, yr = ray.put(x.detach().cpu().contiguous()), ray.put(y.detach().cpu().contiguous())
    remote = ray.remote(num_cpus=1)(_score_group_task)
    cpu_models = [mod.to("cpu") for mod in models]
    refs = [remote.remote(cpu_models[s:s + per], xr, yr, member[:, s:s + per].contiguous(), augment, batch_size)
            for s in range(0, m, per)]
    _PLACEMENT["score"], _TASK_SECONDS["score"] = Counter(), []
    parts = []
    for node, secs, sig in (get(r) for r in refs):
        _PLACEMENT["score"][node] += 1
        _TASK_SECONDS["score"].append(secs)
        parts.append(sig)
    return SignalMatrix.concat(parts)


def wait_for_nodes(count: int, timeout: float = 60.0) -> int:
    """Block until the connected cluster has `count` alive nodes (benchmarks); returns it."""
    ray = import_ray()
    end = time.monotonic() + timeout
    while True:
        alive = sum(1 for n in ray.nodes() if n.get("Alive"))
        if alive >= count or time.monotonic() > end:
            return alive
        time.sleep(0.5)
