"""One policy for PyTorch's intra-op CPU thread count.

Small conv nets scale badly over intra-op threads: on a busy 2-core machine torch's
default (all cores) made a cnn7 training run 3.3x, the demo audit 1.9x and one CPL
gradient-leakage attack 17x slower than one thread, because the threads wait on each
other and on the other processes sharing the cores. Large models do gain from more
threads. No fixed rule fits every machine, so the default is measured:

- `--threads N` (or `requested`) wins: policy 'requested';
- `OMP_NUM_THREADS` set in the environment is respected: policy 'OMP_NUM_THREADS';
- a GPU model leaves the CPU threads alone: policy 'gpu';
- one available core: 1 thread, policy 'one core';
- otherwise one forward+backward pass on one batch is timed at 1 thread and at all
  cores (best of 3 after a warm-up, on a copy of the model, so the model and the random
  state are untouched) and the faster count is kept: policy 'measured'. The choice is
  cached per process for the same architecture, input shape and batch size.

Worker processes that split the cores (the shadow-model trainer's `method='process'`)
take `per_worker(workers)` threads each.
"""

from __future__ import annotations

import contextlib
import copy
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

# at most this many seconds of timing per decision: beyond it the first measurement decides
MEASURE_BUDGET_S = 1.5
REPEATS = 3


@dataclass(frozen=True)
class ThreadChoice:
    """The intra-op thread count in use and why (recorded in results.json)."""

    threads: int
    policy: str          # requested | OMP_NUM_THREADS | gpu | one core | measured | torch default
    detail: str = ""     # e.g. "1 thread 4.1 ms, 2 threads 9.8 ms per forward+backward of 32"

    def to_dict(self) -> dict[str, Any]:
        return {"threads": self.threads, "threads_policy": self.policy, "threads_detail": self.detail}

    def describe(self) -> str:
        return f"threads: {self.threads} ({self.policy}{': ' + self.detail if self.detail else ''})"


_cache: dict[tuple[Any, ...], ThreadChoice] = {}


def cores() -> int:
    """CPU cores this process may run on."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not Linux
        return max(os.cpu_count() or 1, 1)


def per_worker(workers: int) -> int:
    """Intra-op threads for each of `workers` processes that share this process's cores."""
    return max(cores() // max(workers, 1), 1)


@contextlib.contextmanager
def using(k: int) -> Iterator[None]:
    """Run the block with `k` intra-op threads, then restore the previous count."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(k)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def check_requested(requested: int | None, flag: str = "--threads") -> None:
    """A requested count lies in [1, 4 x cores] (more is a typo, not a setting)."""
    from bastion.errors import ConfigError

    if requested is None:
        return
    high = max(4 * cores(), 4)
    if isinstance(requested, bool) or not isinstance(requested, int) or not 1 <= requested <= high:
        raise ConfigError(f"{flag} must be an integer in [1, {high}], got {requested!r}")


def choose(model: Any, x: Any = None, requested: int | None = None, batch_size: int = 32) -> ThreadChoice:
    """Decide the intra-op thread count for work on `model` (a bastion Classifier) with
    inputs like `x` (a batch; only its first `batch_size` rows are used), without
    applying it. See the module docstring for the policy."""
    import torch

    check_requested(requested)
    if requested is not None:
        return ThreadChoice(requested, "requested")
    if os.environ.get("OMP_NUM_THREADS", "").strip():
        return ThreadChoice(torch.get_num_threads(), "OMP_NUM_THREADS")
    n_cores = cores()
    device = getattr(model, "device", torch.device("cpu"))
    if getattr(device, "type", "cpu") != "cpu":
        return ThreadChoice(torch.get_num_threads(), "gpu")
    if n_cores <= 1:
        return ThreadChoice(1, "one core")
    if x is None:
        return ThreadChoice(torch.get_num_threads(), "torch default", "no example batch to time")
    xb = x[:batch_size].detach().to(device, torch.float32)
    key = (getattr(model, "name", None), type(getattr(model, "module", model)).__name__,
           _param_count(model), tuple(xb.shape), n_cores)
    if key not in _cache:
        _cache[key] = _measure(model, xb, n_cores)
    return _cache[key]


def configure(model: Any, x: Any = None, requested: int | None = None, batch_size: int = 32) -> ThreadChoice:
    """`choose` and apply the result (torch.set_num_threads); returns the choice."""
    import torch

    choice = choose(model, x, requested, batch_size)
    if choice.threads != torch.get_num_threads():
        torch.set_num_threads(choice.threads)
    return choice


def configure_for_arch(arch: str, data: str, root: Any = None, arch_args: dict[str, Any] | None = None,
                       requested: int | None = None, batch_size: int = 32,
                       device: str = "auto") -> ThreadChoice:
    """`configure` for a model not built yet (training): a fresh zoo model `arch` for
    data set `data` is built and timed on one training batch."""
    check_requested(requested)
    if requested is not None:
        return configure(None, None, requested)
    from bastion.data import load
    from bastion.models import build_classifier

    train = load(data, "train", root=root)
    clf = build_classifier(arch, train.input_spec(), train.num_classes, arch_args, device=device)
    return configure(clf, train.x[:batch_size], None, batch_size)


def _param_count(model: Any) -> int:
    module = getattr(model, "module", model)
    try:
        return sum(p.numel() for p in module.parameters())
    except AttributeError:
        return 0


def _measure(model: Any, xb: Any, n_cores: int) -> ThreadChoice:
    """Time forward+backward of a copy of `model` on `xb` at 1 and `n_cores` threads."""
    import torch

    module = copy.deepcopy(getattr(model, "module", model)).eval()
    channels_last = bool(getattr(model, "prefers_channels_last", False)) and xb.dim() == 4
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
        xb = xb.contiguous(memory_format=torch.channels_last)

    def once() -> float:
        t = time.perf_counter()
        with torch.enable_grad():
            out = module(xb)
            out.float().sum().backward()
        for p in module.parameters():
            p.grad = None
        return time.perf_counter() - t

    rng = torch.random.get_rng_state()
    times: dict[int, float] = {}
    spent = time.perf_counter()
    try:
        for k in (1, n_cores):
            with using(k):
                first = once()  # warm-up (oneDNN primitive creation)
                best = first
                for _ in range(REPEATS):
                    if time.perf_counter() - spent > MEASURE_BUDGET_S:
                        break
                    best = min(best, once())
                times[k] = best
    finally:
        torch.random.set_rng_state(rng)
    pick = min(times, key=times.__getitem__)
    detail = ", ".join(f"{k} thread{'s' if k > 1 else ''} {v * 1e3:.1f} ms" for k, v in times.items())
    return ThreadChoice(pick, "measured", f"{detail} per forward+backward of {xb.shape[0]}")
