"""Threat-model payloads: what a gradient-leakage attacker is given, and nothing more.

- `SharedGradient`: model weights at the time of the leak, the gradient of the training
  loss with respect to them, and optionally the batch size and labels (if the threat
  model exposes them). Produced by a victim with `shared_gradient(model, x, y)`.
- `WeightUpdate`: weights before and after a client's local training, its local learning
  rate and number of local SGD steps. `to_gradient()` converts it to the mean gradient
  (w_before - w_after) / (lr * local_steps) at w_before (CPL, Algorithm 4, lines 4-6).

Both are keyed by the parameter names of the `Classifier` (e.g. "module.head.weight"), so
`validate(model)` can check them against the architecture the attacker runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F

from bastion.core import Classifier, ConfigError, InputError

Tensors = dict[str, torch.Tensor]


def trainable_params(model: Classifier) -> Tensors:
    """The model's trainable parameters by name, detached (the payload's key set)."""
    return {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}


def _as_dict(obj: Mapping[str, torch.Tensor] | Any, name: str) -> Tensors:
    if not isinstance(obj, Mapping):
        raise InputError(f"{name} must be a dict of parameter name -> tensor, got {type(obj).__name__}")
    out = {}
    for k, v in obj.items():
        if not isinstance(v, torch.Tensor):
            raise InputError(f"{name}[{k!r}] must be a tensor, got {type(v).__name__}")
        out[str(k)] = v.detach()
    return out


def _check_against(model: Classifier, tensors: Tensors, name: str) -> None:
    expected = {k: tuple(v.shape) for k, v in trainable_params(model).items()}
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise InputError(f"{name} does not match the model's parameters: missing {missing[:4]}"
                         f"{'...' if len(missing) > 4 else ''}, unexpected {extra[:4]}"
                         f"{'...' if len(extra) > 4 else ''}; build the payload from the same "
                         "architecture the attacker runs")
    for k, shape in expected.items():
        if tuple(tensors[k].shape) != shape:
            raise InputError(f"{name}[{k!r}] has shape {tuple(tensors[k].shape)}, the model's "
                             f"parameter has shape {shape}")
        if not torch.isfinite(tensors[k]).all():
            raise InputError(f"{name}[{k!r}] contains NaN or infinite values")


@dataclass
class SharedGradient:
    """A leaked gradient (type-0/1/2 leakage point) with the weights it was taken at.

    Attributes:
        weights: parameter name -> weights at which the gradient was computed.
        gradients: parameter name -> gradient of the (batch-mean) training loss.
        batch_size: number of examples behind the gradient, if the threat model exposes it.
        labels: their labels [batch_size], if exposed (otherwise attacks infer them).
        meta: free-form provenance (leakage type, round, client, defense applied, ...).
    """

    weights: Tensors
    gradients: Tensors
    batch_size: int | None = None
    labels: torch.Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.weights = _as_dict(self.weights, "weights")
        self.gradients = _as_dict(self.gradients, "gradients")
        if set(self.weights) != set(self.gradients):
            raise InputError("weights and gradients must name the same parameters")
        for k in self.weights:
            if self.weights[k].shape != self.gradients[k].shape:
                raise InputError(f"gradient of {k!r} has shape {tuple(self.gradients[k].shape)}, "
                                 f"its weight {tuple(self.weights[k].shape)}")
        if self.batch_size is not None and int(self.batch_size) < 1:
            raise InputError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.labels is not None:
            self.labels = torch.as_tensor(self.labels).long().flatten()
            if self.batch_size is None:
                self.batch_size = int(self.labels.numel())
            elif self.labels.numel() != self.batch_size:
                raise InputError(f"{self.labels.numel()} labels for a batch of {self.batch_size}")

    def validate(self, model: Classifier) -> None:
        """Raise `InputError` unless names and shapes match `model`'s trainable parameters."""
        _check_against(model, self.weights, "payload weights")
        _check_against(model, self.gradients, "payload gradients")
        if self.labels is not None and self.labels.numel() and (
                int(self.labels.min()) < 0 or int(self.labels.max()) >= model.num_classes):
            raise InputError(f"payload labels must lie in [0, {model.num_classes - 1}]")

    def to(self, device: torch.device | str) -> SharedGradient:
        return replace(self, weights={k: v.to(device) for k, v in self.weights.items()},
                       gradients={k: v.to(device) for k, v in self.gradients.items()},
                       labels=None if self.labels is None else self.labels.to(device))

    def with_gradients(self, gradients: Tensors, **meta: Any) -> SharedGradient:
        """A copy carrying transformed gradients (used by defenses) and extra meta."""
        return replace(self, gradients=gradients, meta={**self.meta, **meta})

    def to_gradient(self) -> SharedGradient:
        return self

    def flat(self) -> torch.Tensor:
        return torch.cat([g.flatten() for g in self.gradients.values()])


