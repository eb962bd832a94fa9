"""Adaptive-attack wrappers (Athalye, Carlini & Wagner, 2018): EOT and BPDA.

Both are `Classifier`s, so every gradient attack runs through them unchanged:

- `EOT(model, samples=k)`: Expectation over Transformation for randomised defenses. Its
  forward evaluates the wrapped (random) model on k draws of each input, in one batched
  pass, and averages. With `reduce='logits'` (default) the output is the mean logit, whose
  gradient is the mean of the per-draw logit gradients; with `reduce='probs'` it returns
  log(mean softmax), i.e. logits of the expected-probability classifier.
- `BPDA(model, preprocess, backward=None)`: Backward Pass Differentiable Approximation
  for a non-differentiable (or gradient-masking) preprocessing step g in front of f.
  Forward computes f(g(x)) exactly; backward differentiates f(h(x)) instead, with h the
  identity (straight-through, the usual choice when g(x) ~ x) or a given smooth
  approximation. Implemented as h(x) + (g(x) - h(x)).detach().
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from bastion.core import Classifier, ConfigError


class _Wrapper(Classifier):
    """A Classifier around another Classifier (which already normalises its inputs)."""

    def __init__(self, model: Classifier, name: str) -> None:
        if not isinstance(model, Classifier):
            raise ConfigError(f"{name} wraps a bastion Classifier, got {type(model).__name__}")
        super().__init__(model, model.spec, model.num_classes, device=model.device,
                         name=f"{name}({model.name})", meta=dict(model.meta))
        self.normalize = nn.Identity()

    @property
    def device(self) -> torch.device:
        return self.module.device  # type: ignore[union-attr]


class EOT(_Wrapper):
    """Expectation over Transformation: average a randomised model over k draws.

    Args:
        model: a randomised Classifier (its forward draws fresh randomness each call).
        samples: number of draws k per input (EOT paper: tens; default 10).
        reduce: 'logits' (mean logit) or 'probs' (log of the mean softmax).
        chunk: draws evaluated per forward pass (memory bound); None = all k at once.
    """

    def __init__(self, model: Classifier, samples: int = 10, reduce: str = "logits",
                 chunk: int | None = None) -> None:
        if samples < 1:
            raise ConfigError(f"EOT: samples must be >= 1, got {samples}")
        if reduce not in ("logits", "probs"):
            raise ConfigError(f"EOT: reduce must be 'logits' or 'probs', got {reduce!r}")
        if chunk is not None and chunk < 1:
            raise ConfigError(f"EOT: chunk must be >= 1, got {chunk}")
        super().__init__(model, "eot")
        self.samples, self.reduce, self.chunk = int(samples), reduce, chunk

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        per = self.chunk or self.samples
        total: torch.Tensor | None = None
        done = 0
        while done < self.samples:
            k = min(per, self.samples - done)
            rep = x.repeat((k,) + (1,) * (x.dim() - 1))
            out = self.module(rep).view(k, n, -1)
            out = out if self.reduce == "logits" else out.softmax(-1)
            s = out.sum(0)
            total = s if total is None else total + s
            done += k
        assert total is not None
        mean = total / self.samples
        return mean if self.reduce == "logits" else mean.clamp_min(1e-30).log()


class BPDA(_Wrapper):
    """Backward Pass Differentiable Approximation around a preprocessing step.

    Args:
        model: the classifier f that receives the preprocessed input.
        preprocess: g, maps a batch in the model's bounds to a batch of the same shape
            (may be non-differentiable: quantisation, median filter, JPEG, ...).
        backward: h, a differentiable approximation of g used for gradients; None means
            the identity (straight-through estimator).
    """

    def __init__(self, model: Classifier, preprocess: Callable[[torch.Tensor], torch.Tensor],
                 backward: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        if not callable(preprocess):
            raise ConfigError("BPDA: preprocess must be callable (tensor -> tensor)")
        super().__init__(model, "bpda")
        self.preprocess = preprocess
        self.approx = backward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            gx = self.preprocess(x.detach())
        if gx.shape != x.shape:
            raise ConfigError(f"BPDA: preprocess changed the shape {tuple(x.shape)} -> {tuple(gx.shape)}")
        hx = x if self.approx is None else self.approx(x)
        return self.module(hx + (gx - hx).detach())
