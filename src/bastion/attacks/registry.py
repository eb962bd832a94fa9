"""Name -> attack class registry used by the CLI, audit configs and `bastion attacks`."""

from __future__ import annotations

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
    attack = cls(**params)
    attack.validate()
    return attack


def describe(name: str) -> dict[str, Any]:
    cls = get(name)
    defaults = {f.name: (f.default if f.default is not MISSING else None) for f in fields(cls)}
    return {"name": cls.name, "kind": cls.kind, "norms": list(cls.norms),
            "targeted": cls.supports_targeted, "black_box": cls.black_box,
            "defaults": defaults, "summary": (cls.__doc__ or "").strip().splitlines()[0]}
