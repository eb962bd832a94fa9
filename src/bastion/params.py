"""User parameters for a dataclass config: unknown names refused with the valid ones listed,
wrong arguments turned into one-line ConfigErrors (no torch import); and pydantic-checked
config sections whose errors list every bad field."""

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


def validated(model: type[T], data: Any, what: str) -> T:
    """`model.model_validate(data)` for a pydantic model; a validation error becomes one
    ConfigError `invalid <what>:` with a line per bad field."""
    from pydantic import ValidationError

    try:
        return model.model_validate(data)  # type: ignore[attr-defined, no-any-return]
    except ValidationError as e:
        lines = [f"  {'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()]
        raise ConfigError(f"invalid {what}:\n" + "\n".join(lines)) from None
