"""DP-SGD inside your own training loop: `PrivacyEngine.make_private`, in the manner of
Opacus's `PrivacyEngine` (Yousefpour et al. 2021).

    engine = PrivacyEngine(accountant="rdp")
    model, optimizer, loader = engine.make_private(
        module=model, optimizer=optimizer, data_loader=loader,
        noise_multiplier=1.0, max_grad_norm=1.0)
    for x, y in loader:                      # Poisson-sampled batches, rate q = B / N
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()                     # clip, sum, noise, average, step, account
    engine.get_epsilon(delta=1e-5)

The mechanism is Abadi et al.'s DP-SGD (CCS 2016), computed by Bastion's own DP-SGD
(`bastion.training.dp.DPSGD.privatize`): every example's gradient is clipped to
`max_grad_norm` C (or each layer to C / sqrt(M)), the clipped gradients are summed,
Gaussian noise of std sigma C is added and the sum is divided by the expected batch size
q N. Per-example gradients come from the user's own backward pass: forward hooks record
each layer's input, tensor hooks its output gradient, and the ghost-engine rules of
`bastion.training.dp` (Goodfellow 2015's ghost norms for dense layers; per-example products
for convolutions) turn them into per-example norms and clipped sums; other leaf layers
(Embedding, custom layers) get theirs from torch.func. So any loss works, provided each
example's loss depends on that example alone (no BatchNorm).

The dynamic variants of `bastion.training.dp` are options: decaying clipping bound or noise
(Wei & Liu), l2-max sensitivity, quantile clipping (Andrew et al., NeurIPS 2021) and
AdaClip (Pichapati et al. 2019).

Noise and sampling come from generators seeded with 64 bits from the operating system's
CSPRNG by default; `noise_seed=` makes a run reproducible for research and NOT private.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, Sampler

from bastion.core import Classifier, ConfigError, InputSpec
from bastion.privacy.accountants import check_delta, check_guarantee, noise_multiplier
from bastion.privacy.statement import NOISE_SECURE, NOISE_SEEDED
from bastion.training.dp import (
    _DYNAMICS,
    _GHOST_TYPES,
    DPSGD,
    DPConfig,
    GhostEngine,
    PerExample,
    StepInfo,
    _conv_pad,
    _owned_params,
    canonical_variant,
    find_batchnorm,
    noise_generator,
)

LOSS_REDUCTIONS = ("mean", "sum")
_SUPPORTED = ", ".join(t.__name__ for t in _GHOST_TYPES)


def _positive(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not value > 0:
        raise ConfigError(f"{name} must be a positive number, got {value!r}")
    return float(value)


# --------------------------------------------------------------------------- per-example gradients


def _has_ghost_rule(m: nn.Module) -> bool:
    """Whether the ghost engine's rules cover layer `m` (else torch.func does)."""
    if not isinstance(m, _GHOST_TYPES):
        return False
    if isinstance(m, (nn.Conv1d, nn.Conv2d)):
        if m.padding_mode != "zeros":
            return False
        try:
            _conv_pad(m)
        except ConfigError:          # padding='same' with an even kernel
            return False
    return True


