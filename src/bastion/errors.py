"""The errors Bastion raises on purpose (the CLI maps them to one `error:` line and exit
code 2), the unknown-name error and the plain-number check. Free of heavy imports so the
command line starts without torch; `bastion.core` re-exports all of them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


class BastionError(Exception):
    """Base class of every error Bastion raises on purpose. The CLI exits with code 2."""


class ConfigError(BastionError, ValueError):
    """An impossible or out-of-range parameter, an unknown name, a bad combination."""


class InputError(BastionError, ValueError):
    """Inputs of the wrong shape, dtype or value range for the model they are fed to."""


class DataError(BastionError, OSError):
    """A data file is missing, unreadable or not in the expected format."""


class CheckpointError(BastionError, OSError):
    """A checkpoint is missing, corrupt, or does not describe a known architecture."""


def unknown_name(kind: str, name: str, valid: Sequence[str]) -> ConfigError:
    """The standard error for an unknown registry name, listing the valid ones."""
    return ConfigError(f"unknown {kind} {name!r}; valid {kind}s: {', '.join(sorted(valid))}")


def check_number(value: Any, name: str, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, integer: bool = False) -> Any:
    """Refuse non-numbers, NaN, infinities and values outside [low, high] (or (low, high]
    with `low_open`) with a one-line ConfigError naming the value; return it unchanged."""
    ok_types = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_types):
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"{name} must be {kind}, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be finite, got {value}")
    if low is not None and (value <= low if low_open else value < low):
        bound = ("positive" if low_open else "non-negative") if low == 0 else \
            f"{'>' if low_open else '>='} {low:g}"
        raise ConfigError(f"{name} must be {bound}, got {value:g}")
    if high is not None and value > high:
        raise ConfigError(f"{name} must be <= {high:g}, got {value:g}")
    return value
