"""Checkpoints: one safetensors file whose header carries the JSON metadata.

Weights are plain tensors (safetensors never executes code); the header's "bastion" entry
is JSON with the architecture and its arguments, the input spec, number of classes,
dataset, test accuracy, seed and library versions. `load_classifier` rebuilds the model
from the zoo, so loading never unpickles anything.

A user's own architecture is stored as its entry point (`my_pkg.models:build`, a callable
returning the `nn.Module`) and the entry point's keyword arguments instead of a zoo name;
loading imports that entry point (the same code `--model my_pkg.models:build` runs) and
refuses, in one line, when it is not importable or builds another layout.
"""

from __future__ import annotations

import json
import math
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

import torch

from bastion.core import CheckpointError, Classifier, ConfigError, InputSpec
from bastion.models import zoo

FORMAT_VERSION = 1
DEFENSE_PREFIX = "defense."  # extra tensors of a defended model (not the base weights)
MAX_INPUT_NUMEL = 2**24  # values per example (a 4096 x 4096 image)


def library_versions() -> dict[str, str]:
    import numpy

    import bastion
    out = {"bastion": bastion.__version__, "torch": torch.__version__, "numpy": numpy.__version__,
           "python": platform.python_version()}
    try:
        import safetensors
        out["safetensors"] = safetensors.__version__
    except (ImportError, AttributeError):
        pass
    return out


MAX_PARAMETERS = 2**28  # 1 GiB of float32 weights


def _fits_default(value: Any, default: Any) -> bool:
    """Whether an architecture argument has the type of its default (ints positive)."""
    def pos_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and 0 < v < 2**31
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return pos_int(value)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if isinstance(default, str):
        return isinstance(value, str)
    if isinstance(default, tuple):
        return isinstance(value, (list, tuple)) and all(pos_int(v) for v in value)
    return True


def _check_arch_args(arch: str, spec: InputSpec, num_classes: int, args: dict[str, Any]) -> None:
    """Type-check architecture arguments and refuse models too large to build: the model
    is first built on the 'meta' device (no memory) to count its parameters."""
    import inspect

    if arch not in zoo.BUILDERS:
        zoo.create(arch, spec.shape, num_classes)  # raises the standard unknown-name error
    params = inspect.signature(zoo.BUILDERS[arch]).parameters
    for k, v in args.items():
        if k in params and not _fits_default(v, params[k].default):
            raise ConfigError(f"model {arch!r}: argument {k}={v!r} does not fit its default "
                              f"{params[k].default!r} (type and sign)"[:300])
    try:
        with torch.device("meta"):
            probe = zoo.create(arch, spec.shape, num_classes, **args)
    except ConfigError:
        raise
    except (TypeError, ValueError, RuntimeError, ZeroDivisionError) as e:
        raise ConfigError(f"model {arch!r}: arguments {args} cannot build it ({e})"[:300]) from None
    n = sum(p.numel() for p in probe.parameters())
    if n > MAX_PARAMETERS:
        raise ConfigError(f"model {arch!r} with {args} would have {n:,} parameters; the limit is "
                          f"{MAX_PARAMETERS:,}")


def build_classifier(arch: str, spec: InputSpec, num_classes: int, arch_args: dict[str, Any] | None = None,
                     device: str | torch.device | None = "auto", name: str | None = None) -> Classifier:
    """A fresh zoo model wrapped as a Classifier, with its architecture recorded in meta."""
    args = dict(arch_args or {})
    _check_arch_args(arch, spec, num_classes, args)
    module = zoo.create(arch, spec.shape, num_classes, **args)
    return Classifier(module, spec, num_classes, device=device, name=name or arch,
                      meta={"arch": arch, "arch_args": args})


def _entry_source(clf: Classifier, entry: str | None, entry_args: dict[str, Any] | None) -> dict[str, Any]:
    """How a user architecture is rebuilt: entry point + arguments, checked to rebuild
    exactly this state-dict layout before anything is written."""
    from bastion.models.entrypoint import check_rebuilds, class_entry_point

    if clf.meta.get("exported_program") and entry is None:
        raise ConfigError(f"a torch.export program ({clf.meta['exported_program']}) is already a model file: "
                          "pass it as --model, or save_classifier(..., entry_point='pkg.mod:build') to store "
                          "code that rebuilds it")
    entry = entry or clf.meta.get("entry_point") or class_entry_point(clf.module)
    if entry is None:
        raise ConfigError(f"cannot record how to rebuild {type(clf.module).__name__} (defined in __main__ or "
                          "inside a function): move it into an importable module and pass "
                          "entry_point='my_pkg.models:build'")
    args = dict(entry_args if entry_args is not None else clf.meta.get("entry_args") or {})
    try:
        json.dumps(args)
    except (TypeError, ValueError):
        raise ConfigError(f"entry_args must be JSON values (numbers, strings, lists), got {args!r}"[:300]) from None
    check_rebuilds(entry, args, clf.module)
    return {"entry_point": entry, "entry_args": args}


