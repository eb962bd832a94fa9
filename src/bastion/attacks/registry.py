"""Name -> attack class registry used by the CLI, audit configs and `bastion attacks`."""

from __future__ import annotations

import math
import types
import typing
from dataclasses import MISSING, fields
from typing import Any

from bastion.attacks.base import Attack
from bastion.core import ConfigError, unknown_name

_REGISTRY: dict[str, type[Attack]] = {}


def register(cls: type[Attack]) -> type[Attack]:
    """Class decorator: make an attack available by its `name` (and `aliases`)."""
    for key in (cls.name, *getattr(cls, "aliases", ())):
        _REGISTRY[key] = cls
    return cls


def _load_all() -> None:
    import bastion.attacks.evasion  # noqa: F401  (registers the built-in attacks)


def names() -> list[str]:
    _load_all()
    return sorted({c.name for c in _REGISTRY.values()})


def get(name: str) -> type[Attack]:
    _load_all()
    key = name.lower()
    if key not in _REGISTRY:
        raise unknown_name("attack", name, names())
    return _REGISTRY[key]


def create(name: str, **params: Any) -> Attack:
    """Instantiate an attack by name; unknown parameters are an error naming the valid ones."""
    cls = get(name)
    valid = {f.name for f in fields(cls)}
    bad = sorted(set(params) - valid)
    if bad:
        raise ConfigError(f"{cls.name}: unknown parameter(s) {bad}; valid: {sorted(valid)}")
    check_param_types(cls, cls.name, params)
    try:
        attack = cls(**params)
        attack.validate()
    except (TypeError, ValueError, OverflowError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{cls.name}: invalid parameters {params} ({e})"[:400]) from None
    return attack


def check_param_types(cls: type, label: str, params: dict[str, Any]) -> None:
    """Refuse parameter values whose type does not fit the dataclass field (a string for
    an int, a list for a float, NaN, a bool for a number) or beyond LIMITS."""
    hints = typing.get_type_hints(cls)
    for key, value in params.items():
        _check_type(label, key, value, hints.get(key))


def _type_name(tp: Any) -> str:
    return " or ".join("null" if a is type(None) else getattr(a, "__name__", str(a))
                       for a in (typing.get_args(tp) if typing.get_origin(tp) in _UNIONS else (tp,)))


_UNIONS = (typing.Union, types.UnionType)


def _fits(value: Any, tp: Any) -> bool:
    """Whether `value` (read from YAML or --arg) fits the field annotation `tp`."""
    origin = typing.get_origin(tp)
    if tp is Any or tp is None:
        return True
    if origin in _UNIONS:
        return any(_fits(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**63
    if tp is float:
        return (isinstance(value, (int, float)) and not isinstance(value, bool)
                and math.isfinite(value))
    if tp is str:
        return isinstance(value, str)
    if origin in (tuple, list):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return isinstance(value, (list, tuple)) and all(_fits(v, args[0]) for v in value) if args else True
    return True


# Upper bounds on the work-sizing parameters, so that no config starts an unbounded run.
LIMITS = {"steps": 100_000, "max_iter": 100_000, "restarts": 1_000, "max_queries": 10_000_000,
          "batch_size": 65_536, "n_restarts": 1_000, "iterations": 100_000}


def _check_type(attack: str, key: str, value: Any, tp: Any) -> None:
    if not _fits(value, tp):
        raise ConfigError(f"{attack}: parameter {key} must be {_type_name(tp)} (finite), got {value!r}"[:300])
    if key in LIMITS and isinstance(value, (int, float)) and not isinstance(value, bool) \
            and value > LIMITS[key]:
        raise ConfigError(f"{attack}: parameter {key} must be <= {LIMITS[key]}, got {value}")


def describe(name: str) -> dict[str, Any]:
    cls = get(name)
    defaults = {f.name: (f.default if f.default is not MISSING else None) for f in fields(cls)}
    return {"name": cls.name, "kind": cls.kind, "norms": list(cls.norms),
            "targeted": cls.supports_targeted, "black_box": cls.black_box,
            "defaults": defaults, "summary": (cls.__doc__ or "").strip().splitlines()[0]}
