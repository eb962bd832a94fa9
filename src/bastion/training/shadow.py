"""Train many small shadow / reference models at once, with a resumable disk cache.

Membership-inference attacks that calibrate per example (LiRA, Carlini et al. 2022; RMIA,
Zarifzadeh et al. 2024) need tens to hundreds of models trained like the target on random
halves of a data pool. This module trains them

- one by one (`method='loop'`): a plain Adam/SGD loop per model, or
- M at a time (`method='vmap'`): the M models' parameters are stacked (torch.func
  `stack_module_state`) and one `vmap(functional_call)` computes all M forward/backward
  passes, each model on its own minibatch. Adam and SGD are element-wise, so one optimizer
  over the stacked tensors updates every model exactly as its own optimizer would.
- in parallel worker processes (`method='process'`, CPU only): W processes with
  `cores // W` intra-op threads each train whole models from a shared work queue. Small
  conv nets scale badly over intra-op threads, so on a few CPU cores one model per core
  is faster than one model on all cores.
- as Ray tasks (`method='ray'`, CPU, the optional `bastion[scale]` extra): one task per
  group of models on a local or remote Ray cluster, see `bastion.scale.shadows`.

On CPU, conv nets train in channels-last memory format (faster oneDNN convolution and
max-pooling kernels) and Adam/SGD use the fused single-kernel update where available.
`method='auto'` picks a path by a fixed rule (`choose_method`: device, cores, number of
models and training steps; never by timing, so the same run records the same method on
every attempt): vmap on a CUDA GPU, worker processes on a multi-core CPU once there are
enough training steps to amortise their start-up, else vmap (or the loop for BatchNorm
models). `method='auto-timed'` instead times a few steps of each path and keeps the
fastest (faster on unusual hardware, but the choice can change between runs). All paths
train the same models up to float rounding, so results do not depend on the choice.

Split design: models come in complementary pairs. Pair k draws a seeded random half H_k of
the pool; model 2k trains on H_k and model 2k+1 on the rest. So for any even number of
models every pool example is IN for exactly half of them (what online LiRA needs), and
model i's data never depends on how many models are trained in total (resume can add
models). Model i's initialisation and minibatch order are seeded by (seed, i) only, so the
loop and vmap paths produce the same models up to floating-point rounding.

Cache layout (`cache_dir`): `config.json` (training config + a fingerprint of the pool),
`model-00042.safetensors` per finished model, and `membership.safetensors` (the [N, M]
bool membership matrix), all written atomically and fsync'd (`bastion.fileio`). Models
already in the cache are loaded, never retrained; an interrupted run continues where it
stopped. A truncated or corrupt cached file (config or model) is reported in one warning
line on stderr and recomputed.
"""

from __future__ import annotations

import ast
import copy
import hashlib
import json
import queue
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bastion.core import (
    Classifier,
    ConfigError,
    InputError,
    InputSpec,
    available_cores,
    resolve_device,
)
from bastion.fileio import atomic_path, atomic_write
from bastion.models import build_classifier
from bastion.progress import task
from bastion.threads import per_worker
from bastion.threads import using as using_threads
from bastion.training.fit import OPTIMIZERS

METHODS = ("auto", "auto-timed", "loop", "vmap", "process", "ray")
# seconds to start one worker process (import torch + bastion), used by the auto pick
PROCESS_STARTUP_S = 4.0
# 'auto' on a multi-core CPU uses worker processes from this many optimizer steps in total
# (all models together): below it, their start-up outweighs the gain
PROCESS_MIN_STEPS = 2000