def save_classifier(path: str | Path, clf: Classifier, **meta: Any) -> Path:
    """Write weights + metadata atomically (temp file, then rename). Extra keyword
    arguments (dataset=, test_accuracy=, seed=, ...) are stored in the metadata.

    A zoo model is recorded by architecture name. Any other module is recorded by an entry
    point that rebuilds it: `entry_point='my_pkg.models:build'` (with `entry_args={...}`,
    its keyword arguments), else the one it was loaded from, else its class when that is
    importable and takes no arguments. The entry point is built once (on the meta device)
    to check it gives this exact layout; otherwise a ConfigError says what to pass.

    A defended model (`Preprocessed`, `Detected`) is saved as its base model plus the
    defense (`bastion.defenses.saved.save_defended`). `extra_tensors={...}` stores more
    tensors next to the weights (names starting with
    'defense.': a defended model's detector, see `bastion.defenses.saved`)."""
    from safetensors.torch import save_file

    from bastion.defenses.saved import is_defended, save_defended

    if is_defended(clf):  # a Preprocessed / Detected model: base weights + its defense record
        return save_defended(path, clf, **meta)
    path = Path(path)
    extra = meta.pop("extra_tensors", None) or {}
    if any(not k.startswith(DEFENSE_PREFIX) for k in extra):
        raise ConfigError(f"extra tensors must be named {DEFENSE_PREFIX}*, got {sorted(extra)}"[:300])
    entry = meta.pop("entry_point", None)
    entry_args = meta.pop("entry_args", None)
    if "arch" in clf.meta and entry is None:
        source = {"arch": clf.meta["arch"], "arch_args": clf.meta.get("arch_args", {})}
    else:
        source = _entry_source(clf, entry, entry_args)
    skip = ("arch", "arch_args", "entry_point", "entry_args")
    record = {"format": FORMAT_VERSION, **source,
              "num_classes": clf.num_classes, "input_spec": clf.spec.to_dict(), "name": clf.name,
              "versions": library_versions(), **{k: v for k, v in clf.meta.items() if k not in skip},
              **meta}
    state = {k: v.detach().cpu().contiguous() for k, v in clf.module.state_dict().items()}
    state.update({k: v.detach().cpu().contiguous() for k, v in extra.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(state, tmp, metadata={"bastion": json.dumps(record, default=str)})
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON metadata of a checkpoint, without loading weights."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found; create one with `bastion train ... --out {path}`")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint ({e})") from e
    if "bastion" not in header:
        raise CheckpointError(f"{path}: a plain safetensors state dict without Bastion metadata (no architecture); pass the "
                              f"code that builds the model: --model my_pkg.models:build --weights {path} "
                              "--input-shape C,H,W --num-classes K")
    try:
        meta = json.loads(header["bastion"])
    except (json.JSONDecodeError, RecursionError) as e:
        raise CheckpointError(f"{path}: corrupt metadata ({e})") from e
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: Bastion metadata must be a JSON object, got "
                              f"{type(meta).__name__}; re-save it with bastion.models.save_classifier")
    for key in ("arch", "dataset", "name", "entry_point"):
        if meta.get(key) is not None and not isinstance(meta[key], str):
            raise CheckpointError(f"{path}: metadata {key!r} must be a string, got {meta[key]!r}"[:300])
    return meta


