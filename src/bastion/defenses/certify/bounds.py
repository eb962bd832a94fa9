"""Bound propagation for Linf-verified robustness: interval bound propagation (IBP;
Gowal et al. 2018), CROWN (Zhang et al. 2018) and CROWN-IBP (Zhang et al. 2020), and IBP
training (Gowal et al. 2018).

A network is read as a chain of layers: the classifier's normalisation, then `Linear`,
`Conv2d`, `ReLU`, `Flatten`, `AvgPool2d` and `MaxPool2d` (a zoo `Net` is features ->
flatten -> head; `Dropout` and `Identity` are skipped, the model being in eval mode). Any
other layer is refused by name before work starts.

- IBP pushes the box [x - eps, x + eps] (clipped to the input bounds) through every layer:
  affine layers map centre and radius (|W| on the radius), monotone layers (ReLU, max
  pooling) map both ends.
- CROWN bounds each output by linear functions of the input, propagated backwards; an
  unstable ReLU (l < 0 < u) is relaxed by the upper line through (l, 0) and (u, u) and the
  lower line of slope 1 when u > -l, else 0. Average pooling is linear and is propagated
  exactly. Max pooling is not linear: the chain is cut there, the pooled interval of the
  part before it becomes the input box of the part after it (a sound, looser bound).
  Pre-activation bounds of the ReLUs come from CROWN itself (`crown`) or from IBP
  (`crown-ibp`); either way the tighter of the CROWN and IBP bounds is kept.

Verification asks for the lower bound of every margin z_y - z_j (j != y) to be positive;
the last affine layer is folded into the margin specification, which is tighter than
subtracting bounds of the logits.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bastion.core import Classifier, ConfigError, Normalize
from bastion.data.dataset import Dataset
from bastion.training.fit import TrainConfig

METHODS = ("ibp", "crown-ibp", "crown")
MAX_COEFFICIENTS = 2**24   # floats held by one chunk of backward coefficients
SUPPORTED = ("Linear", "Conv2d", "ReLU", "Flatten", "AvgPool2d", "MaxPool2d", "Dropout", "Identity",
             "Sequential", "the classifier's normalisation")


# --------------------------------------------------------------------------- the chain


def layers_of(clf: Classifier) -> list[nn.Module]:
    """The chain of layers of `clf` (normalisation first); a ConfigError names any layer
    bound propagation does not support."""
    from bastion.models.zoo import Net

    out: list[nn.Module] = []

    def walk(m: nn.Module, where: str) -> None:
        if isinstance(m, Net):
            walk(m.features, f"{where}.features")
            out.append(nn.Flatten())
            walk(m.head, f"{where}.head")
        elif isinstance(m, nn.Sequential):
            for name, child in m.named_children():
                walk(child, f"{where}.{name}")
        elif isinstance(m, (nn.Identity, nn.Dropout)):
            return
        elif isinstance(m, (nn.Linear, nn.Conv2d, nn.ReLU, nn.Flatten, nn.AvgPool2d, nn.MaxPool2d,
                            Normalize)):
            if isinstance(m, nn.Conv2d) and (m.padding_mode != "zeros" or isinstance(m.padding, str)):
                raise ConfigError(f"bound propagation: {where} is a Conv2d with padding "
                                  f"{m.padding!r}/{m.padding_mode}; only integer zero padding is supported")
            if isinstance(m, nn.MaxPool2d) and (m.dilation not in (1, (1, 1)) or m.return_indices):
                raise ConfigError(f"bound propagation: {where} is a dilated MaxPool2d; not supported")
            out.append(m)
        else:
            raise ConfigError(f"bound propagation does not support layer {where} "
                              f"({type(m).__name__}); supported layers: {', '.join(SUPPORTED)}")

    if not isinstance(clf, Classifier):
        raise ConfigError(f"bound propagation needs a bastion Classifier, got {type(clf).__name__}")
    walk(clf.normalize, "normalize")
    walk(clf.module, "module")
    return out


def _affine(m: nn.Module) -> bool:
    return isinstance(m, (nn.Linear, nn.Conv2d, nn.AvgPool2d, nn.Flatten, Normalize))


def _abs_apply(m: nn.Module, r: torch.Tensor) -> torch.Tensor:
    """|M| r for the linear part M of an affine layer (r >= 0)."""
    if isinstance(m, nn.Linear):
        return F.linear(r, m.weight.abs())
    if isinstance(m, nn.Conv2d):
        return F.conv2d(r, m.weight.abs(), None, m.stride, m.padding, m.dilation, m.groups)
    if isinstance(m, Normalize):
        return r / m.std.abs()
    return m(r)  # average pooling and flatten: non-negative weights


def ibp_layer(m: nn.Module, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Interval image of [lo, hi] under one layer (differentiable, for IBP training)."""
    if _affine(m):
        mid, rad = (hi + lo) / 2, (hi - lo) / 2
        mid, rad = m(mid), _abs_apply(m, rad)
        return mid - rad, mid + rad
    return m(lo), m(hi)   # ReLU and max pooling are monotone


