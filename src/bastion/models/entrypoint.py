"""User architectures: Python entry points (`my_pkg.models:build`), plain safetensors
state dicts and the checks that keep their errors to one line.

An entry point names a callable that returns an `nn.Module` (a class or a factory
function), written `module.path:attribute` like a console-script entry point. It is
imported from `sys.path` plus the current folder, so a file `mymod.py` next to where a
command runs is `mymod:build`. Weights come from a plain safetensors state dict
(`safetensors.torch.save_file(model.state_dict(), "model.safetensors")`), loaded strictly;
safetensors never executes code, unlike the pickles of `torch.save`.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bastion.core import ConfigError

ENTRY_POINT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*"
                         r"(\.[A-Za-z_][A-Za-z0-9_]*)*$")
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt")
PICKLE_RECIPE = ("convert it once where you trust the file: `from safetensors.torch import save_file; "
                 "save_file(model.state_dict(), \"model.safetensors\")`, then pass "
                 "--model my_pkg.models:build --weights model.safetensors")


def is_entry_point(text: str) -> bool:
    """Whether `text` reads as `module.path:callable` (and not as a file path)."""
    return bool(ENTRY_POINT.match(text)) and not os.path.exists(text)


def refuse_pickle(path: str | Path) -> None:
    """Refuse a pickled model file (`torch.save` output) with the reason and the recipe."""
    p = Path(path)
    if p.suffix.lower() in PICKLE_SUFFIXES:
        raise ConfigError(f"{p}: {p.suffix} files are Python pickles and loading a pickle runs the code "
                          f"inside it, so Bastion does not open them; {PICKLE_RECIPE}")


def import_entry_point(text: str) -> Callable[..., Any]:
    """Import `module.path:attr` from sys.path plus the current folder; one-line errors."""
    if not ENTRY_POINT.match(text):
        raise ConfigError(f"entry point {text!r} must read module.path:callable, e.g. my_pkg.models:build")
    mod_name, attr = text.split(":", 1)
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)
    try:
        obj: Any = importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        missing = e.name or mod_name
        hint = ("; run from the folder that holds it or add that folder to PYTHONPATH"
                if missing == mod_name.split(".")[0] else "")
        raise ConfigError(f"entry point {text!r}: module {missing!r} cannot be imported{hint}") from None
    except Exception as e:  # the user's module failed while importing
        raise ConfigError(f"entry point {text!r}: importing {mod_name!r} failed "
                          f"({type(e).__name__}: {e})"[:400]) from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"entry point {text!r}: {mod_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"entry point {text!r} is not callable (got {type(obj).__name__})")
    return obj


def build_module(entry_point: str, kwargs: dict[str, Any] | None = None) -> nn.Module:
    """Call the entry point with `kwargs` and check it returned an `nn.Module`."""
    fn = import_entry_point(entry_point)
    try:
        module = fn(**(kwargs or {}))
    except Exception as e:
        raise ConfigError(f"entry point {entry_point!r} failed with arguments {kwargs or {}} "
                          f"({type(e).__name__}: {e})"[:400]) from None
    if not isinstance(module, nn.Module):
        raise ConfigError(f"entry point {entry_point!r} returned {type(module).__name__}, not a torch.nn.Module")
    return module


def _names(keys: list[str], limit: int = 3) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... (+{len(keys) - limit})" if len(keys) > limit else "")


def state_dict_mismatch(module: nn.Module, state: dict[str, torch.Tensor]) -> str | None:
    """One line describing how `state` fails to fit `module` (None when it fits exactly)."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {list(state[k].shape)} vs {list(own[k].shape)}" for k in own
              if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing ({_names(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected ({_names(unexpected)})")
    if shapes:
        parts.append(f"{len(shapes)} of another shape (file vs model: {_names(shapes, 2)})")
    return "; ".join(parts) or None


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A plain safetensors state dict (pickles are refused)."""
    from safetensors.torch import load_file

    p = Path(path)
    refuse_pickle(p)
    if not p.is_file():
        raise ConfigError(f"--weights {p}: file not found")
    try:
        state = load_file(str(p))
    except Exception as e:  # safetensors raises its own error types for a bad header
        raise ConfigError(f"--weights {p}: not a readable safetensors file ({type(e).__name__}: {e})"[:400]) from None
    for name, t in state.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ConfigError(f"--weights {p}: tensor {name!r} contains NaN or infinite values")
    return state


def load_weights(module: nn.Module, path: str | Path, what: str) -> None:
    """Strictly load a safetensors state dict into `module`; a mismatch is one line."""
    state = read_state_dict(path)
    why = state_dict_mismatch(module, state)
    if why:
        raise ConfigError(f"--weights {path} does not fit {what}: {why}"[:500])
    try:
        module.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError) as e:
        raise ConfigError(f"--weights {path} does not fit {what} ({str(e).splitlines()[0]})"[:500]) from None


def class_entry_point(module: nn.Module) -> str | None:
    """`module`'s class as an importable entry point (None for __main__ or local classes)."""
    cls = type(module)
    if cls.__module__ in ("__main__", "builtins") or "<locals>" in cls.__qualname__:
        return None
    return f"{cls.__module__}:{cls.__qualname__}"


def check_rebuilds(entry_point: str, kwargs: dict[str, Any], module: nn.Module) -> None:
    """Refuse when `entry_point(**kwargs)` does not rebuild `module`'s state-dict layout
    (names and shapes), so a checkpoint never records an entry point it cannot load."""
    try:
        with torch.device("meta"):
            probe = build_module(entry_point, kwargs)
    except ConfigError:  # some builders run a probe forward pass, which needs real memory
        probe = build_module(entry_point, kwargs)
    why = state_dict_mismatch(probe, {k: v for k, v in module.state_dict().items()})
    if why:
        raise ConfigError(f"entry point {entry_point!r} with {kwargs} builds another architecture than the "
                          f"model being saved ({why}); pass entry_point='pkg.mod:build' and entry_args="
                          "{...} that rebuild it"[:500])


def fresh_builder(module: nn.Module) -> Callable[[], nn.Module]:
    """A build function for shadow models of an in-memory architecture: a deep copy whose
    every parameter is re-initialised by its layer's `reset_parameters()`. Refuses (one
    line) when some parameter belongs to a layer without one: a copy would start from the
    audited model's own weights."""
    owned: set[int] = set()
    for m in module.modules():
        if callable(getattr(m, "reset_parameters", None)):
            owned.update(id(p) for p in m.parameters(recurse=False))
    orphans = [n for n, p in module.named_parameters() if id(p) not in owned]
    if orphans:
        raise ConfigError(f"shadow models need a fresh copy of the architecture, but parameter(s) "
                          f"{_names(orphans)} have no reset_parameters(); pass build_fn= (a function "
                          "returning a new model)")

    def build() -> nn.Module:
        import copy

        fresh = copy.deepcopy(module)
        for m in fresh.modules():
            if callable(getattr(m, "reset_parameters", None)):
                m.reset_parameters()
        return fresh
    return build