def _spec_of(path: Path, meta: dict[str, Any]) -> tuple[InputSpec, int, str, dict[str, Any]]:
    """Input spec, classes, architecture and its arguments from checked metadata."""
    missing = [k for k in ("arch", "num_classes", "input_spec") if k not in meta
               and not (k == "arch" and "entry_point" in meta)]
    if missing:
        raise CheckpointError(f"{path}: metadata lacks {', '.join(missing)}; re-save it with "
                              "bastion.models.save_classifier")
    entry = "arch" not in meta
    arch, n_cls, raw = meta.get("arch", meta.get("entry_point")), meta["num_classes"], meta["input_spec"]
    args = meta.get("entry_args" if entry else "arch_args", {})
    if not isinstance(arch, str):
        raise CheckpointError(f"{path}: metadata 'arch' must be a string, got {arch!r}")
    if isinstance(n_cls, bool) or not isinstance(n_cls, int) or not 2 <= n_cls <= 1_000_000:
        raise CheckpointError(f"{path}: metadata 'num_classes' must be an integer in [2, 10^6], got {n_cls!r}")
    if not isinstance(args, dict):
        raise CheckpointError(f"{path}: metadata 'arch_args' must be an object, got {args!r}")
    if not isinstance(raw, dict) or not isinstance(raw.get("shape"), list) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in raw["shape"]):
        raise CheckpointError(f"{path}: metadata 'input_spec' must be an object with an integer "
                              f"list 'shape', got {raw!r}"[:300])
    if not 1 <= len(raw["shape"]) <= 4 or math.prod(raw["shape"]) > MAX_INPUT_NUMEL:
        raise CheckpointError(f"{path}: metadata input_spec.shape {raw['shape']} is not 1 to 4 dimensions "
                              f"of at most {MAX_INPUT_NUMEL} values per example")
    for key in ("bounds", "mean", "std"):
        v = raw.get(key)
        if v is not None and (not isinstance(v, list) or not all(
                isinstance(a, (int, float)) and not isinstance(a, bool) for a in v)):
            raise CheckpointError(f"{path}: metadata input_spec.{key} must be a list of numbers, got {v!r}"[:300])
    for key in ("mean", "std"):
        v = raw.get(key)
        if v is not None and len(v) not in (1, raw["shape"][0]):
            raise CheckpointError(f"{path}: metadata input_spec.{key} has {len(v)} values; the input "
                                  f"has {raw['shape'][0]} channel(s)")
    if raw.get("bounds") is not None and len(raw["bounds"]) != 2:
        raise CheckpointError(f"{path}: metadata input_spec.bounds must be [low, high], got {raw['bounds']}")
    try:
        spec = InputSpec.from_dict(raw)
    except ConfigError as e:
        raise CheckpointError(f"{path}: invalid input_spec ({e})") from e
    return spec, n_cls, arch, args


def _check_finite(path: Path, state: dict[str, torch.Tensor]) -> None:
    """Refuse weights holding NaN or infinity: every figure computed from them is meaningless."""
    for name, t in state.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"{path}: tensor {name!r} contains NaN or infinite values; the "
                                  "checkpoint is corrupt or its training diverged")


def load_classifier(path: str | Path, device: str | torch.device | None = "auto") -> Classifier:
    """Rebuild the zoo architecture named in the metadata and load the weights. A defended
    checkpoint (metadata `defended`, written by `bastion defend` or
    `bastion.defenses.saved.save_defended`) loads as the defended model: `Preprocessed` or
    `Detected` around the base model."""
    from safetensors.torch import load_file

    path = Path(path)
    meta = read_metadata(path)
    dev = resolve(device)
    spec, n_cls, arch, args = _spec_of(path, meta)
    name = meta.get("name")
    try:
        if "arch" in meta:
            clf = build_classifier(arch, spec, n_cls, args, device="cpu",
                                   name=name if isinstance(name, str) else None)
        else:
            clf = _build_entry(path, arch, args, spec, n_cls, name)
        state = load_file(str(path))
        extra = {}
        if "defended" in meta:
            extra = {k: state.pop(k) for k in list(state) if k.startswith(DEFENSE_PREFIX)}
        clf.module.load_state_dict(state, strict=True)
    except CheckpointError:
        raise
    except (KeyError, RuntimeError, ConfigError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: weights do not match the recorded architecture ({e})"[:500]) from e
    _check_finite(path, state)
    _check_finite(path, extra)
    clf.meta.update({k: v for k, v in meta.items() if k not in ("arch_args", "entry_args")})
    clf = clf.to(dev)
    if "defended" in meta:
        from bastion.defenses.saved import wrap_defended

        return wrap_defended(clf, meta["defended"], extra, path)
    return clf


def _build_entry(path: Path, entry: str, args: dict[str, Any], spec: InputSpec, n_cls: int,
                 name: Any) -> Classifier:
    """Rebuild a user architecture by importing its recorded entry point."""
    from bastion.models.entrypoint import build_module

    try:
        module = build_module(entry, args)
    except ConfigError as e:
        raise CheckpointError(f"{path} records the architecture as entry point {entry!r}, which cannot be "
                              f"rebuilt here: {e}"[:500]) from None
    return Classifier(module, spec, n_cls, device="cpu", name=name if isinstance(name, str) else entry,
                      meta={"entry_point": entry, "entry_args": dict(args)})


def resolve(device: str | torch.device | None) -> torch.device:
    from bastion.core import resolve_device
    return resolve_device(device)