@dataclass(frozen=True)
class ShadowConfig:
    """How shadow models are built and trained (mirror the target's recipe).

    Attributes:
        arch: zoo architecture name (unused when `entry_point` or `build_fn` is set).
        arch_args: zoo architecture arguments, or the entry point's keyword arguments.
        entry_point: a user architecture as 'module.path:callable' (returns an nn.Module).
        build_fn: a user architecture as a Python function returning a fresh nn.Module
            (models trained in this process only: never by worker processes).
        train_fn: the user's own training, `train_fn(model, x, y) -> model`: `model` is the
            fresh shadow as a Classifier (raw inputs in the spec's bounds, normalisation
            inside; your module is `model.module`), x, y its half of the pool. Shadows are
            then trained one after another by it; epochs, batch size, lr and optimizer are
            not used.
        epochs: passes over each model's half of the pool (10, as in the issue's benchmark).
        batch_size: minibatch size per model.
        lr: learning rate (Adam 1e-3, as `bastion train`).
        optimizer: 'adam' or 'sgd' (momentum 0.9).
        weight_decay: L2 penalty.
        seed: base seed; model i uses seeds derived from (seed, i) only.
        method: 'auto' (a fixed rule, see `choose_method`), 'auto-timed' (time the
            paths, keep the fastest), 'loop', 'vmap', 'process' or 'ray' (Ray tasks,
            `bastion.scale.shadows`; never chosen by 'auto').
        group_size: models trained together by the vmap path (memory grows linearly).
        workers: worker processes of the 'process' path; None = one per available core.
        spec: input spec of the models (shape, bounds, normalisation); None = from the data.
    """

    arch: str = "cnn-small"
    arch_args: dict[str, Any] = field(default_factory=dict)
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    seed: int = 0
    method: str = "auto"
    group_size: int = 32
    workers: int | None = None
    spec: InputSpec | None = None
    entry_point: str | None = None
    build_fn: Callable[[], torch.nn.Module] | None = None
    train_fn: Callable[..., Any] | None = None

    @property
    def user_code(self) -> bool:
        """Whether training needs Python callables of this process (no worker processes)."""
        return self.build_fn is not None or self.train_fn is not None

    def describe(self) -> str:
        """The architecture in words, for log lines."""
        if self.build_fn is not None:
            return f"{_callable_name(self.build_fn)} (build_fn)"
        return self.entry_point or self.arch

    def validate(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"shadow epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"shadow batch_size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ConfigError(f"shadow lr must be positive, got {self.lr}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
        if self.method not in METHODS:
            raise ConfigError(f"unknown shadow training method {self.method!r}; valid: {', '.join(METHODS)}")
        if self.group_size < 1:
            raise ConfigError(f"group_size must be >= 1, got {self.group_size}")
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"workers must be >= 1, got {self.workers}")
        for name in ("build_fn", "train_fn"):
            fn = getattr(self, name)
            if fn is not None and not callable(fn):
                raise ConfigError(f"{name} must be callable, got {type(fn).__name__}")
        if self.user_code and self.method == "process":
            raise ConfigError("method='process' trains in worker processes, which cannot run build_fn/"
                              "train_fn of this process; use 'auto', 'vmap' or 'loop' (or an entry point)")

    def recipe(self) -> dict[str, Any]:
        """The fields that determine the trained weights (method and grouping do not)."""
        d = asdict(self)
        for k in ("method", "group_size", "workers"):
            d.pop(k)
        d["spec"] = None if self.spec is None else self.spec.to_dict()
        if self.entry_point is not None or self.build_fn is not None:
            d["arch"] = None
        if self.build_fn is not None:  # a function is named by its qualified name + its layout
            probe = self.build_fn()
            d["build_fn"] = {"name": _callable_name(self.build_fn), "layout": {
                k: list(v.shape) for k, v in probe.state_dict().items()}}
        if self.train_fn is not None:
            d["train_fn"] = _callable_name(self.train_fn)
            for k in ("epochs", "batch_size", "lr", "optimizer", "weight_decay"):
                d.pop(k)
        for k in ("entry_point", "build_fn", "train_fn"):  # zoo recipes keep their old form
            if d[k] is None:
                d.pop(k)
        return d

    @classmethod
    def like(cls, target: Classifier, **overrides: Any) -> ShadowConfig:
        """A config that trains shadows like `target`, from its checkpoint metadata
        (architecture, arguments, epochs, batch size, lr, optimizer).

        The architecture: `build_fn=` or `entry_point=` in `overrides`, else the zoo name
        or the entry point the target was loaded from; a target of unknown architecture
        (an in-memory module, a torch.export program) is refused in one line."""
        meta = target.meta
        kw: dict[str, Any] = {"spec": target.spec}
        if overrides.get("build_fn") is not None or overrides.get("entry_point") is not None:
            pass
        elif "arch" in meta:
            kw.update(arch=meta["arch"], arch_args=dict(meta.get("arch_args") or {}))
        elif meta.get("entry_point"):
            kw.update(entry_point=meta["entry_point"], arch_args=dict(meta.get("entry_args") or {}))
        elif meta.get("exported_program"):
            raise ConfigError("shadow models cannot be rebuilt from a torch.export program: pass the code that "
                              "builds the architecture, --model my_pkg.models:build --weights W.safetensors "
                              "(build_fn= in Python), or use yeom/gap, which need no shadow models")
        else:
            raise ConfigError("shadow models need the target's architecture: pass build_fn= (a function "
                              "returning a fresh model) or load it with --model my_pkg.models:build, or "
                              "use yeom/gap, which need no shadow models")
        tr = meta.get("training") or {}
        for k in ("epochs", "batch_size", "lr", "optimizer", "weight_decay"):
            if k in tr:
                kw[k] = tr[k]
        kw.update(overrides)
        return cls(**kw)


# --------------------------------------------------------------------------- splits


def _model_seed(seed: int, i: int, what: str) -> int:
    h = hashlib.sha256(f"bastion-shadow|{seed}|{i}|{what}".encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 62) - 1)


