"""Defenses. `bastion.defenses.gradient`: gradient-leakage defenses (noise, pruning,
quantisation, per-example clipping + noise). `bastion.defenses.preprocess`: input
transformations against evasion (`Preprocessed`, `get_transform`), loaded on first use."""

from typing import Any

_PREPROCESS = ("Preprocessed", "get_transform", "adaptive")


def __getattr__(name: str) -> Any:
    if name in _PREPROCESS:
        from bastion.defenses import preprocess
        return getattr(preprocess, name)
    raise AttributeError(f"module 'bastion.defenses' has no attribute {name!r}")
