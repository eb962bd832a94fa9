"""Shared machinery of the gradient-leakage attacks: the result type, dummy
initialisations, analytic label inference, the dummy-gradient computation and the
optimisation loop with per-iteration bookkeeping.

Dummy gradients are computed with `torch.func.functional_call` on detached copies of the
payload's weights (`create_graph=True`), so the attacked `Classifier` is never mutated.

Success criterion. The dissertation (ch. 4.6) counts a reconstruction as successful when
its MSE is below 0.70. On raw [0, 1] pixels that bound accepts pure noise (uniform noise
against an MNIST digit has MSE ~0.31), so the bound must be read on standardised images:
Bastion's default metric is the normalised MSE, nmse = MSE / Var(original), i.e. the MSE
after scaling the original to unit variance (what a dataset mean/std normalisation does).
nmse = 1 is "no better than a flat grey image"; successful reconstructions reach ~1e-5.
`success_metric='mse'` applies the threshold to plain [0, 1] MSE instead.

Stopping. An audit must not understate leakage, so an attack stops before `max_iter` only
once the reconstruction no longer improves: when the gradient distance relative to the
payload's scale (D / ||g||^2 for the L2 distance, D itself for the scale-free cosine
distance) falls below `tol`, or when the best distance has improved by less than a
relative `min_delta` over the last `patience` iterations. (An absolute tolerance of 1e-4,
CPL's rule, stopped batch-4 attacks after 21-98 of 300 iterations with 10-40x the MSE of
the full run: the payload's squared norm is ~200 there.) Every result records why it
stopped: `stop_reason` is 'converged', 'max_iterations' or 'diverged'.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch.func import functional_call

from bastion.attacks.privacy.leakage.payload import Payload, SharedGradient
from bastion.core import Classifier, ConfigError, InputError

STOP_REASONS = ("converged", "max_iterations", "diverged")
INITS = ("patterned", "random", "uniform", "dark", "light", "red", "green", "blue", "optimal")
OPTIMIZERS = ("lbfgs", "adam", "sgd")
MAX_BATCH = 16
# Luma of solid red/green/blue (ITU-R BT.601) for single-channel images.
_LUMA = {"red": 0.299, "green": 0.587, "blue": 0.114}


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class LeakageConfig:
    """Parameters shared by every reconstruction attack.

    Attributes:
        batch_size: examples to reconstruct (1..16); None = the payload's batch size, or 1.
        max_iter: attack iterations (termination condition T; 300 in DLG/CPL). One
            iteration is one optimiser step; an L-BFGS step runs up to `lbfgs_inner`
            function evaluations.
        tol: stop once the gradient distance relative to the payload's scale (D / ||g||^2
            for L2 matching) falls below this (1e-10: the float32 floor of the match).
        patience: stop once the best gradient distance has improved by less than a
            relative `min_delta` over this many iterations (0 = never; L-BFGS then sits at
            a stationary point). Only a stalled optimisation stops early.
        min_delta: relative improvement that counts as progress for `patience`.
        init: dummy initialisation, one of INITS (default 'random' = N(0, 1) as in DLG).
        optimizer: 'lbfgs', 'adam' or 'sgd'.
        lr: optimiser step size.
        lbfgs_inner: L-BFGS inner iterations per step (torch default 20, as in DLG's code).
        line_search: L-BFGS line search (None as in DLG/CPL, or 'strong_wolfe').
        success_threshold: reconstruction counts as leaked when its score is below this.
        success_metric: 'nmse' (MSE / Var(original), default) or 'mse' (raw [0, 1] MSE).
        use_payload_labels: use labels carried by the payload instead of inferring them.
        seed: seeds the dummy initialisation.
    """

    batch_size: int | None = None
    max_iter: int = 300
    tol: float = 1e-10
    patience: int = 10
    min_delta: float = 1e-6
    init: str = "random"
    optimizer: str = "lbfgs"
    lr: float = 1.0
    lbfgs_inner: int = 20
    line_search: str | None = None
    success_threshold: float = 0.7
    success_metric: str = "nmse"
    use_payload_labels: bool = True
    seed: int = 0

    def validate(self) -> None:
        if self.batch_size is not None and not 1 <= self.batch_size <= MAX_BATCH:
            raise ConfigError(f"batch_size must be in [1, {MAX_BATCH}], got {self.batch_size}")
        if self.max_iter < 1:
            raise ConfigError(f"max_iter must be >= 1, got {self.max_iter}")
        if self.tol < 0:
            raise ConfigError(f"tol must be >= 0, got {self.tol}")
        if self.patience < 0:
            raise ConfigError(f"patience must be >= 0 (0 = run all max_iter), got {self.patience}")
        if not 0 <= self.min_delta < 1:
            raise ConfigError(f"min_delta must be in [0, 1), got {self.min_delta}")
        if self.init not in INITS:
            raise ConfigError(f"unknown init {self.init!r}; valid: {', '.join(INITS)}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if self.lbfgs_inner < 1:
            raise ConfigError(f"lbfgs_inner must be >= 1, got {self.lbfgs_inner}")
        if self.line_search not in (None, "strong_wolfe"):
            raise ConfigError(f"line_search must be None or 'strong_wolfe', got {self.line_search!r}")
        if self.success_metric not in ("nmse", "mse"):
            raise ConfigError(f"success_metric must be 'nmse' or 'mse', got {self.success_metric!r}")
        if not self.success_threshold > 0:
            raise ConfigError(f"success_threshold must be positive, got {self.success_threshold}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- result


@dataclass
class LeakageResult:
    """What every reconstruction attack returns.

    Attributes:
        attack: attack name.
        reconstruction: [B, *shape] dummies clipped to the model's bounds (re-ordered to
            match `reference` when one was given).
        labels: [B] inferred (or payload-given) labels of the reconstruction.
        iterations: optimiser iterations run; function_evals: dummy-gradient evaluations.
        grad_distance: gradient distance after each iteration.
        converged: stopped early (relative distance below `tol`, or no improvement for
            `patience` iterations); diverged: the optimiser produced NaN.
        stop_reason: 'converged', 'max_iterations' or 'diverged'.
        reference, reference_labels: the victim's data, used for metrics only.
        mse, nmse, psnr, ssim: per-example quality against the reference.
        success: per-example success (score < threshold at the end).
        iterations_to_success: first iteration the example was under the threshold (-1 never).
        score_history: [iterations + 1, B] best-match score per reference example after each
            iteration (row 0 = the initialisation), for ASR-versus-iteration-cap curves.
        wall_time: seconds; params: the configuration.
    """

    attack: str
    reconstruction: torch.Tensor
    labels: torch.Tensor
    iterations: int
    function_evals: int
    grad_distance: list[float]
    converged: bool
    diverged: bool
    wall_time: float
    params: dict[str, Any]
    reference: torch.Tensor | None = None
    reference_labels: torch.Tensor | None = None
    mse: torch.Tensor | None = None
    nmse: torch.Tensor | None = None
    psnr: torch.Tensor | None = None
    ssim: torch.Tensor | None = None
    success: torch.Tensor | None = None
    iterations_to_success: torch.Tensor | None = None
    score_history: torch.Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    stop_reason: str = "max_iterations"

    @property
    def batch_size(self) -> int:
        return int(self.reconstruction.shape[0])

    @property
    def label_accuracy(self) -> float | None:
        """Fraction of reference labels recovered (as a multiset for batches)."""
        if self.reference_labels is None:
            return None
        got = torch.bincount(self.labels.cpu(), minlength=1)
        want = torch.bincount(self.reference_labels.cpu(), minlength=1)
        n = max(got.numel(), want.numel())
        got, want = F.pad(got, (0, n - got.numel())), F.pad(want, (0, n - want.numel()))
        return float(torch.minimum(got, want).sum()) / max(int(want.sum()), 1)

    @property
    def success_rate(self) -> float | None:
        return None if self.success is None else float(self.success.float().mean())

    def asr_at(self, cap: int) -> float:
        """Attack success rate had the attack stopped after `cap` iterations."""
        if self.score_history is None:
            raise ConfigError("asr_at needs a reference (victim data) to score against")
        t = min(int(cap), self.score_history.shape[0] - 1)
        thr = float(self.params.get("success_threshold", 0.7))
        return float((self.score_history[t] < thr).float().mean())

    def summary(self) -> dict[str, Any]:
        def mean(t: torch.Tensor | None) -> float | None:
            if t is None:
                return None
            t = t.float()
            t = t[torch.isfinite(t)]
            return float(t.mean()) if t.numel() else None
        its = None
        if self.iterations_to_success is not None and bool((self.iterations_to_success >= 0).any()):
            its = mean(self.iterations_to_success[self.iterations_to_success >= 0])
        return {
            "attack": self.attack, "batch_size": self.batch_size, "iterations": self.iterations,
            "function_evals": self.function_evals, "converged": self.converged,
            "diverged": self.diverged, "stop_reason": self.stop_reason,
            "max_iter": self.params.get("max_iter"),
            "final_grad_distance": self.grad_distance[-1] if self.grad_distance else None,
            "success_rate": self.success_rate, "iterations_to_success": its,
            "mse": mean(self.mse), "nmse": mean(self.nmse), "psnr": mean(self.psnr),
            "ssim": mean(self.ssim), "label_accuracy": self.label_accuracy,
            "wall_time_s": self.wall_time, "params": self.params,
        }

    def cpu(self) -> LeakageResult:
        out = LeakageResult(**{k: getattr(self, k) for k in self.__dataclass_fields__})
        for k in self.__dataclass_fields__:
            v = getattr(out, k)
            if isinstance(v, torch.Tensor):
                setattr(out, k, v.detach().cpu())
        return out


# --------------------------------------------------------------------------- preparation


def prepare(model: Classifier, payload: Payload, cfg: LeakageConfig,
            reference: torch.Tensor | None, reference_labels: torch.Tensor | None
            ) -> tuple[SharedGradient, int]:
    """Validate config and payload against the model; return the gradient payload on the
    model's device and the number of examples to reconstruct."""
    cfg.validate()
    if not isinstance(payload, (SharedGradient,)) and not hasattr(payload, "to_gradient"):
        raise InputError(f"payload must be a SharedGradient or WeightUpdate, got {type(payload).__name__}")
    payload.validate(model)
    grad = payload.to_gradient().to(model.device)
    b = cfg.batch_size or grad.batch_size or 1
    if grad.batch_size is not None and b > grad.batch_size:
        raise InputError(f"cannot reconstruct {b} examples from a payload of batch size {grad.batch_size}")
    if grad.batch_size is not None and b != grad.batch_size:
        raise InputError(f"batch_size {b} differs from the payload's batch size {grad.batch_size}; "
                         "the attack must model the whole batch behind the gradient")
    if b > MAX_BATCH:
        raise InputError(f"batch reconstruction supports at most {MAX_BATCH} examples, got {b}")
    if reference is not None:
        if tuple(reference.shape) != (b, *model.spec.shape):
            raise InputError(f"reference has shape {tuple(reference.shape)}, expected "
                             f"{(b, *model.spec.shape)}")
        if reference_labels is not None and reference_labels.numel() != b:
            raise InputError(f"{reference_labels.numel()} reference labels for {b} examples")
    return grad, b


