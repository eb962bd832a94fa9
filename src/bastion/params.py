"""User parameters for a dataclass config: unknown names refused with the valid ones listed,
wrong arguments turned into one-line ConfigErrors (no torch import)."""

from __future__ import annotations

from dataclasses import fields
from typing import Any, TypeVar

from bastion.errors import ConfigError

T = TypeVar("T")


def check_names(cls: type, params: dict[str, Any], label: str) -> None:
    """Refuse keys of `params` that are not fields of dataclass `cls`, naming the valid ones."""
    valid = [f.name for f in fields(cls)]
    extra = sorted(set(params) - set(valid))
    if extra:
        raise ConfigError(f"{label} has no parameter {', '.join(extra)}; valid parameters: "
                          f"{', '.join(valid) or '(none)'}")


def build(cls: type[T], params: dict[str, Any], label: str) -> T:
    """`cls(**params)` after `check_names`; a TypeError from the constructor is a ConfigError."""
    check_names(cls, params, label)
    try:
        return cls(**params)
    except TypeError as e:
        raise ConfigError(f"{label}: invalid parameters ({e})") from None