@dataclass
class WeightUpdate:
    """A client's model before and after local training (type-1 leakage point).

    Attributes:
        weights_before, weights_after: parameter name -> tensor.
        lr: the local SGD learning rate (required: without it the gradient scale is lost).
        local_steps: number of local SGD steps between the two weight sets.
        batch_size, labels, meta: as in `SharedGradient`.
    """

    weights_before: Tensors
    weights_after: Tensors
    lr: float | None
    local_steps: int = 1
    batch_size: int | None = None
    labels: torch.Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.weights_before = _as_dict(self.weights_before, "weights_before")
        self.weights_after = _as_dict(self.weights_after, "weights_after")
        if self.lr is None or not float(self.lr) > 0:
            raise InputError(f"a weight update needs the local learning rate lr > 0 (got {self.lr}); "
                             "the gradient is recovered as (w_before - w_after) / lr")
        if int(self.local_steps) < 1:
            raise InputError(f"local_steps must be >= 1, got {self.local_steps}")
        if set(self.weights_before) != set(self.weights_after):
            raise InputError("weights_before and weights_after must name the same parameters")
        for k in self.weights_before:
            if self.weights_before[k].shape != self.weights_after[k].shape:
                raise InputError(f"weights of {k!r} changed shape during the update")

    def validate(self, model: Classifier) -> None:
        _check_against(model, self.weights_before, "weights_before")
        _check_against(model, self.weights_after, "weights_after")

    def to_gradient(self) -> SharedGradient:
        """Mean gradient over the local steps: (w_before - w_after) / (lr * local_steps)."""
        scale = 1.0 / (float(self.lr) * int(self.local_steps))
        grads = {k: (self.weights_before[k] - self.weights_after[k]) * scale for k in self.weights_before}
        return SharedGradient(dict(self.weights_before), grads, self.batch_size, self.labels,
                              {**self.meta, "from_weight_update": True, "lr": float(self.lr),
                               "local_steps": int(self.local_steps)})


Payload = SharedGradient | WeightUpdate


def shared_gradient(model: Classifier, x: torch.Tensor, y: torch.Tensor, *,
                    expose_batch_size: bool = True, expose_labels: bool = False,
                    **meta: Any) -> SharedGradient:
    """Victim side: the gradient of the mean cross-entropy on (x, y) at the current weights.

    The model object is not modified (gradients are taken with `torch.autograd.grad`).
    """
    model.check(x, y)
    dev = model.device
    x, y = x.to(dev), y.to(dev)
    params = trainable_params(model)
    names = list(params)
    live = [p for n, p in model.named_parameters() if n in params]
    loss = F.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, live)
    return SharedGradient({n: params[n].clone() for n in names},
                          {n: g.detach() for n, g in zip(names, grads, strict=True)},
                          batch_size=int(x.shape[0]) if expose_batch_size else None,
                          labels=y.clone() if expose_labels else None, meta=dict(meta))


def local_sgd_update(model: Classifier, x: torch.Tensor, y: torch.Tensor, lr: float,
                     local_steps: int = 1, **meta: Any) -> WeightUpdate:
    """Victim side: `local_steps` full-batch SGD steps on (x, y) starting from the model's
    weights (the model itself is not modified); returns the weight update."""
    from torch.func import functional_call

    if not lr > 0 or local_steps < 1:
        raise ConfigError(f"need lr > 0 and local_steps >= 1, got lr={lr}, local_steps={local_steps}")
    model.check(x, y)
    dev = model.device
    x, y = x.to(dev), y.to(dev)
    before = {k: v.clone() for k, v in trainable_params(model).items()}
    w = {k: v.clone().requires_grad_(True) for k, v in before.items()}
    for _ in range(local_steps):
        loss = F.cross_entropy(functional_call(model, w, (x,)), y)
        grads = torch.autograd.grad(loss, list(w.values()))
        w = {k: (v - lr * g).detach().requires_grad_(True) for (k, v), g in zip(w.items(), grads, strict=True)}
    return WeightUpdate(before, {k: v.detach() for k, v in w.items()}, lr, local_steps,
                        batch_size=int(x.shape[0]), meta=dict(meta))
