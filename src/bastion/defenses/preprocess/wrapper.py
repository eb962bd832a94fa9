"""`Preprocessed(classifier, transform)`: a defended model that is a `Classifier`, and its
attack-time surrogate for adaptive gradient attacks (Athalye, Carlini & Wagner 2018).

`Preprocessed.forward` is the defense as deployed, f(t(x)): every attack runs against it
unchanged. Gradients through it are honest autograd gradients, which for a
non-differentiable transform are zero (masked) and for a random one are a single noisy
draw. Such gradients make a defense look robust when it is not, so the first gradient
computed through such a model raises a `GradientMaskingWarning`, and `adaptive()`
returns the surrogate a gradient attack should use instead:

- non-differentiable transform: BPDA (forward exact, backward through the transform's
  declared approximation, the identity unless it declares a smoother one);
- random transform: EOT over `eot_samples` draws (default 10);
- both: EOT around BPDA; neither: the model itself.

Adversarial examples found on the surrogate are then scored on the defended model.
"""

from __future__ import annotations

import warnings
from functools import partial

import torch

from bastion.attacks.evasion.adaptive import BPDA, EOT, _Wrapper
from bastion.core import Classifier, ConfigError
from bastion.defenses.preprocess.base import Transform

DEFAULT_EOT_SAMPLES = 10


class GradientMaskingWarning(UserWarning):
    """Gradients were taken through a non-differentiable or random defense directly."""


class Preprocessed(_Wrapper):
    """A classifier that transforms its inputs before the wrapped classifier sees them.

    Args:
        model: the undefended Classifier.
        transform: the input transformation (see `bastion.defenses.preprocess`).
        eot_samples: draws per input for the EOT surrogate of a random transform.
        warn_masked: warn on the first gradient taken through a masking transform.
    """

    def __init__(self, model: Classifier, transform: Transform,
                 eot_samples: int = DEFAULT_EOT_SAMPLES, warn_masked: bool = True) -> None:
        if not isinstance(transform, Transform):
            raise ConfigError(f"Preprocessed needs a Transform, got {type(transform).__name__}; "
                              "build one with bastion.defenses.preprocess.get_transform(name)")
        if isinstance(eot_samples, bool) or not isinstance(eot_samples, int) or eot_samples < 1:
            raise ConfigError(f"Preprocessed: eot_samples must be an integer >= 1, got {eot_samples!r}")
        if not isinstance(model, Classifier):
            raise ConfigError(f"Preprocessed wraps a bastion Classifier, got {type(model).__name__}")
        transform.check_spec(model.spec)
        super().__init__(model, f"preprocessed[{transform.name}]")
        self.transform = transform
        self.eot_samples = eot_samples
        self.warn_masked = warn_masked
        self._warned = False
        self.meta["defense"] = {"kind": "preprocess", **transform.describe()}

    @property
    def masks_gradients(self) -> bool:
        """Whether plain autograd gradients through this model are masked or noisy."""
        return not self.transform.differentiable or self.transform.random

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.warn_masked and not self._warned and self.masks_gradients
                and torch.is_grad_enabled() and x.requires_grad):
            self._warned = True
            what = "not differentiable" if not self.transform.differentiable else "random"
            warnings.warn(f"gradients through {self.name} are masked: {self.transform.name} is "
                          f"{what}; attack model.adaptive() (BPDA/EOT) instead",
                          GradientMaskingWarning, stacklevel=2)
        return self.module(self.transform(x, self.spec.bounds))

    def adaptive(self, eot_samples: int | None = None) -> Classifier:
        """The surrogate gradient attacks should run against (BPDA and/or EOT)."""
        k = self.eot_samples if eot_samples is None else eot_samples
        t, bounds = self.transform, self.spec.bounds
        base: Classifier
        if not t.differentiable:
            base = BPDA(self.module, preprocess=partial(t, bounds=bounds),
                        backward=partial(t.approximation, bounds=bounds))
        elif t.random:
            base = Preprocessed(self.module, t, warn_masked=False)
        else:
            return self
        return EOT(base, samples=k) if t.random else base


def adaptive(model: Classifier, eot_samples: int | None = None) -> Classifier:
    """The attack-time surrogate of `model`: `model.adaptive()` for a `Preprocessed`
    model, the model itself otherwise."""
    return model.adaptive(eot_samples) if isinstance(model, Preprocessed) else model