def model_indices(n: int, i: int, seed: int) -> torch.Tensor:
    """Pool indices model `i` trains on: a seeded random half, complementary within the
    pair (2k, 2k+1). Depends only on (n, i, seed)."""
    g = torch.Generator().manual_seed(_model_seed(seed, i // 2, "split"))
    perm = torch.randperm(n, generator=g)
    h = n // 2
    return perm[:h].sort().values if i % 2 == 0 else perm[h:2 * h].sort().values


def membership_matrix(n: int, num_models: int, seed: int) -> torch.Tensor:
    """Boolean [n, num_models]: entry (j, i) is True when pool example j trains model i."""
    m = torch.zeros(n, num_models, dtype=torch.bool)
    for i in range(num_models):
        m[model_indices(n, i, seed), i] = True
    return m


def fingerprint(x: torch.Tensor, y: torch.Tensor) -> str:
    """A short content hash of a data pool (detects a cache reused on other data)."""
    h = hashlib.sha256()
    h.update(str(tuple(x.shape)).encode())
    h.update(x.detach().cpu().contiguous().float().numpy().tobytes())
    h.update(y.detach().cpu().contiguous().long().numpy().tobytes())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- training


def _callable_name(fn: Callable[..., Any]) -> str:
    """`module:qualname` plus a digest of the function's code, so the shadow cache tells
    two lambdas (or an edited function) apart; closure values are not part of it."""
    name = f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', type(fn).__name__)}"
    code = getattr(fn, "__code__", None)
    if code is not None:
        h = hashlib.sha256()

        def feed(c: Any) -> None:
            h.update(c.co_code)
            for k in c.co_consts:  # nested code objects by content (their repr holds an address)
                feed(k) if hasattr(k, "co_code") else h.update(repr(k).encode())
        feed(code)
        name += f"@{h.hexdigest()[:8]}"
    return name


def _build(cfg: ShadowConfig, spec: InputSpec, num_classes: int, i: int, device: torch.device) -> Classifier:
    torch.manual_seed(_model_seed(cfg.seed, i, "init"))
    if cfg.build_fn is None and cfg.entry_point is None:
        return build_classifier(cfg.arch, spec, num_classes, cfg.arch_args, device=device, name=f"shadow-{i}")
    if cfg.build_fn is not None:
        try:
            module = cfg.build_fn()
        except Exception as e:
            raise ConfigError(f"build_fn failed ({type(e).__name__}: {e})"[:300]) from None
        if not isinstance(module, torch.nn.Module):
            raise ConfigError(f"build_fn returned {type(module).__name__}, not a torch.nn.Module")
    else:
        from bastion.models.entrypoint import build_module
        module = build_module(cfg.entry_point, cfg.arch_args)  # type: ignore[arg-type]
    return Classifier(module, spec, num_classes, device=device, name=f"shadow-{i}")


def _train_user(clf: Classifier, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, i: int,
                cfg: ShadowConfig) -> tuple[Classifier, list[float]]:
    """Shadow i trained by the user's `train_fn(model, x, y)` on its half of the pool
    (torch's global RNG seeded by (seed, i), so runs repeat)."""
    torch.manual_seed(_model_seed(cfg.seed, i, "order"))
    clf.train()
    try:
        out = cfg.train_fn(clf, x[idx], y[idx])  # type: ignore[misc]
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(f"train_fn failed on shadow model {i} ({type(e).__name__}: {e})"[:300]) from None
    if out is None or out is clf:
        trained = clf
    elif isinstance(out, Classifier):
        trained = out
    elif isinstance(out, torch.nn.Module):
        if out is clf.module:
            trained = clf
        else:
            trained = Classifier(out, clf.spec, clf.num_classes, device=clf.device, name=clf.name)
    else:
        raise ConfigError(f"train_fn must return the trained model, got {type(out).__name__}")
    return trained.eval(), []


def _make_opt(params: Any, cfg: ShadowConfig) -> torch.optim.Optimizer:
    """Adam / SGD with the fused single-kernel update when this torch build has it for the
    parameters' device (same arithmetic as the per-tensor update, far less overhead)."""
    params = list(params)
    kw: dict[str, Any] = {"lr": cfg.lr, "weight_decay": cfg.weight_decay}
    cls: type[torch.optim.Optimizer] = torch.optim.Adam
    if cfg.optimizer != "adam":
        cls, kw["momentum"] = torch.optim.SGD, 0.9
    try:
        return cls(params, fused=True, **kw)
    except (RuntimeError, TypeError, ValueError):  # fused kernel unavailable here
        return cls(params, **kw)


def _prepare(clf: Classifier, x: torch.Tensor) -> torch.Tensor:
    """Put `clf` and the training inputs in the fastest layout (the trained model keeps
    it); returns the inputs."""
    if clf.prefers_channels_last and x.dim() == 4:
        clf.module.to(memory_format=torch.channels_last)
        return x.contiguous(memory_format=torch.channels_last)
    return x


def _orders(n_i: int, i: int, cfg: ShadowConfig, device: torch.device) -> list[torch.Tensor]:
    """Per-epoch shuffles of model i's own training indices (positions 0..n_i-1)."""
    g = torch.Generator().manual_seed(_model_seed(cfg.seed, i, "order"))
    return [torch.randperm(n_i, generator=g).to(device) for _ in range(cfg.epochs)]


def _train_one(clf: Classifier, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, i: int,
               cfg: ShadowConfig, max_steps: int | None = None) -> list[float]:
    """Plain loop: returns the per-epoch mean training loss."""
    xi, yi = _prepare(clf, x[idx]), y[idx]
    opt = _make_opt(clf.parameters(), cfg)
    losses: list[float] = []
    steps = 0
    clf.train()
    for order in _orders(len(idx), i, cfg, x.device):
        tot = torch.zeros((), device=x.device)
        for s in range(0, len(order), cfg.batch_size):
            b = order[s:s + cfg.batch_size]
            loss = F.cross_entropy(clf(xi[b]), yi[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot += loss.detach() * b.numel()
            steps += 1
            if max_steps is not None and steps >= max_steps:
                clf.eval()
                return losses
        losses.append(float(tot) / len(order))
    clf.eval()
    return losses


def _vmappable(clf: Classifier) -> bool:
    """Whether stacked training (vmap over functional_call) can train this architecture.

    Buffers updated in training (BatchNorm running stats) cannot be written under vmap;
    other modules may use operations vmap does not support. One training-mode forward of
    two stacked copies on a probe batch decides; a failure means sequential training."""
    if any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in clf.modules()):
        return False
    from torch.func import functional_call, stack_module_state, vmap

    try:
        copies = [copy.deepcopy(clf).cpu() for _ in range(2)]
        params, buffers = stack_module_state(copies)  # type: ignore[arg-type]
        base = copy.deepcopy(copies[0]).to("meta")
        base.train()
        before = {k: v.clone() for k, v in buffers.items()}
        x = torch.full((2, 2, *clf.spec.shape), float(sum(clf.spec.bounds)) / 2)
        out = vmap(lambda p, b, xb: functional_call(base, (p, b), (xb,)), randomness="different")(params, buffers, x)
        out.sum().backward()
        if any(not torch.equal(before[k], v) for k, v in buffers.items()):
            return False
    except Exception:  # any failure under vmap: train one model at a time instead
        return False
    return True


def _train_group(models: list[Classifier], x: torch.Tensor, y: torch.Tensor, idxs: list[torch.Tensor],
                 ids: Sequence[int], cfg: ShadowConfig, max_steps: int | None = None) -> list[list[float]]:
    """Train `models` together with stacked parameters + vmap. All models must train on the
    same number of examples. Returns per-model per-epoch mean losses."""
    from torch.func import functional_call, stack_module_state, vmap

    m = len(models)
    n_i = len(idxs[0])
    if any(len(ix) != n_i for ix in idxs):
        raise ConfigError("vmap shadow training needs equally sized training sets")
    dev = x.device
    params, buffers = stack_module_state(models)  # type: ignore[arg-type]
    params = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    base = copy.deepcopy(models[0]).to("meta")
    base.train()

    def f(p: dict[str, torch.Tensor], bufs: dict[str, torch.Tensor], xb: torch.Tensor) -> torch.Tensor:
        return functional_call(base, (p, bufs), (xb,))

    fwd = vmap(f, randomness="different")
    opt = _make_opt(list(params.values()), cfg)
    idx_mat = torch.stack(idxs).to(dev)  # [m, n_i] pool indices
    orders = [_orders(n_i, i, cfg, dev) for i in ids]
    losses: list[list[float]] = [[] for _ in range(m)]
    rows = torch.arange(m, device=dev)[:, None]
    steps = 0
    for e in range(cfg.epochs):
        order = torch.stack([o[e] for o in orders])  # [m, n_i]
        tot = torch.zeros(m, device=dev)
        for s in range(0, n_i, cfg.batch_size):
            pos = order[:, s:s + cfg.batch_size]
            sel = idx_mat[rows, pos]  # [m, b] pool indices
            logits = fwd(params, buffers, x[sel])  # [m, b, C]
            per_model = F.cross_entropy(logits.flatten(0, 1), y[sel].flatten(), reduction="none")
            per_model = per_model.view(m, -1).mean(1)
            opt.zero_grad(set_to_none=True)
            per_model.sum().backward()
            opt.step()
            tot += per_model.detach() * pos.shape[1]
            steps += 1
            if max_steps is not None and steps >= max_steps:
                break
        if max_steps is not None and steps >= max_steps:
            break
        for j, v in enumerate((tot / n_i).tolist()):
            losses[j].append(v)
    with torch.no_grad():
        for j, clf in enumerate(models):
            for name, p in clf.named_parameters():
                p.copy_(params[name][j])
            clf.eval()
    return losses


def _process_worker(x: torch.Tensor, y: torch.Tensor, cfg: ShadowConfig, spec: InputSpec, num_classes: int,
                    threads: int, tasks: Any, results: Any) -> None:
    """Worker of the 'process' path: train whole models (indices from `tasks`, None =
    stop) with `threads` intra-op threads; send back (i, state_dict, losses) or an error."""
    torch.set_num_threads(threads)
    n = int(x.shape[0])
    dev = torch.device("cpu")
    while True:
        i = tasks.get()
        if i is None:
            return
        try:
            clf = _build(cfg, spec, num_classes, i, dev)
            ls = _train_one(clf, x, y, model_indices(n, i, cfg.seed), i, cfg)
            # numpy arrays travel by value (torch's shared-memory handles die with the worker)
            sd = {k: v.detach().contiguous().numpy() for k, v in clf.module.state_dict().items()}
            results.put((i, sd, ls))
        except BaseException as e:  # report, never hang the parent
            results.put((i, None, f"{type(e).__name__}: {e}"))
            return


def _death_message(codes: Sequence[int | None]) -> str:
    """Why every worker died, from their exit codes (-9: SIGKILL, typically the OOM killer)."""
    killed = any(c is not None and c < 0 for c in codes)
    why = ("killed by a signal (out of memory?)" if killed else
           "exited with an error before training (see their messages above; a script that "
           "starts shadow training must do so under `if __name__ == \"__main__\":`)")
    return (f"all shadow-training worker processes died, {why}; exit codes {list(codes)}; "
            "finished models are kept in the cache")


def _guards_main(node: ast.stmt) -> bool:
    """Whether `node` is `if __name__ == "__main__":` (either operand order)."""
    if not isinstance(node, ast.If) or not isinstance(node.test, ast.Compare):
        return False
    t = node.test
    if len(t.ops) != 1 or not isinstance(t.ops[0], ast.Eq):
        return False
    sides = [t.left, t.comparators[0]]
    names = [x.id for x in sides if isinstance(x, ast.Name)]
    consts = [x.value for x in sides if isinstance(x, ast.Constant)]
    return names == ["__name__"] and consts == ["__main__"]


def unguarded_main_script() -> str | None:
    """The user's script when this call runs from its top level outside an
    `if __name__ == "__main__":` block, else None.

    Worker processes start with the 'spawn' method, which re-imports the main script in
    every worker; without the guard each worker would run the script's training again and
    die while bootstrapping (Python's multiprocessing "safe importing of main module"
    rule), which used to surface as "worker processes died"."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or not path:
        return None
    frame = sys._getframe(1)
    top = None
    while frame is not None:
        if frame.f_globals is vars(main) and frame.f_code.co_name == "<module>":
            top = frame
        frame = frame.f_back
    if top is None:
        return None
    try:
        tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return None
    line = top.f_lineno
    for node in tree.body:
        if _guards_main(node) and node.lineno <= line <= (node.end_lineno or node.lineno):
            return None
    return str(path)


def _train_processes(todo: Sequence[int], x: torch.Tensor, y: torch.Tensor, cfg: ShadowConfig,
                     spec: InputSpec, num_classes: int, workers: int,
                     finish: Callable[[int, Classifier, list[float]], None]) -> None:
    """Train models `todo` in `workers` spawned processes (CPU). `finish` runs in this
    process as each model arrives (cache write, callbacks), so a killed run keeps every
    model that was finished before it died."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")  # fork after the parent's OpenMP start-up can deadlock
    threads = per_worker(workers)
    tasks, results = ctx.Queue(), ctx.Queue()
    for i in todo:
        tasks.put(i)
    for _ in range(workers):
        tasks.put(None)
    xs, ys = x.detach().cpu().contiguous().share_memory_(), y.detach().cpu().contiguous().share_memory_()
    procs = [ctx.Process(target=_process_worker, args=(xs, ys, cfg, spec, num_classes, threads, tasks, results),
                         daemon=True) for _ in range(workers)]
    for pr in procs:
        pr.start()
    try:
        left = len(todo)
        while left:
            try:
                i, sd, ls = results.get(timeout=5.0)
            except queue.Empty:
                if not any(pr.is_alive() for pr in procs):
                    raise RuntimeError(_death_message([pr.exitcode for pr in procs])) from None
                continue
            if sd is None:
                raise RuntimeError(f"shadow model {i} failed in a worker process: {ls}")
            clf = _build(cfg, spec, num_classes, i, torch.device("cpu"))
            clf.module.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
            finish(i, clf.eval(), ls)
            left -= 1
    finally:
        for pr in procs:
            if pr.is_alive():
                pr.terminate()
        for pr in procs:
            pr.join(timeout=10)
        for q in (tasks, results):
            q.cancel_join_thread()
            q.close()


# --------------------------------------------------------------------------- cache


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path, meta: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)


def warn(msg: str) -> None:
    """One warning line on stderr (a corrupt cache file that is being recomputed)."""
    print(f"warning: {msg}", file=sys.stderr, flush=True)


def _read_record(path: Path) -> dict[str, Any] | None:
    """The cache's config.json, or None (after a warning) when it is truncated or corrupt."""
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        old = None
    if not isinstance(old, dict):
        warn(f"shadow cache file {path} is corrupt or truncated; rebuilding the models of "
             f"{path.parent}")
        return None
    return old


def _load_cached_model(path: Path, cfg: ShadowConfig, spec: InputSpec, k: int, i: int) -> Classifier | None:
    """Cached model i, or None (after a warning, the file removed) when it is unreadable."""
    from safetensors.torch import load_file

    clf = _build(cfg, spec, k, i, torch.device("cpu"))
    try:
        state = load_file(str(path))
        clf.module.load_state_dict(state, strict=True)
        if not all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point()):
            raise ValueError("non-finite weights")
    except Exception as e:  # safetensors raises its own error type for a bad header
        warn(f"cached shadow model {path} is corrupt or truncated ({type(e).__name__}); retraining it")
        path.unlink(missing_ok=True)
        return None
    return clf


