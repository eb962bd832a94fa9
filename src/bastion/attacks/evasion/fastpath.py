"""Opt-in fixed-shape fast path for iterative attacks: one attack step captured as a CUDA graph.

Small models on a GPU are launch-bound: a PGD step on an MNIST CNN or a CIFAR ResNet-20
issues hundreds of tiny kernels, and the Python and dispatcher overhead of launching them
costs more than the arithmetic. CUDA graphs (NVIDIA's stream capture, exposed as
`torch.cuda.CUDAGraph`) record the kernels of one step once and replay them with a single
launch, which removes that overhead when every step has the same shapes.

The design keeps one source of truth for the arithmetic. An attack describes one step as a
pure function `step(*state, *consts) -> new_state` (a tuple of tensors; no host syncs, no
data-dependent shapes, no randomness) and hands it to a `StepLoop`:

* eager (the default, and always on CPU): `state = step(*state, *consts)`, `n` times. The
  attacks' own loops are this call, so the eager path is the attack itself.
* CUDA graph: the state and constants are copied into static buffers, the step is warmed up
  on a side stream (so lazy initialisation and autotuning happen outside the capture), one
  step plus the write-back of its outputs into the state buffers is captured, and the graph
  is replayed `n` times. Random starts, restarts and result bookkeeping stay outside the
  graph. One graph is kept per input shape (a full batch and the remainder batch).

Because the replayed kernels are the eager kernels, fp32 results equal the eager path's
(up to the nondeterminism the GPU kernels have anyway, e.g. atomics in some backward
kernels). `bf16=True` runs the model's forward under bfloat16 autocast (gradients come back
in fp32); that changes results slightly and is a separate, explicit choice.

Modes (`fast_path=`): 'off' (eager), 'auto' (the graph when the model is on CUDA and the
attack supports it, else eager), 'cuda-graph' (the graph or a ConfigError before any work).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch

from bastion.core import ConfigError

FAST_PATH_MODES = ("off", "auto", "cuda-graph")

Step = Callable[..., tuple[torch.Tensor, ...]]


def canonical_mode(name: str, mode: str | bool) -> str:
    """The mode as one of FAST_PATH_MODES. YAML reads a bare `off` as False (config files,
    `--arg fast_path=off`), so False means 'off' and True means 'auto'."""
    if isinstance(mode, bool):
        return "auto" if mode else "off"
    if isinstance(mode, str) and mode.lower() in FAST_PATH_MODES:
        return mode.lower()
    raise ConfigError(f"{name}: fast_path must be one of {', '.join(FAST_PATH_MODES)}, "
                      f"got {mode!r}")


def check_mode(name: str, mode: str | bool) -> None:
    """Refuse an unknown fast-path mode (called from the attacks' `validate`)."""
    canonical_mode(name, mode)


def resolve(name: str, mode: str | bool, device: torch.device, supported: bool = True,
            why_unsupported: str = "") -> bool:
    """Whether to capture a CUDA graph for this call.

    'off' -> False. 'auto' -> True only on a CUDA device for a supported configuration.
    'cuda-graph' -> True, or ConfigError when the model is not on CUDA or the configuration
    cannot be captured (raised before any work)."""
    mode = canonical_mode(name, mode)
    if mode == "off":
        return False
    on_cuda = device.type == "cuda" and torch.cuda.is_available()
    if mode == "auto":
        return on_cuda and supported
    if not on_cuda:
        raise ConfigError(f"{name}: fast_path='cuda-graph' needs the model on a CUDA device "
                          f"(it is on {device}); use fast_path='auto' to fall back to the eager "
                          "path, or 'off'")
    if not supported:
        raise ConfigError(f"{name}: fast_path='cuda-graph' is not available {why_unsupported}; "
                          "use fast_path='auto' or 'off'")
    return True


class Autocast(torch.nn.Module):
    """Wraps a model so its forward runs under bfloat16 autocast on the input's device and
    returns fp32 logits (losses and gradients w.r.t. the fp32 input stay fp32)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # no cast cache, as torch.cuda.make_graphed_callables asks of autocast: the capture
        # must record the weight casts; each weight is cast once per forward anyway
        with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16,
                            cache_enabled=False):
            out = self.model(x)
        return out.float()


def maybe_bf16(model: Any, bf16: bool) -> Any:
    """The model itself, or the model wrapped in bf16 autocast."""
    return Autocast(model) if bf16 else model


class _Captured:
    """One captured graph and the static buffers it reads and writes."""

    def __init__(self, graph: Any, state: list[torch.Tensor], consts: list[torch.Tensor]) -> None:
        self.graph = graph
        self.state = state
        self.consts = consts


class StepLoop:
    """Runs a pure attack step `n` times, eagerly or as a replayed CUDA graph.

    Args:
        step: `step(*state, *consts) -> tuple` of new state tensors (same count, shapes and
            dtypes as `state`). It must not sync with the host or draw random numbers when
            `graph` is True.
        graph: capture and replay (needs every tensor on one CUDA device).
        warmup: eager warm-up steps on a side stream before the capture (on scratch copies;
            they do not count as attack steps).
        strict: when capture fails, raise (True, for fast_path='cuda-graph') or warn and
            run eagerly (False, for 'auto').
    """

    def __init__(self, step: Step, graph: bool = False, warmup: int = 3, strict: bool = False,
                 name: str = "attack") -> None:
        self.step = step
        self.graph = graph
        self.warmup = warmup
        self.strict = strict
        self.name = name
        self.captures = 0
        self._graphs: dict[tuple[Any, ...], _Captured] = {}

    def run(self, state: Sequence[torch.Tensor], consts: Sequence[torch.Tensor], n: int
            ) -> tuple[torch.Tensor, ...]:
        """Apply the step `n` times to `state`; returns the final state (fresh tensors)."""
        state = tuple(state)
        if n <= 0:
            return state
        if self.graph:
            try:
                return self._run_graph(state, tuple(consts), n)
            except ConfigError:
                raise
            except RuntimeError as err:
                if self.strict:
                    raise ConfigError(f"{self.name}: CUDA-graph capture of the attack step "
                                      f"failed ({err}); the model's forward must not sync with "
                                      "the host or change shapes; use fast_path='off'") from err
                warnings.warn(f"{self.name}: CUDA-graph capture failed ({err}); running the "
                              "eager path", stacklevel=3)
                self.graph = False
                self._graphs.clear()
        for _ in range(n):
            state = self.step(*state, *consts)
        return state

    # ----------------------------------------------------------------- CUDA graph
    def _run_graph(self, state: tuple[torch.Tensor, ...], consts: tuple[torch.Tensor, ...],
                   n: int) -> tuple[torch.Tensor, ...]:
        key = tuple((tuple(t.shape), t.dtype, t.device) for t in (*state, *consts))
        cap = self._graphs.get(key)
        if cap is None:
            cap = self._capture(state, consts)
            self._graphs[key] = cap
        for s, v in zip(cap.state, state):
            s.copy_(v)
        for s, v in zip(cap.consts, consts):
            s.copy_(v)
        for _ in range(n):
            cap.graph.replay()
        return tuple(s.clone() for s in cap.state)

    def _write_step(self, st: list[torch.Tensor], cs: list[torch.Tensor]) -> None:
        out = self.step(*st, *cs)
        if len(out) != len(st):
            raise ConfigError(f"{self.name}: the step returned {len(out)} tensors for a state "
                              f"of {len(st)}")
        for s, o in zip(st, out):
            if o is not s:
                s.copy_(o)

    def _capture(self, state: tuple[torch.Tensor, ...], consts: tuple[torch.Tensor, ...]
                 ) -> _Captured:
        dev = state[0].device
        if dev.type != "cuda":
            raise ConfigError(f"{self.name}: a CUDA graph needs CUDA tensors, got {dev}")
        st = [t.clone() for t in state]
        cs = [t.clone() for t in consts]
        side = torch.cuda.Stream(device=dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self._write_step(st, cs)
        torch.cuda.current_stream(dev).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._write_step(st, cs)
        self.captures += 1
        return _Captured(graph, st, cs)


# --------------------------------------------------------------------------- step functions
# Each factory returns the pure step the attack's own loop runs; the eager path and the
# captured graph execute exactly these operations.


def pgd_step(model: Any, norm: str, alpha: float, eps: float, lo: float, hi: float,
             targeted: bool, l1_sparsity: float = 0.99) -> Step:
    """One PGD step (Madry et al., 2018). State: (x,). Consts: (x0, labels, box_lo, box_hi);
    box_lo/box_hi are the Linf ball intersected with the bounds (ignored for L2/L1)."""
    from bastion.attacks.evasion._grad import ce_grad
    from bastion.attacks.evasion.pgd import flat_norm, l1_sparse_direction, project

    def step(x: torch.Tensor, x0: torch.Tensor, labels: torch.Tensor, box_lo: torch.Tensor,
             box_hi: torch.Tensor) -> tuple[torch.Tensor]:
        g, _ = ce_grad(model, x, labels, targeted)
        if norm == "linf":
            return (torch.max(torch.min(x + alpha * g.sign(), box_hi), box_lo),)
        if norm == "l2":
            x = x + alpha * g / flat_norm(g, 2).clamp_min(1e-12)
        else:
            x = x + alpha * l1_sparse_direction(g, x, lo, hi, l1_sparsity)
        return ((x0 + project(x - x0, norm, eps)).clamp_(lo, hi),)

    return step


def bim_step(model: Any, alpha: float, targeted: bool, early_stop: bool) -> Step:
    """One BIM / I-FGSM step (Kurakin et al., 2017). State: (x, active, queries).
    Consts: (labels, y, box_lo, box_hi); labels are the targets when targeted. With
    `early_stop`, examples stop moving after their first success (a mask, no host sync)."""
    from bastion.attacks.evasion._grad import ce_grad

    def step(x: torch.Tensor, active: torch.Tensor, queries: torch.Tensor, labels: torch.Tensor,
             y: torch.Tensor, box_lo: torch.Tensor, box_hi: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        g, logits = ce_grad(model, x, labels, targeted)
        queries = queries + active.float()
        delta = alpha * g.sign()
        if early_stop:
            pred = logits.argmax(-1)
            done = pred == labels if targeted else pred != y
            active = active & ~done
            delta = delta * active.view((-1,) + (1,) * (x.dim() - 1))
        return torch.max(torch.min(x + delta, box_hi), box_lo), active, queries

    return step