def output_layer(model: Classifier, grad: SharedGradient) -> tuple[str, str | None]:
    """Names of the last weight matrix with `num_classes` rows and its bias (if any)."""
    names = [n for n, _ in model.named_parameters() if n in grad.gradients]
    for n in reversed(names):
        g = grad.gradients[n]
        if g.dim() == 2 and g.shape[0] == model.num_classes:
            bias = n[: -len("weight")] + "bias" if n.endswith("weight") else None
            return n, bias if bias in grad.gradients else None
    raise InputError("no output layer (a [num_classes, d] weight) found in the payload; "
                     "give the labels in the payload instead")


def infer_labels(model: Classifier, grad: SharedGradient, batch_size: int) -> torch.Tensor:
    """Analytic label inference from the output layer's gradient (iDLG, Zhao et al. 2020;
    CPL, Algorithm 4 line 9).

    For cross-entropy, d loss / d b_c = mean_i (p_ic - [y_i = c]) and the weight rows are
    that times non-negative features, so only the classes present in the batch can have
    negative entries. Batch size 1: the argmin. Larger batches: the classes with negative
    entries, with the remaining slots spread in proportion to their magnitude.
    """
    w_name, b_name = output_layer(model, grad)
    sig = grad.gradients[b_name] if b_name is not None else grad.gradients[w_name].sum(1)
    sig = sig.detach().float()
    if batch_size == 1:
        return sig.argmin().view(1)
    neg = (-sig).clamp_min(0)
    order = torch.argsort(sig)
    present = [int(c) for c in order if neg[c] > 0][:batch_size]
    if not present:
        present = [int(order[0])]
    counts = dict.fromkeys(present, 1)
    mass = neg[present]
    remaining = batch_size - len(present)
    if remaining > 0:
        share = mass / mass.sum() * batch_size
        for _ in range(remaining):
            deficit = torch.tensor([share[i] - counts[c] for i, c in enumerate(present)])
            c = present[int(deficit.argmax())]
            counts[c] += 1
    labels = [c for c in sorted(counts) for _ in range(counts[c])]
    return torch.tensor(labels, dtype=torch.long, device=sig.device)