@dataclass
class ShadowSet:
    """Trained shadow models plus the [N, M] membership matrix over the pool.

    `models[i]` is a Classifier (on `device`); `member[j, i]` says whether pool example j
    was in model i's training half. `timings` records seconds per trained model.
    """

    models: list[Classifier]
    member: torch.Tensor
    config: ShadowConfig
    pool_size: int
    cache_dir: Path | None = None
    trained: int = 0
    loaded: int = 0
    method: str = "loop"
    wall_time: float = 0.0
    losses: dict[int, list[float]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.models)


def _check_pool(x: torch.Tensor, y: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise InputError("shadow pool inputs must be a floating-point tensor")
    if not isinstance(y, torch.Tensor) or y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise InputError(f"shadow pool labels must have shape ({x.shape[0]},), got "
                         f"{tuple(getattr(y, 'shape', ()))}")
    if x.shape[0] < 4:
        raise InputError(f"the shadow pool needs at least 4 examples, got {x.shape[0]}")


def steps_per_model(cfg: ShadowConfig, pool_size: int) -> int:
    """Optimizer steps one model takes on its half of a pool of `pool_size` examples."""
    return cfg.epochs * -(-(pool_size // 2) // cfg.batch_size)


def choose_method(cfg: ShadowConfig, vmappable: bool, num_models: int, pool_size: int,
                  device: torch.device, cores: int | None = None) -> str:
    """The path `method='auto'` takes, by a fixed rule (never by timing, so the choice and
    the recorded method are the same on every run of the same job on the same machine):

    - one model: 'loop';
    - GPU: 'vmap' (BatchNorm models: 'loop');
    - CPU with >= 2 workers (one per available core, or `cfg.workers`) and at least
      `PROCESS_MIN_STEPS` optimizer steps over all models: 'process' (small conv nets
      scale badly over intra-op threads; one model per core wins once the workers'
      start-up is amortised);
    - otherwise 'vmap' (BatchNorm models: 'loop').
    """
    if num_models < 2 or cfg.train_fn is not None:
        return "loop"
    stacked = "vmap" if vmappable else "loop"
    if device.type != "cpu" or cfg.user_code:
        return stacked
    workers = min(cfg.workers or (available_cores() if cores is None else cores), num_models)
    if workers >= 2 and num_models * steps_per_model(cfg, pool_size) >= PROCESS_MIN_STEPS:
        return "process"
    return stacked


def pick_method(cfg: ShadowConfig, spec: InputSpec, num_classes: int, x: torch.Tensor, y: torch.Tensor,
                group: int, device: torch.device, steps: int = 6,
                num_models: int | None = None) -> tuple[str, dict[str, float]]:
    """Time a few training steps of each path on `device` and return the one with the
    lowest predicted time for `num_models` models (default `group`), with the predicted
    seconds per model-step of every path measured:

    - 'loop': one model with all of this process's threads;
    - 'vmap': `group` models stacked (skipped for BatchNorm models);
    - 'process' (CPU with >= 2 cores and >= 2 models): one model with
      `cores // workers` threads, divided by the number of workers that run at once,
      plus the workers' start-up (`PROCESS_STARTUP_S`) spread over the models.
    """
    n = x.shape[0]
    idx = model_indices(n, 0, cfg.seed)
    probe = replace(cfg, epochs=1, method="loop")
    m_total = num_models if num_models is not None else group
    times: dict[str, float] = {}
    m0 = _build(cfg, spec, num_classes, 0, device)

    def time_loop() -> float:
        _train_one(copy.deepcopy(m0), x, y, idx, 0, probe, max_steps=2)  # warm-up
        _sync(device)
        t = time.perf_counter()
        _train_one(copy.deepcopy(m0), x, y, idx, 0, probe, max_steps=steps)
        _sync(device)
        return (time.perf_counter() - t) / steps

    times["loop"] = time_loop()
    if _vmappable(m0) and group >= 2:
        models = [copy.deepcopy(m0) for _ in range(group)]
        _train_group(models, x, y, [idx] * group, list(range(group)), probe, max_steps=2)
        _sync(device)
        t = time.perf_counter()
        _train_group(models, x, y, [idx] * group, list(range(group)), probe, max_steps=steps)
        _sync(device)
        times["vmap"] = (time.perf_counter() - t) / (steps * group)
    workers = min(cfg.workers or available_cores(), m_total)
    if device.type == "cpu" and workers >= 2 and not cfg.user_code:
        with using_threads(per_worker(workers)):
            t1 = time_loop()
        spm = steps_per_model(cfg, n)
        total = PROCESS_STARTUP_S + -(-m_total // workers) * spm * t1
        times["process"] = total / (m_total * spm)
    return min(times, key=times.__getitem__), times


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_shadows(x: torch.Tensor, y: torch.Tensor, num_models: int, cfg: ShadowConfig = ShadowConfig(),
                  cache_dir: str | Path | None = None, num_classes: int | None = None,
                  device: str | torch.device | None = "auto", progress: bool | None = None,
                  stop_after: int | None = None,
                  on_model: Callable[[int, list[float]], None] | None = None) -> ShadowSet:
    """Train (or load from `cache_dir`) `num_models` shadow models on random halves of the
    pool (x, y).

    Args:
        x, y: the attacker's data pool (float inputs in the model's bounds, int labels).
        num_models: number of models (even numbers keep every example IN for exactly half).
        cfg: architecture and training recipe, see `ShadowConfig` (`ShadowConfig.like(target)`).
        cache_dir: folder for weights + membership + config; resumable. None = no cache.
        num_classes: classes of the models (default: max label + 1, at least 2).
        device: where to train ('auto' = CUDA when present).
        progress: show a progress bar (None = only on an interactive terminal).
        stop_after: train at most this many new models, then return (simulates an
            interruption; used by tests and for budgeted runs).
        on_model: callback(model_index, per-epoch losses) after each newly trained model.
    """
    cfg.validate()
    _check_pool(x, y)
    if num_models < 1:
        raise ConfigError(f"num_models must be >= 1, got {num_models}")
    dev = resolve_device(device)
    if cfg.method in ("process", "ray") and dev.type != "cpu":
        raise ConfigError(f"method={cfg.method!r} trains on CPU cores; on a GPU use 'vmap', 'loop' or 'auto'")
    spec = cfg.spec or InputSpec(tuple(x.shape[1:]))
    if tuple(x.shape[1:]) != spec.shape:
        raise InputError(f"pool inputs have shape {tuple(x.shape[1:])}, the shadow models expect {spec.shape}")
    k = int(num_classes if num_classes is not None else max(int(y.max()) + 1, 2))
    if int(y.min()) < 0 or int(y.max()) >= k:
        raise InputError(f"pool labels must lie in [0, {k - 1}]")
    n = int(x.shape[0])
    start = time.perf_counter()
    cache = Path(cache_dir) if cache_dir is not None else None
    record = {"recipe": cfg.recipe(), "pool": fingerprint(x, y), "pool_size": n, "num_classes": k,
              "format": 1}
    trusted = True
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        cfg_path = cache / "config.json"
        old = _read_record(cfg_path) if cfg_path.exists() else None
        if old is not None and old != json.loads(json.dumps(record, default=str)):
            raise ConfigError(f"shadow cache {cache} was built with another recipe or data pool; "
                              "use a fresh --cache folder (or delete this one)")
        if old is None:
            trusted = not cfg_path.exists()   # a corrupt record vouches for no model
            atomic_write(cfg_path, json.dumps(record, indent=2, default=str))

    xd, yd = x.to(dev), y.to(dev).long()
    if cache is not None:
        _atomic_save({"member": membership_matrix(n, num_models, cfg.seed).to(torch.uint8)},
                     cache / "membership.safetensors", {"num_models": str(num_models)})
    models: list[Classifier | None] = [None] * num_models
    loaded = 0
    if cache is not None:
        for i in range(num_models):
            p = cache / f"model-{i:05d}.safetensors"
            if p.exists() and trusted:
                clf = _load_cached_model(p, cfg, spec, k, i)
                if clf is not None:
                    models[i] = clf.to(dev).eval()
                    loaded += 1
    todo = [i for i in range(num_models) if models[i] is None]
    if stop_after is not None:
        todo = todo[:max(stop_after, 0)]

    method = cfg.method
    group = min(cfg.group_size, max(len(todo), 1))
    workers = min(cfg.workers or available_cores(), max(len(todo), 1))
    vmappable = cfg.train_fn is None and _vmappable(_build(cfg, spec, k, 0, torch.device("cpu")))
    if todo and cfg.train_fn is not None and method not in ("auto", "auto-timed", "loop", "ray"):
        raise ConfigError(f"train_fn trains one model at a time; method {method!r} cannot apply it "
                          "(use 'auto' or 'loop')")
    if todo and method == "auto":
        method = choose_method(cfg, vmappable, len(todo), n, dev)
    elif todo and method == "auto-timed":
        method = "loop" if len(todo) < 2 or cfg.train_fn is not None else pick_method(cfg, spec, k, xd, yd, min(group, 8), dev,
                                                          num_models=len(todo))[0]
    script = unguarded_main_script() if method == "process" and todo else None
    if script is not None:
        if cfg.method == "process":
            raise ConfigError(f"method='process' starts worker processes that re-import {script}, "
                              "which calls shadow training outside `if __name__ == \"__main__\":`; "
                              "move the call under that guard, or use method='vmap' or 'loop'")
        method = "vmap" if vmappable else "loop"
    losses: dict[int, list[float]] = {}

    def finish(i: int, clf: Classifier, ls: list[float]) -> None:
        models[i] = clf
        losses[i] = ls
        if cache is not None:
            _atomic_save(clf.module.state_dict(), cache / f"model-{i:05d}.safetensors",
                         {"index": str(i), "losses": json.dumps(ls)})
        if on_model is not None:
            on_model(i, ls)

    with task(f"shadow models ({method})", len(todo), progress) as bar:
        if method == "vmap" and todo and not vmappable:
            method = "loop"
        if method == "vmap":
            for s in range(0, len(todo), group):
                ids = todo[s:s + group]
                ms = [_build(cfg, spec, k, i, dev) for i in ids]
                idxs = [model_indices(n, i, cfg.seed).to(dev) for i in ids]
                for i, clf, ls in zip(ids, ms, _train_group(ms, xd, yd, idxs, ids, cfg), strict=True):
                    finish(i, clf, ls)
                bar.advance(len(ids))
        elif method == "process":
            def arrived(i: int, clf: Classifier, ls: list[float]) -> None:
                finish(i, clf.to(dev), ls)
                bar.advance(1)

            _train_processes(todo, xd, yd, cfg, spec, k, workers, arrived)
        elif method == "ray":
            from bastion.scale.shadows import train_ray

            def landed(i: int, clf: Classifier, ls: list[float]) -> None:
                finish(i, clf.to(dev), ls)
                bar.advance(1)

            train_ray(todo, xd, yd, cfg, spec, k, vmappable, landed)
        elif cfg.train_fn is not None:
            for i in todo:
                clf = _build(cfg, spec, k, i, dev)
                finish(i, *_train_user(clf, xd, yd, model_indices(n, i, cfg.seed).to(dev), i, cfg))
                bar.advance(1)
        else:
            for i in todo:
                clf = _build(cfg, spec, k, i, dev)
                finish(i, clf, _train_one(clf, xd, yd, model_indices(n, i, cfg.seed).to(dev), i, cfg))
                bar.advance(1)

    done = [m for m in models if m is not None]
    member = membership_matrix(n, num_models, cfg.seed)
    if len(done) < num_models:  # interrupted: keep only finished models, in order
        keep = [i for i in range(num_models) if models[i] is not None]
        member = member[:, keep]
    return ShadowSet(models=done, member=member, config=cfg, pool_size=n, cache_dir=cache,
                     trained=len(todo), loaded=loaded, method=method if todo else "cached",
                     wall_time=time.perf_counter() - start, losses=losses)