def input_box(clf: Classifier, x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    lo, hi = clf.spec.bounds
    return (x - eps).clamp(lo, hi), (x + eps).clamp(lo, hi)


def margin_spec(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """C [N, K-1, K] with rows e_y - e_j for every j != y."""
    eye = torch.eye(num_classes, device=y.device)
    c = eye[y][:, None, :] - eye[None, :, :]                       # [N, K, K]
    keep = ~torch.eye(num_classes, dtype=torch.bool, device=y.device)[y]  # drop j == y
    return c[keep].view(y.shape[0], num_classes - 1, num_classes)


def ibp_margins(clf: Classifier, x: torch.Tensor, y: torch.Tensor, eps: float,
                layers: list[nn.Module] | None = None) -> torch.Tensor:
    """IBP lower bounds [N, K-1] of the margins z_y - z_j, the last affine layer folded into
    the specification (differentiable)."""
    layers = layers if layers is not None else layers_of(clf)
    lo, hi = input_box(clf, x, eps)
    last = layers[-1]
    for m in layers[:-1]:
        lo, hi = ibp_layer(m, lo, hi)
    c = margin_spec(y, clf.num_classes)
    if isinstance(last, nn.Linear):
        w = torch.einsum("nsk,ki->nsi", c, last.weight)
        b = torch.einsum("nsk,k->ns", c, last.bias) if last.bias is not None else 0.0
        mid, rad = (hi + lo) / 2, (hi - lo) / 2
        return torch.einsum("nsi,ni->ns", w, mid) - torch.einsum("nsi,ni->ns", w.abs(), rad) + b
    lo, hi = ibp_layer(last, lo, hi)
    mid, rad = (hi + lo) / 2, (hi - lo) / 2
    return torch.einsum("nsk,nk->ns", c, mid) - torch.einsum("nsk,nk->ns", c.abs(), rad)


# --------------------------------------------------------------------------- CROWN


def _linear_part(m: nn.Module, a: torch.Tensor, in_shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """(A M, A b) for an affine layer z -> M z + b and coefficients A [N, S, *out]."""
    n, s = a.shape[:2]
    zero = torch.zeros((1, *in_shape), device=a.device, dtype=a.dtype)
    with torch.enable_grad():
        z = zero.expand((n * s, *in_shape)).clone().requires_grad_(True)
        out = m(z)
        bias = m(zero).detach().reshape(-1)   # b = M 0 + b
        (g,) = torch.autograd.grad(out, z, a.reshape((n * s, *tuple(out.shape[1:]))))
    return g.reshape((n, s, *in_shape)).detach(), (a.reshape(n, s, -1) @ bias)


def _relax(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """CROWN's ReLU relaxation: lower slope, upper slope and upper intercept per neuron."""
    unstable = (lo < 0) & (hi > 0)
    active = lo >= 0
    denom = (hi - lo).clamp_min(1e-12)
    up_slope = torch.where(unstable, hi / denom, active.to(lo.dtype))
    up_icpt = torch.where(unstable, -hi * lo / denom, torch.zeros_like(lo))
    low_slope = torch.where(unstable, (hi > -lo).to(lo.dtype), active.to(lo.dtype))
    return low_slope, up_slope, up_icpt


def _backward_lower(segment: list[nn.Module], shapes: list[tuple[int, ...]], a: torch.Tensor,
                    relu_bounds: dict[int, tuple[torch.Tensor, torch.Tensor]],
                    lo: torch.Tensor, hi: torch.Tensor, upto: int) -> torch.Tensor:
    """Lower bound of A . z_upto (z_upto: the output of segment[upto - 1]; shapes[k] is the
    per-example shape of z_k) over the box [lo, hi] of z_0."""
    const = torch.zeros(a.shape[:2], device=a.device, dtype=a.dtype)
    for k in range(upto - 1, -1, -1):
        m = segment[k]
        if isinstance(m, nn.ReLU):
            pl, pu = relu_bounds[k]
            ls, us, ui = _relax(pl, pu)
            ap, an = a.clamp_min(0), a.clamp_max(0)
            const = const + (an * ui[:, None]).flatten(2).sum(-1)
            a = ap * ls[:, None] + an * us[:, None]
        else:
            a, b = _linear_part(m, a, shapes[k])
            const = const + b
    mid, rad = (hi + lo) / 2, (hi - lo) / 2
    af = a.flatten(2)
    return torch.einsum("nsi,ni->ns", af, mid.flatten(1)) - torch.einsum(
        "nsi,ni->ns", af.abs(), rad.flatten(1)) + const


def _segment_bounds(segment: list[nn.Module], lo: torch.Tensor, hi: torch.Tensor, crown_inner: bool,
                    spec: torch.Tensor | None, chunk: int
                    ) -> tuple[torch.Tensor, torch.Tensor] | torch.Tensor:
    """Bounds through a chain of affine layers and ReLUs. With `spec` [N, S, *out]: the
    lower bound of spec . output; else the (lower, upper) output bounds."""
    shapes = [tuple(lo.shape[1:])]
    ibp = [(lo, hi)]
    with torch.no_grad():
        for m in segment:
            ibp.append(ibp_layer(m, *ibp[-1]))
            shapes.append(tuple(ibp[-1][0].shape[1:]))
    relu_bounds: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    bounds = list(ibp)
    for k, m in enumerate(segment):
        if not isinstance(m, nn.ReLU):
            continue
        pl, pu = bounds[k]
        # the first affine layers' outputs are exact under IBP; refine deeper ones by CROWN
        if crown_inner and any(isinstance(p, nn.ReLU) for p in segment[:k]):
            cl, cu = _crown_outputs(segment, shapes, relu_bounds, lo, hi, k, chunk)
            pl, pu = torch.maximum(pl, cl), torch.minimum(pu, cu)
            bounds[k] = (pl, pu)
            bounds[k + 1] = (pl.clamp_min(0), pu.clamp_min(0))
        relu_bounds[k] = (pl, pu)
    if spec is not None:
        return _backward_lower(segment, shapes, spec, relu_bounds, lo, hi, len(segment))
    last = len(segment)
    if isinstance(segment[-1], nn.ReLU):
        pl, pu = relu_bounds[last - 1]
        return pl.clamp_min(0), pu.clamp_min(0)
    low, up = _crown_outputs(segment, shapes, relu_bounds, lo, hi, last, chunk)
    il, iu = bounds[last]
    return torch.maximum(low, il), torch.minimum(up, iu)


def _crown_outputs(segment: list[nn.Module], shapes: list[tuple[int, ...]],
                   relu_bounds: dict[int, tuple[torch.Tensor, torch.Tensor]], lo: torch.Tensor,
                   hi: torch.Tensor, k: int, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """CROWN lower and upper bounds of every neuron of z_k, in chunks of neurons sized so
    the backward coefficients stay within a fixed memory budget."""
    n = lo.shape[0]
    size = math.prod(shapes[k])
    widest = max(math.prod(s) for s in shapes[:k + 1])
    step = max(1, min(chunk, MAX_COEFFICIENTS // max(1, n * widest)))
    lows, ups = [], []
    for s0 in range(0, size, step):
        s1 = min(size, s0 + step)
        eye = torch.zeros(n, s1 - s0, size, device=lo.device, dtype=lo.dtype)
        eye[:, torch.arange(s1 - s0), torch.arange(s0, s1)] = 1.0
        eye = eye.view((n, s1 - s0) + shapes[k])
        lows.append(_backward_lower(segment, shapes, eye, relu_bounds, lo, hi, k))
        ups.append(-_backward_lower(segment, shapes, -eye, relu_bounds, lo, hi, k))
    shape = (n,) + shapes[k]
    return torch.cat(lows, 1).view(shape), torch.cat(ups, 1).view(shape)


def crown_margins(clf: Classifier, x: torch.Tensor, y: torch.Tensor, eps: float,
                  crown_inner: bool = True, chunk: int = 2048,
                  layers: list[nn.Module] | None = None) -> torch.Tensor:
    """CROWN (or CROWN-IBP with `crown_inner=False`) lower bounds [N, K-1] of the margins."""
    layers = layers if layers is not None else layers_of(clf)
    lo, hi = input_box(clf, x, eps)
    with torch.no_grad():
        segments: list[list[nn.Module]] = [[]]
        for m in layers:
            if isinstance(m, nn.MaxPool2d):
                segments.append([m])
                segments.append([])
            else:
                segments[-1].append(m)
        segments = [s for s in segments if s]
        for seg in segments[:-1]:
            if isinstance(seg[0], nn.MaxPool2d):
                lo, hi = seg[0](lo), seg[0](hi)
            else:
                lo, hi = _segment_bounds(seg, lo, hi, crown_inner, None, chunk)  # type: ignore[misc]
        last = segments[-1]
        c = margin_spec(y, clf.num_classes)
        if isinstance(last[0], nn.MaxPool2d):
            lo, hi = last[0](lo), last[0](hi)
            mid, rad = (hi + lo) / 2, (hi - lo) / 2
            return torch.einsum("nsk,nk->ns", c, mid) - torch.einsum("nsk,nk->ns", c.abs(), rad)
        spec = c.view((c.shape[0], c.shape[1], clf.num_classes))
        return _segment_bounds(last, lo, hi, crown_inner, spec, chunk)  # type: ignore[return-value]


# --------------------------------------------------------------------------- verification


@dataclass
class Verification:
    """Per-input verification at an Linf eps: clean correctness, whether every margin's
    lower bound is positive, and the worst margin bound."""

    correct: torch.Tensor
    verified: torch.Tensor
    margin: torch.Tensor
    params: dict[str, Any] = field(default_factory=dict)
    wall_time: float = 0.0

    @property
    def n(self) -> int:
        return int(self.correct.shape[0])

    @property
    def clean_accuracy(self) -> float:
        return float(self.correct.float().mean()) if self.n else float("nan")

    @property
    def verified_accuracy(self) -> float:
        return float(self.verified.float().mean()) if self.n else float("nan")

    def rows(self) -> list[dict[str, Any]]:
        return [{"index": i, "correct": bool(self.correct[i]), "verified": bool(self.verified[i]),
                 "margin_lower": float(self.margin[i])} for i in range(self.n)]


def check_eps(eps: Any) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
        raise ConfigError(f"eps must be a finite number >= 0, got {eps!r}")
    return float(eps)


def verify(clf: Classifier, x: torch.Tensor, y: torch.Tensor, eps: float, method: str = "crown-ibp",
           batch_size: int = 128, chunk: int = 2048) -> Verification:
    """Verified robustness of `clf` on (x, y) in the Linf ball of radius `eps`: an input is
    verified when it is classified correctly and every margin's lower bound is > 0."""
    if method not in METHODS:
        from bastion.core import unknown_name

        raise unknown_name("bound method", str(method), METHODS)
    eps = check_eps(eps)
    layers = layers_of(clf)
    clf.eval()
    dev = clf.device
    start = time.perf_counter()
    margins, correct = [], []
    with torch.no_grad():
        for i in range(0, x.shape[0], batch_size):
            xb, yb = x[i:i + batch_size].to(dev), y[i:i + batch_size].to(dev)
            correct.append(clf(xb).argmax(-1) == yb)
            if method == "ibp":
                m = ibp_margins(clf, xb, yb, eps, layers)
            else:
                m = crown_margins(clf, xb, yb, eps, crown_inner=method == "crown", chunk=chunk,
                                  layers=layers)
                m = torch.maximum(m, ibp_margins(clf, xb, yb, eps, layers))
            margins.append(m.min(1).values)
    margin = torch.cat(margins).cpu() if margins else torch.empty(0)
    ok = torch.cat(correct).cpu() if correct else torch.empty(0, dtype=torch.bool)
    return Verification(correct=ok, verified=ok & (margin > 0), margin=margin,
                        params={"method": method, "eps": eps, "norm": "linf"},
                        wall_time=time.perf_counter() - start)


# --------------------------------------------------------------------------- IBP training


@dataclass(frozen=True)
class IBPTraining:
    """IBP training (Gowal et al. 2018): minimise kappa * CE(z(x), y) + (1 - kappa) *
    CE(z_hat(x, eps), y), z_hat the worst-case logits from interval bounds (here: minus the
    margin lower bounds, the last layer folded in).

    Attributes:
        eps: training Linf budget (Gowal et al. train MNIST at 1.1x the test eps, e.g. 0.4
            for 0.3; here 0.1 default for small runs).
        kappa_end: final weight of the clean loss (Gowal et al.: 0.5), from 1 at the start.
        warmup_epochs: epochs of clean training before the ramp (eps = 0, kappa = 1).
        ramp_epochs: epochs over which eps grows linearly from 0 to `eps` and kappa from 1
            to `kappa_end`.
    """

    eps: float = 0.1
    kappa_end: float = 0.5
    warmup_epochs: float = 1.0
    ramp_epochs: float = 2.0

    name = "ibp"

    def validate(self) -> None:
        check_eps(self.eps)
        if self.eps > 1.0:
            raise ConfigError(f"{self.name}: eps {self.eps} exceeds the input range; give it in input units")
        if not 0.0 <= self.kappa_end <= 1.0:
            raise ConfigError(f"{self.name}: kappa_end must lie in [0, 1], got {self.kappa_end}")
        if self.warmup_epochs < 0 or self.ramp_epochs < 0:
            raise ConfigError(f"{self.name}: warmup_epochs and ramp_epochs must be >= 0")

    def schedule(self, done: float) -> tuple[float, float]:
        """(eps, kappa) after `done` epochs."""
        t = done - self.warmup_epochs
        if t <= 0:
            return 0.0, 1.0
        frac = 1.0 if self.ramp_epochs == 0 else min(1.0, t / self.ramp_epochs)
        return self.eps * frac, 1.0 - (1.0 - self.kappa_end) * frac


def ibp_fit(clf: Classifier, train: Dataset, test: Dataset | None = None,
            defense: IBPTraining = IBPTraining(), cfg: TrainConfig = TrainConfig(),
            on_epoch: Callable[[dict[str, float]], None] | None = None) -> Any:
    """Train `clf` in place with IBP training; records the defense in `clf.meta['defense']`.
    Returns an `AdvTrainResult` (history, accuracies, wall time, the defense record)."""
    from bastion.training.adversarial import check_data, finish_training, train_loop

    if not isinstance(defense, IBPTraining):
        raise ConfigError(f"ibp_fit needs an IBPTraining config, got {defense!r}")
    defense.validate()
    cfg.validate()
    check_data(clf, train)
    layers = layers_of(clf)
    dev = clf.device
    x, y = train.x.to(dev), train.y.to(dev)

    def step_fn(idx: torch.Tensor, done: float) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        eps, kappa = defense.schedule(done)
        xb, yb = x[idx], y[idx]
        logits = clf(xb)
        loss = F.cross_entropy(logits, yb)
        if kappa < 1.0:
            worst = -ibp_margins(clf, xb, yb, eps, layers)            # [B, K-1] z_j - z_y upper
            robust = F.cross_entropy(torch.cat([torch.zeros_like(worst[:, :1]), worst], 1),
                                     torch.zeros_like(yb))
            loss = kappa * loss + (1 - kappa) * robust
        return loss, logits, {"eps": eps, "kappa": kappa}

    record = {"name": defense.name, **asdict(defense)}
    history, wall = train_loop(clf, train, test, cfg, step_fn, defense.name, on_epoch)
    return finish_training(clf, train, test, cfg, record, history, wall)
