"""The `Transform` contract and the name registry of input transformations.

A transform is a frozen dataclass of its parameters (defaults from the source paper,
validated in `__post_init__` with `ConfigError`) and a batched torch map
`t(x, bounds) -> x'` that keeps shape, dtype and device and stays inside `bounds`.
Each transform declares two facts the adaptive attacks rely on (Athalye et al. 2018):

- `differentiable`: autograd through `t` gives a useful (non-zero) gradient. When False,
  gradient attacks use BPDA with `t.approximation` on the backward pass.
- `random`: two calls on the same input differ. When True, gradient attacks use EOT.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, TypeVar

import torch

from bastion.core import ConfigError, InputSpec, require, unknown_name
from bastion.params import check_names

Bounds = tuple[float, float]
UNIT: Bounds = (0.0, 1.0)


@dataclass(frozen=True)
class Transform:
    """Base class of input transformations. Subclasses implement `apply`."""

    name: ClassVar[str] = "transform"
    differentiable: ClassVar[bool] = True
    random: ClassVar[bool] = False
    image_only: ClassVar[bool] = True

    def __call__(self, x: torch.Tensor, bounds: Bounds = UNIT) -> torch.Tensor:
        """Transform a batch whose values lie in `bounds`; the result lies in `bounds`."""
        if self.image_only and x.dim() != 4:
            raise ConfigError(f"{self.name} needs image batches N x C x H x W, got shape "
                              f"{tuple(x.shape)}")
        lo, hi = float(bounds[0]), float(bounds[1])
        return self.apply(x, lo, hi).clamp(lo, hi).to(x.dtype)

    def apply(self, x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
        raise NotImplementedError

    def approximation(self, x: torch.Tensor, bounds: Bounds = UNIT) -> torch.Tensor:
        """A differentiable stand-in for this transform, used by BPDA on the backward
        pass: the transform itself when it is differentiable, else the identity
        (straight-through estimator). Subclasses may declare a closer smooth version."""
        return self(x, bounds) if self.differentiable else x

    def check_spec(self, spec: InputSpec) -> None:
        """Fail before any work when the model's inputs cannot take this transform."""
        if self.image_only:
            require(len(spec.shape) == 3, f"{self.name} needs image inputs (C, H, W); the model "
                                          f"takes {spec.shape}")

    def params(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> dict[str, Any]:
        """Name, parameters and declared properties, for reports."""
        return {"name": self.name, "params": self.params(),
                "differentiable": self.differentiable, "random": self.random}


TRANSFORMS: dict[str, type[Transform]] = {}
T = TypeVar("T", bound=type[Transform])


def register(cls: T) -> T:
    """Class decorator: make a transform reachable by `get_transform(cls.name, ...)`."""
    if cls.name in TRANSFORMS:
        raise ConfigError(f"transform {cls.name!r} registered twice")
    TRANSFORMS[cls.name] = cls
    return cls


def get_transform(name: str, **params: Any) -> Transform:
    """Build a registered transform by name, e.g. `get_transform('median', kernel=3)`.

    Unknown names and unknown parameters raise `ConfigError` listing the valid ones.
    `chain` takes `transforms=[...]` of Transforms, names or {'name': ..., **params} dicts.
    """
    cls = TRANSFORMS.get(str(name).lower())
    if cls is None:
        raise unknown_name("transform", str(name), list(TRANSFORMS))
    check_names(cls, params, f"transform {cls.name!r}")
    return cls(**params)


def build(spec: Transform | str | Mapping[str, Any]) -> Transform:
    """A Transform from a Transform, a name, or a {'name': ..., **params} mapping."""
    if isinstance(spec, Transform):
        return spec
    if isinstance(spec, str):
        return get_transform(spec)
    if isinstance(spec, Mapping) and "name" in spec:
        params = {k: v for k, v in spec.items() if k != "name"}
        return get_transform(str(spec["name"]), **params)
    raise ConfigError(f"cannot build a transform from {spec!r}; give a name, a Transform or "
                      "a mapping with a 'name' key")


def check_int(name: str, field: str, value: Any, lo: int, hi: int | None = None) -> None:
    """Require an integer (not a bool) in [lo, hi]."""
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= lo and (
        hi is None or value <= hi)
    rng = f"{lo}..{hi}" if hi is not None else f">= {lo}"
    require(ok, f"{name}: {field} must be an integer in {rng}, got {value!r}")


def check_positive(name: str, field: str, value: Any) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 and (
        value == value and value != float("inf"))
    require(ok, f"{name}: {field} must be a positive finite number, got {value!r}")


def check_odd_kernel(name: str, field: str, value: Any) -> None:
    check_int(name, field, value, 1)
    require(value % 2 == 1, f"{name}: {field} must be odd so the window is centred on the "
                            f"pixel, got {value}; use {value + 1} or {max(value - 1, 1)}")


def check_fits(name: str, spec: InputSpec, radius: int) -> None:
    """Reflect padding needs the window radius below the image's height and width."""
    h, w = spec.shape[-2:]
    require(radius < min(h, w), f"{name}: a window of radius {radius} does not fit images of "
                                f"{h} x {w}; choose a smaller window")


Fn = Callable[[torch.Tensor], torch.Tensor]