def init_dummies(init: str, shape: Sequence[int], batch_size: int, bounds: tuple[float, float],
                 labels: torch.Tensor, gen: torch.Generator, device: torch.device,
                 pool: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Dummy seeds (CPL, ch. 5.4.1): random (N(0, 1), the random seed of DLG's and CPL's
    reference code, "CPL-random"), uniform (U within the bounds), patterned (a uniform
    random tile of a quarter of the image repeated over it), dark / light (the lower /
    upper bound), red / green / blue (solid colour; its luma for 1-channel images),
    optimal (a real example of the same class from `pool`, a reference point)."""
    lo, hi = bounds
    full = (batch_size, *shape)
    if init == "uniform":
        x = lo + (hi - lo) * torch.rand(full, generator=gen)
    elif init == "random":
        x = torch.randn(full, generator=gen)
    elif init == "patterned":
        if len(shape) != 3:
            raise ConfigError("patterned initialisation needs image inputs [C, H, W]")
        c, h, w = shape
        th, tw = max(1, math.ceil(h / 2)), max(1, math.ceil(w / 2))
        tile = lo + (hi - lo) * torch.rand((batch_size, c, th, tw), generator=gen)
        x = tile.repeat(1, 1, 2, 2)[:, :, :h, :w]
    elif init in ("dark", "light"):
        x = torch.full(full, lo if init == "dark" else hi)
    elif init in _LUMA:
        if len(shape) == 3 and shape[0] == 3:
            x = torch.full(full, lo)
            x[:, ("red", "green", "blue").index(init)] = hi
        else:
            x = torch.full(full, lo + (hi - lo) * _LUMA[init])
    elif init == "optimal":
        if pool is None:
            raise ConfigError("init='optimal' needs init_pool=(x, y): real examples to start from "
                              "(kept apart from the victim's data)")
        px, py = pool
        rows = []
        for i, c in enumerate(labels.tolist()):
            idx = torch.nonzero(py.cpu() == c).flatten()
            if idx.numel() == 0:
                raise ConfigError(f"init_pool holds no example of class {c}")
            rows.append(px[idx[i % idx.numel()]].cpu())
        x = torch.stack(rows).float()
    else:
        raise ConfigError(f"unknown init {init!r}; valid: {', '.join(INITS)}")
    return x.to(device).float()


# --------------------------------------------------------------------------- gradients


def attack_weights(grad: SharedGradient) -> dict[str, torch.Tensor]:
    """Detached leaf copies of the payload weights that autograd may differentiate."""
    return {k: v.detach().clone().requires_grad_(True) for k, v in grad.weights.items()}


def dummy_gradients(model: Classifier, weights: dict[str, torch.Tensor], x: torch.Tensor,
                    target: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Logits of `x` at `weights` and the gradient of the mean loss w.r.t. the weights
    (graph kept for the second derivative). `target`: class indices or soft labels [B, C]."""
    out = functional_call(model, weights, (x,))
    if target.dtype == torch.long:
        loss = F.cross_entropy(out, target)
    else:
        loss = -(target * F.log_softmax(out, -1)).sum(-1).mean()
    grads = torch.autograd.grad(loss, list(weights.values()), create_graph=True)
    return out, grads


def squared_norm(tensors: Sequence[torch.Tensor]) -> float:
    """||g||^2 over all layers: the scale of an L2 gradient distance."""
    return float(sum(float((t.detach().double() ** 2).sum()) for t in tensors))


def l2_distance(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> torch.Tensor:
    """Squared L2 distance summed over all layers."""
    return sum(((x - y) ** 2).sum() for x, y in zip(a, b, strict=True))  # type: ignore[return-value]


def cosine_distance(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> torch.Tensor:
    """1 - cosine similarity of the concatenated gradients (Geiping et al., 2020)."""
    dot = sum((x * y).sum() for x, y in zip(a, b, strict=True))
    na = sum((x * x).sum() for x in a)
    nb = sum((y * y).sum() for y in b)
    return 1 - dot / (na.sqrt() * nb.sqrt() + 1e-12)  # type: ignore[union-attr]


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation (mean absolute neighbour difference)."""
    if x.dim() < 4:
        return x.new_zeros(())
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().mean()
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().mean()
    return dx + dy


# --------------------------------------------------------------------------- scoring


class Scorer:
    """Per-iteration bookkeeping against the reference (metrics only; never fed back)."""

    def __init__(self, reference: torch.Tensor | None, bounds: tuple[float, float],
                 metric: str) -> None:
        self.ref = reference
        self.bounds = bounds
        self.metric = metric
        self.rows: list[torch.Tensor] = []
        if reference is not None:
            r = reference.flatten(1).float()
            self.var = r.var(1, unbiased=False).clamp_min(1e-8)
            self.rflat = r

    def cost(self, x: torch.Tensor) -> torch.Tensor:
        """[B_rec, B_ref] score matrix."""
        xf = x.detach().clamp(*self.bounds).flatten(1).float()
        m = torch.cdist(xf, self.rflat).pow(2) / xf.shape[1]
        return m / self.var[None, :] if self.metric == "nmse" else m

    def record(self, x: torch.Tensor) -> None:
        if self.ref is not None:
            self.rows.append(self.cost(x).amin(0).cpu())

    def history(self) -> torch.Tensor | None:
        return torch.stack(self.rows) if self.rows else None


def finish(attack: str, model: Classifier, x: torch.Tensor, labels: torch.Tensor,
           cfg: LeakageConfig, scorer: Scorer, distances: list[float], evals: int,
           converged: bool, diverged: bool, start: float,
           reference: torch.Tensor | None, reference_labels: torch.Tensor | None,
           extras: dict[str, Any] | None = None) -> LeakageResult:
    """Assemble the result: clip, match reconstructions to references, compute metrics."""
    from bastion.metrics.image import mse as mse_fn
    from bastion.metrics.image import psnr as psnr_fn
    from bastion.metrics.image import ssim as ssim_fn

    rec = x.detach().clamp(*model.spec.bounds)
    reason = "diverged" if diverged else "converged" if converged else "max_iterations"
    res = LeakageResult(attack=attack, reconstruction=rec, labels=labels.detach(),
                        iterations=len(distances), function_evals=evals, grad_distance=distances,
                        converged=converged, diverged=diverged, wall_time=0.0,
                        params=cfg.to_dict(), extras=dict(extras or {}), stop_reason=reason)
    if reference is not None:
        ref = reference.to(rec.device).float()
        cost = scorer.cost(rec)
        if rec.shape[0] > 1:
            from scipy.optimize import linear_sum_assignment
            finite = torch.nan_to_num(cost, nan=1e30, posinf=1e30)  # a diverged run
            rows, cols = linear_sum_assignment(finite.cpu().numpy())
            perm = torch.empty(len(cols), dtype=torch.long)
            perm[torch.as_tensor(cols)] = torch.as_tensor(rows)
            res.reconstruction, res.labels = rec[perm.to(rec.device)], res.labels[perm.to(rec.device)]
        rec = res.reconstruction
        res.reference = ref
        res.reference_labels = None if reference_labels is None else reference_labels.to(rec.device)
        res.mse = mse_fn(rec, ref)
        res.nmse = res.mse / scorer.var.to(rec.device)
        res.psnr = psnr_fn(rec, ref, max_value=model.spec.value_range)
        res.ssim = ssim_fn(rec, ref, max_value=model.spec.value_range) if rec.dim() == 4 else None
        score = res.nmse if cfg.success_metric == "nmse" else res.mse
        res.success = (score < cfg.success_threshold).cpu()
        hist = scorer.history()
        if hist is not None:
            res.score_history = hist
            below = hist < cfg.success_threshold
            first = torch.where(below.any(0), below.float().argmax(0), torch.full_like(below[0], -1, dtype=torch.long))
            res.iterations_to_success = first.long()
    res.wall_time = time.perf_counter() - start
    return res


# --------------------------------------------------------------------------- optimisation


def make_optimizer(params: list[torch.Tensor], cfg: LeakageConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "lbfgs":
        return torch.optim.LBFGS(params, lr=cfg.lr, max_iter=cfg.lbfgs_inner, history_size=100,
                                 line_search_fn=cfg.line_search)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9)


@contextlib.contextmanager
def cpu_conv_mode(device: torch.device) -> Iterator[None]:
    """On CPU, run the attack's tiny convolutions without oneDNN (mkldnn): for the small
    batches and channel counts of gradient inversion the plain im2col kernels are about
    2x faster, double backward included (measured, benchmarks/leakage.py)."""
    if device.type != "cpu" or not torch.backends.mkldnn.is_available():
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.backends.mkldnn.flags(enabled=False):
            yield


def run_optimisation(variables: list[torch.Tensor], objective: Callable[[], tuple[torch.Tensor, torch.Tensor]],
                     cfg: LeakageConfig, scorer: Scorer, x: torch.Tensor,
                     project: Callable[[], None] | None = None,
                     signed: bool = False, scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
                     scale: float = 1.0) -> tuple[list[float], int, bool, bool]:
    """Minimise `objective()` (returns (loss, gradient distance)) over `variables`.

    Stops after `cfg.max_iter` iterations, or earlier once the reconstruction stops
    improving (see the module docstring): distance / `scale` < `cfg.tol` (`scale` is the
    payload's squared norm for L2 matching, 1 for cosine), or no relative improvement of
    the best distance by `cfg.min_delta` in `cfg.patience` iterations.
    On a non-finite loss the last finite variables are restored. `project` runs after
    each step (box constraint); `signed` replaces gradients by their sign (IG).
    Returns (distance per iteration, function evaluations, converged, diverged).
    """
    opt = make_optimizer(variables, cfg)
    sched = scheduler(opt) if scheduler is not None else None
    distances: list[float] = []
    evals = 0
    last_dist = [math.inf]
    scorer.record(x)

    def closure() -> torch.Tensor:
        nonlocal evals
        opt.zero_grad(set_to_none=True)
        loss, dist = objective()
        loss.backward()
        if signed:
            for v in variables:
                if v.grad is not None:
                    v.grad.sign_()
        evals += 1
        last_dist[0] = float(dist.detach())
        return loss

    with cpu_conv_mode(x.device):
        return _loop(opt, sched, closure, variables, cfg, scorer, x, project, distances,
                     last_dist, lambda: evals, max(float(scale), 1e-30))


def _loop(opt: torch.optim.Optimizer, sched: Any, closure: Callable[[], torch.Tensor],
          variables: list[torch.Tensor], cfg: LeakageConfig, scorer: Scorer, x: torch.Tensor,
          project: Callable[[], None] | None, distances: list[float], last_dist: list[float],
          evals: Callable[[], int], scale: float) -> tuple[list[float], int, bool, bool]:
    converged = diverged = False
    best, stall = math.inf, 0
    for _ in range(cfg.max_iter):
        saved = [v.detach().clone() for v in variables]
        if cfg.optimizer == "lbfgs":
            opt.step(closure)
        else:
            closure()
            opt.step()
        if sched is not None:
            sched.step()
        if project is not None:
            with torch.no_grad():
                project()
        finite = all(bool(torch.isfinite(v).all()) for v in variables) and math.isfinite(last_dist[0])
        if not finite:
            with torch.no_grad():
                for v, s in zip(variables, saved, strict=True):
                    v.copy_(s)
            diverged = True
            break
        distances.append(last_dist[0])
        scorer.record(x)
        d = last_dist[0]
        if d / scale < cfg.tol:
            converged = True
            break
        if d < best * (1 - cfg.min_delta):
            best, stall = d, 0
        else:
            stall += 1
            if cfg.patience and stall >= cfg.patience:
                converged = True
                break
    return distances, evals(), converged, diverged


def uniform_init_(model: torch.nn.Module, scale: float = 0.5, seed: int | None = None) -> torch.nn.Module:
    """Re-initialise every parameter from U(-scale, scale), in place (the initialisation of
    the DLG and CPL reference code; sigmoid LeNets at default PyTorch initialisation give
    gradients too small to invert). Returns the model."""
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    with torch.no_grad():
        for p in model.parameters():
            p.copy_((torch.rand(p.shape, generator=gen) * 2 - 1).mul_(scale).to(p.device))
    return model