class LoopEngine(GhostEngine):
    """Per-example gradients of the user's own forward and backward pass.

    While the module is in training mode and gradients are enabled, a forward hook records
    each parameterised layer's input and output and puts a hook on the output that keeps
    its gradient when the user calls `loss.backward()`. `compute` then applies the ghost
    engine's per-layer rules to the recorded pairs (Linear, Conv1d/2d with zero padding,
    GroupNorm, LayerNorm). Any other layer that owns parameters but has no parameterised
    sub-layers (Embedding, a custom layer, a convolution with circular padding) gets its
    per-example gradients from torch.func: vmap over examples of the vector-Jacobian
    product of the layer with its recorded output gradient. With `loss_reduction='mean'`
    the output gradients carry a factor 1/B, which is undone (as Opacus does).
    `materialise=True` sends every layer through torch.func and keeps the per-example
    gradients (`PerExample.per_sample`), which AdaClip needs."""

    def __init__(self, module: nn.Module, loss_reduction: str = "mean",
                 materialise: bool = False) -> None:
        bns = find_batchnorm(module)
        if bns:
            raise ConfigError(
                f"DP-SGD cannot train a model with BatchNorm ({', '.join(bns[:3])}): it mixes the "
                "examples of a batch, so per-example gradients are undefined; use GroupNorm instead "
                "(bastion.training.dp.replace_batchnorm(module) swaps it in place; do it before "
                "creating the optimizer)")
        if loss_reduction not in LOSS_REDUCTIONS:
            raise ConfigError(f"loss_reduction must be 'mean' or 'sum', got {loss_reduction!r}")
        # GhostEngine's fields, set here: its constructor refuses layers without a ghost rule
        self.layers = [m for m in module.modules() if _owned_params(m)]
        self._fallback: set[int] = set()
        for name, m in module.named_modules():
            if m not in self.layers or (_has_ghost_rule(m) and not materialise):
                continue
            if any(_owned_params(c) for c in m.modules() if c is not m):
                raise ConfigError(f"layer {name or '<root>'} ({type(m).__name__}) owns parameters and "
                                  "also has parameterised sub-layers; the private training loop "
                                  f"needs each parameter in a leaf layer ({_SUPPORTED} have "
                                  "fast rules, other leaf layers use torch.func)")
            self._fallback.add(id(m))
        self.params, self.group_of = [], []
        for k, m in enumerate(self.layers):
            for p in _owned_params(m):
                self.params.append(p)
                self.group_of.append(k)
        if len({id(p) for p in self.params}) != len(self.params):
            raise ConfigError("a parameter is shared by two layers (tied weights); the private "
                              "training loop needs each parameter in one layer")
        self.num_groups = len(self.layers)
        self._records: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._versions: dict[int, int] = {}
        self._inputs: dict[int, tuple[torch.Tensor, ...]] = {}
        self._grads: dict[int, torch.Tensor] = {}
        self._per: dict[int, list[torch.Tensor]] = {}
        self.materialise = materialise
        self._replaying = False
        self._generation = 0           # bumped by clear(): output-gradient hooks of older passes
        self._active = True
        self.loss_reduction = loss_reduction
        self._handles = [m.register_forward_hook(self._hook) for m in self.layers]

    def _hook(self, m: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        if self._replaying or not (m.training and torch.is_grad_enabled()):
            return
        key = id(m)
        if not isinstance(out, torch.Tensor):
            raise ConfigError(f"layer {type(m).__name__} returns {type(out).__name__}, not one "
                              "tensor; the private training loop needs parameterised layers "
                              "that return a tensor")
        if not out.requires_grad:
            return
        if key in self._records:
            if self._grads:
                raise ConfigError(
                    f"layer {type(m).__name__} ran a second forward pass after loss.backward() "
                    "and before optimizer.step(): call optimizer.step() once per forward and "
                    "backward pass (gradient accumulation and weight sharing are not supported)")
            self.clear()   # an earlier forward pass that never reached backward: discard it
        if key in self._fallback:
            if not inp or not all(isinstance(t, torch.Tensor) and t.dim() > 0
                                  and t.shape[0] == out.shape[0] for t in inp):
                raise ConfigError(f"layer {type(m).__name__}: per-example gradients by torch.func "
                                  "need every positional input to be a batched tensor")
            self._inputs[key] = tuple(t.detach() for t in inp)
        self._records[key] = (inp[0].detach(), out)
        self._versions[key] = out._version

        generation = self._generation

        def keep(g: torch.Tensor) -> None:
            if generation != self._generation:
                raise ConfigError(
                    "loss.backward() reached a forward pass of the private model that a later "
                    "forward pass, optimizer.zero_grad() or optimizer.step() had already "
                    "superseded: do one forward pass, then backward, then step (a layer applied "
                    "twice, or a loss over several forward passes, is not supported)")
            self._grads[key] = g.detach()
        out.register_hook(keep)

    def clear(self) -> None:
        self._generation += 1
        self._records.clear()
        self._versions.clear()
        self._inputs.clear()
        self._grads.clear()

    def _rule(self, m: nn.Module, a: torch.Tensor, g: torch.Tensor
              ) -> tuple[torch.Tensor, Callable[[torch.Tensor], list[torch.Tensor]]]:
        if id(m) not in self._fallback:
            return super()._rule(m, a, g)
        return self._vmap_rule(m, self._inputs[id(m)], g)

    def _vmap_rule(self, m: nn.Module, inputs: tuple[torch.Tensor, ...], g: torch.Tensor
                   ) -> tuple[torch.Tensor, Callable[[torch.Tensor], list[torch.Tensor]]]:
        """Per-example gradients of layer `m`'s own parameters by torch.func: for each
        example i, the vector-Jacobian product of m at input x_i with output gradient g_i."""
        from torch.func import functional_call, vjp, vmap
        params = {n: p.detach() for n, p in m.named_parameters(recurse=False) if p.requires_grad}

        def one(prm: dict[str, torch.Tensor], gi: torch.Tensor, *xi: torch.Tensor
                ) -> dict[str, torch.Tensor]:
            _, pull = vjp(lambda pr: functional_call(m, pr, tuple(t.unsqueeze(0) for t in xi)), prm)
            return pull(gi.unsqueeze(0))[0]

        b = g.shape[0]
        self._replaying = True
        try:
            per_d = vmap(one, in_dims=(None, 0, *([0] * len(inputs))))(params, g, *inputs) if b else {
                n: p.new_zeros((0, *p.shape)) for n, p in params.items()}
        finally:
            self._replaying = False
        per = [per_d[n] for n in params]
        self._per[id(m)] = per
        nsq = sum(t.reshape(b, -1).pow(2).sum(1) for t in per)

        def fn(w: torch.Tensor) -> list[torch.Tensor]:
            return [torch.einsum("b,b...->...", w, t) for t in per]
        return nsq, fn  # type: ignore[return-value]

    def batch_size(self) -> int:
        """The batch size of the recorded forward pass; ConfigError when there is none or
        backward has not run."""
        if not self._records:
            raise ConfigError("optimizer.step() needs a forward pass of the private model in "
                              "training mode, and loss.backward(), first")
        if not self._grads:
            raise ConfigError("optimizer.step() was called before loss.backward()")
        return next(iter(self._records.values()))[0].shape[0]

    def compute(self, clf: Classifier, x: torch.Tensor, y: torch.Tensor) -> PerExample:
        b = self.batch_size()
        used = [m for m in self.layers if id(m) in self._records]
        for m in used:
            if self._records[id(m)][1]._version != self._versions[id(m)]:
                raise ConfigError(f"the output of {m} is modified in place later in the forward "
                                  "pass (e.g. ReLU(inplace=True)); use inplace=False")
        scale = float(b) if self.loss_reduction == "mean" else 1.0
        grads = [None if id(m) not in self._grads else self._grads[id(m)] * scale for m in used]
        self._per.clear()
        pe = self._per_example(used, grads, b, self.params[0])   # float, on the model's device
        if self.materialise:
            per = [t for m in self.layers for t in self._per.get(id(m)) or
                   [p.new_zeros((b, *p.shape)) for p in _owned_params(m)]]
            pe.per_sample = lambda: per
        self.clear()
        return pe


# --------------------------------------------------------------------------- Poisson sampling


class PoissonBatchSampler(Sampler[list[int]]):
    """Batches in which each of the `n` examples appears independently with probability
    `q` (Poisson sampling, the sampling the accountants assume); `steps` batches an epoch.
    Batches vary in size and may be empty."""

    def __init__(self, n: int, q: float, steps: int, generator: torch.Generator) -> None:
        self.n, self.q, self.steps, self.generator = n, q, steps, generator

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[list[int]]:
        for _ in range(self.steps):
            keep = torch.rand(self.n, generator=self.generator) < self.q
            yield keep.nonzero().flatten().tolist()


def _empty_like(batch: Any) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch[:0]
    if isinstance(batch, (tuple, list)):
        return type(batch)(_empty_like(b) for b in batch)
    if isinstance(batch, Mapping):
        return {k: _empty_like(v) for k, v in batch.items()}
    return batch


def _collate_allowing_empty(dataset: Any, collate: Callable[[list[Any]], Any]) -> Callable[[list[Any]], Any]:
    """`collate`, except that an empty sample list gives the batch structure with zero rows
    (shaped like one collated example), so an empty Poisson batch flows through the loop."""
    def fn(samples: list[Any]) -> Any:
        if samples:
            return collate(samples)
        return _empty_like(collate([dataset[0]]))
    return fn


def poisson_loader(data_loader: DataLoader, q: float, steps: int,
                   generator: torch.Generator) -> DataLoader:
    """A DataLoader over `data_loader`'s dataset and collate function that yields `steps`
    Poisson-sampled batches (rate `q`) per epoch; workers and pinning are kept."""
    ds = data_loader.dataset
    return DataLoader(ds, batch_sampler=PoissonBatchSampler(len(ds), q, steps, generator),  # type: ignore[arg-type]
                      collate_fn=_collate_allowing_empty(ds, data_loader.collate_fn),
                      num_workers=data_loader.num_workers, pin_memory=data_loader.pin_memory,
                      worker_init_fn=data_loader.worker_init_fn,
                      persistent_workers=data_loader.persistent_workers)


# --------------------------------------------------------------------------- optimizer


class DPOptimizer(torch.optim.Optimizer):
    """Wraps the user's optimizer: `step()` replaces the gradients of the user's backward
    pass by their DP-SGD version (clip, sum, noise, divide by the expected batch size),
    steps the wrapped optimizer and charges the privacy ledger. `param_groups` and `state`
    are the wrapped optimizer's, so learning-rate schedulers work on it."""

    def __init__(self, optimizer: torch.optim.Optimizer, dp: DPSGD, engine: LoopEngine,
                 max_steps: int | None = None) -> None:
        # no Optimizer.__init__: the wrapped optimizer owns the parameters and their state
        self.original_optimizer = optimizer
        self.dp = dp
        self.engine = engine
        self.max_steps = max_steps
        self.last_step: StepInfo | None = None
        self._step_hooks: dict[int, Any] = {}
        self._optimizer_step_pre_hooks: dict[int, Any] = {}
        self._optimizer_step_post_hooks: dict[int, Any] = {}

    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return self.original_optimizer.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        self.original_optimizer.param_groups = value

    @property
    def state(self) -> Any:  # type: ignore[override]
        return self.original_optimizer.state

    @state.setter
    def state(self, value: Any) -> None:
        self.original_optimizer.state = value

    @property
    def defaults(self) -> dict[str, Any]:  # type: ignore[override]
        return self.original_optimizer.defaults

    @defaults.setter
    def defaults(self, value: dict[str, Any]) -> None:
        self.original_optimizer.defaults = value

    @property
    def steps(self) -> int:
        """Private steps taken so far."""
        return self.dp.t

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.original_optimizer.zero_grad(set_to_none=set_to_none)
        self.engine.clear()

    def state_dict(self) -> dict[str, Any]:
        return self.original_optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.original_optimizer.load_state_dict(state_dict)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.max_steps is not None and self.dp.t >= self.max_steps:
            self.engine.clear()
            raise ConfigError(f"the privacy budget is spent: make_private_with_epsilon planned "
                              f"{self.max_steps} steps and one more would exceed the target epsilon")
        b = self.engine.batch_size()
        # privatize takes the batch for its size; the engine answers from the hooks
        shape = torch.empty(b, 0, device=self.dp.clf.device)
        grads, info = self.dp.privatize(shape, shape)
        self.dp.apply(grads, info, self.original_optimizer)
        self.last_step = info
        return loss

    def __repr__(self) -> str:
        return f"DPOptimizer({self.original_optimizer!r})"


# --------------------------------------------------------------------------- the engine


class PrivacyEngine:
    """Make a model, optimizer and data loader private for the user's own training loop.

    Args:
        accountant: the guarantee that `get_epsilon` reports and `make_private_with_epsilon`
            calibrates with: 'rdp' (default, Mironov et al. 2019), 'moments', 'prv' (Gopi
            et al. 2021; needs Opacus) or 'pld' (needs dp-accounting). Reference formulas
            are refused: they are not guarantees.
    """

    def __init__(self, accountant: str = "rdp") -> None:
        self.accountant = check_guarantee(accountant)
        self.dp: DPSGD | None = None
        self.optimizer: DPOptimizer | None = None
        self.poisson = True
        self.dataset_size = 0
        self.batch_size = 0
        self.target: tuple[float, float] | None = None

    # -- set up -------------------------------------------------------------------
    def make_private(self, *, module: nn.Module, optimizer: torch.optim.Optimizer,
                     data_loader: DataLoader, noise_multiplier: float, max_grad_norm: float,
                     poisson_sampling: bool = True, loss_reduction: str = "mean",
                     noise_seed: int | None = None, variant: str = "baseline",
                     per_layer: bool = False, epochs: float | None = None,
                     decay: str = "linear", sigma_decay: str | None = None,
                     clip_final: float | None = None, sigma_final: float | None = None,
                     half_period: int | None = None, target_quantile: float = 0.5,
                     clip_lr: float = 0.2, count_noise: float | None = None,
                     adaclip_betas: tuple[float, float] = (0.99, 0.9),
                     adaclip_bounds: tuple[float, float] = (1e-10, 1e2),
                     ) -> tuple[nn.Module, DPOptimizer, DataLoader]:
        """Return (module, optimizer, data_loader) ready for a private training loop.

        The module is returned as is, with hooks that record per-example gradient
        information; the optimizer is a `DPOptimizer` around `optimizer`; the loader yields
        Poisson-sampled batches at rate q = data_loader.batch_size / len(dataset),
        round(1 / q) batches an epoch (with `poisson_sampling=False`, the loader unchanged:
        faster to compare, but the epsilon then assumes a sampling the run did not use).

        Args:
            noise_multiplier: sigma (> 0); the noise std is sigma * max_grad_norm.
            max_grad_norm: the clipping bound C (> 0) of each example's gradient.
            loss_reduction: 'mean' (the loss averages over the batch, the default of
                torch's losses) or 'sum'.
            noise_seed: None (default): noise and sampling from the OS's CSPRNG. An integer
                seeds them: reproducible, but NOT private (warns).
            variant: 'baseline', 'cdecay', 'dyn-sigma', 'l2-max', 'dyn-s', 'dyn-s-sigma',
                'quantile' or 'adaclip' (see `bastion.training.dp`); the decaying ones need
                `epochs`; adaclip materialises per-example gradients (slower).
            per_layer: clip each of the M layers to C / sqrt(M) instead of the whole gradient.
            epochs: planned length (the decay schedules run over it).
            decay, sigma_decay, clip_final, sigma_final, half_period: the decay schedules
                (`DPConfig`'s meaning and defaults).
            target_quantile, clip_lr, count_noise: quantile clipping (Andrew et al. 2021).
            adaclip_betas, adaclip_bounds: AdaClip (Pichapati et al. 2019).
        """
        if self.dp is not None:
            raise ConfigError("this PrivacyEngine already trains a model; create one "
                              "PrivacyEngine per model")
        sigma = _positive(noise_multiplier, "noise_multiplier")
        clip = _positive(max_grad_norm, "max_grad_norm")
        if not isinstance(module, nn.Module):
            raise ConfigError(f"module must be a torch.nn.Module, got {type(module).__name__}")
        if not isinstance(optimizer, torch.optim.Optimizer) or isinstance(optimizer, DPOptimizer):
            raise ConfigError("optimizer must be a torch.optim.Optimizer over the module's "
                              "parameters (not already private)")
        n, batch = self._loader_facts(data_loader)
        name = canonical_variant(variant)
        decays = _DYNAMICS[name][0] or _DYNAMICS[name][2]
        if decays and epochs is None:
            raise ConfigError(f"variant {name} decays its parameters over the planned run: pass "
                              "epochs=")
        steps_per_epoch = max(1, round(n / batch)) if poisson_sampling else max(1, len(data_loader))
        if epochs is not None:
            planned = max(1, round(_positive(epochs, "epochs") * steps_per_epoch))
        else:
            planned = steps_per_epoch
        cfg = DPConfig(sigma=sigma, clip=clip, variant=name, decay=decay, sigma_decay=sigma_decay,
                       clip_final=clip_final, sigma_final=sigma_final, half_period=half_period,
                       per_layer=per_layer, batch_size=batch, steps=planned,
                       accountant=self.accountant, poisson=poisson_sampling,
                       target_quantile=target_quantile, clip_lr=clip_lr, count_noise=count_noise,
                       adaclip_betas=tuple(adaclip_betas), adaclip_bounds=tuple(adaclip_bounds),  # type: ignore[arg-type]
                       noise_seed=noise_seed, progress=False)
        cfg.validate(n)
        engine = LoopEngine(module, loss_reduction, materialise=name == "adaclip")
        try:
            self._check_optimizer(optimizer, engine)
            handle = _handle(module)
            dp = DPSGD(handle, cfg, n, steps=planned, engine=engine)
        except Exception:
            engine.close()
            raise
        self.dp, self.poisson, self.dataset_size, self.batch_size = dp, poisson_sampling, n, batch
        self.optimizer = DPOptimizer(optimizer, dp, engine)
        if poisson_sampling:
            seed_cfg = cfg if noise_seed is None else replace(cfg, noise_seed=(noise_seed + 1) % 2**63)
            loader = poisson_loader(data_loader, dp.q, steps_per_epoch,
                                    noise_generator(seed_cfg, "cpu", warn=False))
        else:
            warnings.warn("poisson_sampling=False: the batches are not Poisson-sampled, so the "
                          "reported epsilon assumes a sampling this run does not use", UserWarning,
                          stacklevel=2)
            loader = data_loader
        return module, self.optimizer, loader

    def make_private_with_epsilon(self, *, module: nn.Module, optimizer: torch.optim.Optimizer,
                                  data_loader: DataLoader, target_epsilon: float,
                                  target_delta: float, epochs: float, max_grad_norm: float,
                                  **options: Any) -> tuple[nn.Module, DPOptimizer, DataLoader]:
        """`make_private` with the smallest noise multiplier whose planned run (`epochs`
        epochs at rate q) spends at most `target_epsilon` at `target_delta` under this
        engine's accountant (bisection, on the safe side). The optimizer refuses steps
        beyond the planned run, so the budget cannot be overspent. `options` are
        make_private's; variants that decay sigma are refused (sigma is calibrated as a
        constant)."""
        eps = _positive(target_epsilon, "target_epsilon")
        delta = check_delta(target_delta)
        ep = _positive(epochs, "epochs")
        if "noise_multiplier" in options:
            raise ConfigError("make_private_with_epsilon chooses noise_multiplier itself; use "
                              "make_private to set it")
        name = canonical_variant(options.get("variant", "baseline"))
        if _DYNAMICS[name][2]:
            raise ConfigError(f"variant {name} decays sigma; make_private_with_epsilon calibrates a "
                              "constant sigma (use make_private and check get_epsilon)")
        n, batch = self._loader_facts(data_loader)
        poisson = options.get("poisson_sampling", True)
        steps_per_epoch = max(1, round(n / batch)) if poisson else max(1, len(data_loader))
        steps = max(1, round(ep * steps_per_epoch))
        sigma = noise_multiplier(eps, batch / n, steps, delta, self.accountant)
        out = self.make_private(module=module, optimizer=optimizer, data_loader=data_loader,
                                noise_multiplier=sigma, max_grad_norm=max_grad_norm,
                                epochs=ep, **options)
        assert self.optimizer is not None
        self.optimizer.max_steps = steps
        self.target = (eps, delta)
        return out

    @staticmethod
    def _loader_facts(data_loader: Any) -> tuple[int, int]:
        if not isinstance(data_loader, DataLoader):
            raise ConfigError(f"data_loader must be a torch DataLoader, got {type(data_loader).__name__}")
        if isinstance(data_loader.dataset, IterableDataset):
            raise ConfigError("DP-SGD needs a map-style dataset (with len and indexing) to sample "
                              "from, not an IterableDataset")
        n = len(data_loader.dataset)  # type: ignore[arg-type]
        if n < 1:
            raise ConfigError("the data loader's dataset is empty")
        batch = data_loader.batch_size
        if batch is None:
            raise ConfigError("the data loader needs a batch_size (the expected batch size of "
                              "Poisson sampling)")
        if batch > n:
            raise ConfigError(f"batch_size {batch} exceeds the dataset size {n}")
        return n, int(batch)

    @staticmethod
    def _check_optimizer(optimizer: torch.optim.Optimizer, engine: LoopEngine) -> None:
        private = {id(p) for p in engine.params}
        stray = [p for g in optimizer.param_groups for p in g["params"]
                 if p.requires_grad and id(p) not in private]
        if stray:
            raise ConfigError(f"the optimizer holds {len(stray)} trainable parameters that are not "
                              "the module's; they would be updated with non-private gradients")
        if not engine.params:
            raise ConfigError("the module has no trainable parameters")

    # -- privacy ------------------------------------------------------------------
    def _require(self) -> DPSGD:
        if self.dp is None:
            raise ConfigError("call make_private (or make_private_with_epsilon) first")
        return self.dp

    @property
    def steps(self) -> int:
        """Private steps taken so far."""
        return self._require().t

    @property
    def noise_multiplier(self) -> float:
        return self._require().cfg.sigma

    @property
    def sample_rate(self) -> float:
        return self._require().q

    def get_epsilon(self, delta: float, accountant: str | None = None) -> float:
        """The epsilon spent so far at `delta` under `accountant` (default: the engine's),
        a guarantee; 0 before the first step."""
        dp = self._require()
        acc = self.accountant if accountant is None else check_guarantee(accountant)
        delta = check_delta(delta)
        if dp.ledger.steps == 0:
            return 0.0
        return float(dp.ledger.bound(delta, acc))

    def privacy_summary(self, delta: float) -> dict[str, Any]:
        """Every accountant's labelled figure (guarantee or reference formula) and the
        headline guarantee, as `PrivacyLedger.summary`."""
        return self._require().ledger.summary(check_delta(delta))

    def privacy_record(self, delta: float) -> dict[str, Any]:
        """The record `bastion.privacy.statement.dp_statement` turns into a DP statement."""
        dp = self._require()
        summ = self.privacy_summary(delta)
        sig = [g.sigma for g in dp.ledger.groups] or [dp.cfg.sigma]
        return {"mechanism": "DP-SGD (Poisson-subsampled Gaussian)", "variant": dp.variant,
                "sigma": dp.cfg.sigma, "clip": dp.cfg.clip, "delta": summ["delta"],
                "per_layer": dp.cfg.per_layer, "batch_size": self.batch_size,
                "sample_rate": dp.q, "steps": dp.t, "dataset_size": self.dataset_size,
                "poisson": self.poisson, "headline": summ["headline"],
                "accountants": summ["accountants"],
                "noise": NOISE_SECURE if dp.cfg.noise_seed is None else NOISE_SEEDED,
                "sigma_range": [min(sig), max(sig)],
                "schedule": [[g.q, g.sigma, g.count] for g in dp.ledger.groups]}

    def detach(self) -> None:
        """Remove the hooks from the module (it then trains and evaluates as a plain module)."""
        if self.dp is not None:
            self.dp.close()


def _handle(module: nn.Module) -> Classifier:
    """The Classifier DPSGD expects: it only reads the device and calls train(); the spec is
    never used, since the user's loop does its own forward passes. The module's training
    mode is left as it was (Classifier() would switch it to eval)."""
    training = module.training
    dev = next((p.device for p in module.parameters()), torch.device("cpu"))
    clf = Classifier(module, InputSpec((1,)), 2, device=dev, name="private-loop")
    module.train(training)
    return clf
