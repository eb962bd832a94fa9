"""Checkpoints: one safetensors file whose header carries the JSON metadata.

Weights are plain tensors (safetensors never executes code); the header's "bastion" entry
is JSON with the architecture and its arguments, the input spec, number of classes,
dataset, test accuracy, seed and library versions. `load_classifier` rebuilds the model
from the zoo, so loading never unpickles anything.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

import torch

from bastion.core import CheckpointError, Classifier, ConfigError, InputSpec
from bastion.models import zoo

FORMAT_VERSION = 1


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


def build_classifier(arch: str, spec: InputSpec, num_classes: int, arch_args: dict[str, Any] | None = None,
                     device: str | torch.device | None = "auto", name: str | None = None) -> Classifier:
    """A fresh zoo model wrapped as a Classifier, with its architecture recorded in meta."""
    args = dict(arch_args or {})
    module = zoo.create(arch, spec.shape, num_classes, **args)
    return Classifier(module, spec, num_classes, device=device, name=name or arch,
                      meta={"arch": arch, "arch_args": args})


def save_classifier(path: str | Path, clf: Classifier, **meta: Any) -> Path:
    """Write weights + metadata atomically (temp file, then rename). Extra keyword
    arguments (dataset=, test_accuracy=, seed=, ...) are stored in the metadata."""
    from safetensors.torch import save_file

    path = Path(path)
    if "arch" not in clf.meta:
        raise ConfigError("only zoo models (built with build_classifier) can be checkpointed by name")
    record = {"format": FORMAT_VERSION, "arch": clf.meta["arch"], "arch_args": clf.meta.get("arch_args", {}),
              "num_classes": clf.num_classes, "input_spec": clf.spec.to_dict(), "name": clf.name,
              "versions": library_versions(), **{k: v for k, v in clf.meta.items() if k not in ("arch", "arch_args")},
              **meta}
    state = {k: v.detach().cpu().contiguous() for k, v in clf.module.state_dict().items()}
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
        raise CheckpointError(f"{path}: safetensors file without Bastion metadata; save it with "
                              "bastion.models.save_classifier")
    try:
        return json.loads(header["bastion"])
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: corrupt metadata ({e})") from e


def load_classifier(path: str | Path, device: str | torch.device | None = "auto") -> Classifier:
    """Rebuild the zoo architecture named in the metadata and load the weights."""
    from safetensors.torch import load_file

    meta = read_metadata(path)
    try:
        spec = InputSpec.from_dict(meta["input_spec"])
        clf = build_classifier(meta["arch"], spec, int(meta["num_classes"]), meta.get("arch_args", {}),
                               device="cpu", name=meta.get("name"))
        state = load_file(str(path))
        clf.module.load_state_dict(state, strict=True)
    except CheckpointError:
        raise
    except (KeyError, RuntimeError, ConfigError, ValueError) as e:
        raise CheckpointError(f"{path}: weights do not match the recorded architecture ({e})") from e
    clf.meta.update({k: v for k, v in meta.items() if k not in ("arch_args",)})
    return clf.to(resolve(device))


def resolve(device: str | torch.device | None) -> torch.device:
    from bastion.core import resolve_device
    return resolve_device(device)
