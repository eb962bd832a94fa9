"""Audit sweeps on Ray: every independent step of the audit as one Ray task.

An audit section calls `ctx.step(key, fn)` for each unit of work (one (attack, budget) run
of the evasion section, one (init, defense) run of the leakage section, the membership
audit, ...) and caches `fn()`'s JSON value in the run folder (`bastion.audit.store`).
With `engine='ray'` the runner first calls `dispatch_steps`, which

1. plans: runs every section with a planning context whose `step` answers from the run
   folder when the step is already cached, and otherwise records (key, fn, the RNG
   state at that moment) and hands the section a placeholder value so it can go on to
   its next step (sections that trip over a placeholder simply stop planning there);
2. dispatches the recorded steps as Ray tasks: each task restores the recorded RNG
   state and the driver's intra-op thread count, runs `RunStore.step(key, fn)` and so
   writes the step file (and its tensors) atomically into the run folder under the same
   name and checksums a local run would;
3. repeats until a planning pass finds nothing new (a section whose later steps depend
   on earlier values plans one more step per round).

Then the ordinary local pass runs every section and finds all its steps cached, so the
report is built by exactly the code of a local run, from the same step values: the
results equal a local run under the same seed (up to timings). The run folder must be
visible to the Ray workers (one machine, or a shared filesystem on a cluster).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from bastion.audit.sections import AuditContext, get_section
from bastion.audit.store import RunStore
from bastion.core import seed_everything
from bastion.scale.engine import connect, get, import_ray

# the store a Ray task writes into while it runs a step (None outside a task)
_WORKER_STORE: RunStore | None = None
_PLANNERS: dict[int, _Planner] = {}


def _placeholder(key: str, ctx: AuditContext) -> Any:
    """A value of the right shape for an uncached step during planning (never stored)."""
    if key.startswith("evasion/"):
        n = len(ctx.test.y)
        return {"per_example": {"success": [0] * n, "correct_after": [0] * n, "norm": [0.0] * n}}
    return {}


class _Planner:
    """Collects the uncached steps of one planning pass."""

    def __init__(self, store: RunStore) -> None:
        self.store = store
        self.found: dict[str, tuple[Callable[[], Any], tuple[Any, Any, Any]]] = {}
        self.ctx: AuditContext | None = None

    def step(self, key: str, fn: Callable[[], Any]) -> Any:
        path = self.store.step_path(key)
        if path.is_file():
            try:
                return self.store._read(path, key)
            except Exception:  # unusable file: planned again (the task rewrites it)
                pass
        if key not in self.found:
            self.found[key] = (fn, (torch.get_rng_state(), np.random.get_state(), random.getstate()))
        assert self.ctx is not None
        return _placeholder(key, self.ctx)


class _Step:
    """ctx.step of a planning context; inside a Ray task it is the task's RunStore.step
    (so a step that calls ctx.step again nests as it does locally)."""

    def __init__(self, planner_id: int) -> None:
        self.planner_id = planner_id

    def __call__(self, key: str, fn: Callable[[], Any]) -> Any:
        if _WORKER_STORE is not None:
            return _WORKER_STORE.step(key, fn)
        return _PLANNERS[self.planner_id].step(key, fn)


class _SaveTensors:
    """ctx.save_tensors: the task's store inside a Ray task; discarded while planning."""

    def __call__(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        if _WORKER_STORE is not None:
            _WORKER_STORE.save_tensors(key, tensors)


class _LoadTensors:
    def __init__(self, store: RunStore) -> None:
        self.root, self.context = store.root, store.context

    def __call__(self, key: str) -> dict[str, torch.Tensor] | None:
        store = _WORKER_STORE if _WORKER_STORE is not None else RunStore(self.root, self.context)
        return store.load_tensors(key)


def _run_step(root: Any, context: dict[str, Any], steps: list[tuple[str, Callable[[], Any], Any]],
              index: int, threads: int) -> tuple[str, str, bool]:
    """One Ray task: run step `steps[index]` (key, fn, RNG state) into the run folder;
    returns (key, node id, cached). All steps of a round travel as one object, so the
    data their functions share (model, data sets) is serialised once, not once per step."""
    import ray

    global _WORKER_STORE
    key, fn, rng = steps[index]
    torch.set_num_threads(threads)
    torch.set_rng_state(rng[0])
    np.random.set_state(rng[1])
    random.setstate(rng[2])
    store = RunStore(root, context)
    _WORKER_STORE = store
    try:
        store.step(key, fn)
    finally:
        _WORKER_STORE = None
    return key, str(ray.get_runtime_context().get_node_id()), store.hits > 0


def _plan(prep: Any, cfg: Any, store: RunStore) -> dict[str, tuple[Callable[[], Any], Any]]:
    planner = _Planner(store)
    pid = id(planner)
    _PLANNERS[pid] = planner
    try:
        for s in prep.sections:
            seed_everything(cfg.seed)
            ctx = AuditContext(model=prep.model, train=prep.train, test=prep.test, out_dir=store.root,
                               seed=cfg.seed, checkpoint=prep.checkpoint, meta=dict(prep.model.meta),
                               step=_Step(pid), save_tensors=_SaveTensors(), load_tensors=_LoadTensors(store),
                               batch_size=cfg.batch_size, thresholds=cfg.thresholds)
            planner.ctx = ctx
            # a placeholder that trips the section ends its planning there; a genuine error
            # surfaces again in the local pass, with its own message
            with contextlib.suppress(Exception):
                get_section(s["kind"])(ctx, s)
    finally:
        del _PLANNERS[pid]
    return planner.found


def dispatch_steps(prep: Any, cfg: Any, store: RunStore, log: Callable[[str], None] | None = None,
                   max_rounds: int = 1000) -> dict[str, Any]:
    """Run every uncached step of the audit `prep` as Ray tasks (see the module docstring).
    Returns {'dispatched': [keys], 'rounds': n, 'placement': {node id: tasks}}."""
    ray = import_ray()
    connect()
    remote = ray.remote(num_cpus=1)(_run_step)
    threads = torch.get_num_threads()
    done: list[str] = []
    placement: dict[str, int] = {}
    rounds = 0
    state = (torch.get_rng_state(), np.random.get_state(), random.getstate())
    try:
        while rounds < max_rounds:
            found = _plan(prep, cfg, store)
            new = {k: v for k, v in found.items() if k not in done}
            if not new:
                break
            rounds += 1
            if log is not None:
                log(f"ray: round {rounds}, {len(new)} step(s)")
            shared = ray.put([(k, fn, rng) for k, (fn, rng) in new.items()])
            refs = [remote.remote(store.root, store.context, shared, i, threads) for i in range(len(new))]
            for ref in refs:
                key, node, _ = get(ref)  # a failing step raises its own error
                done.append(key)
                placement[node] = placement.get(node, 0) + 1
    finally:
        torch.set_rng_state(state[0])
        np.random.set_state(state[1])
        random.setstate(state[2])
    return {"dispatched": done, "rounds": rounds, "placement": placement}
