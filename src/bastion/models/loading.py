"""One loader for every model source a command accepts.

- a Bastion checkpoint (`.st`, written by `bastion train` or `save_classifier`);
- a Python entry point `my_pkg.models:build` (a callable returning an `nn.Module`),
  with `weights=` a plain safetensors state dict and the input spec given explicitly;
- a `torch.export` program (`.pt2`, `torch.export.save` output), input spec explicit.

Pickled files (`.pt`, `.pth`, `.pkl`, ...) are refused: loading a pickle runs the code
inside it. The input spec of a user model is never guessed: a missing input shape is a
one-line error naming the flag. The number of classes, when not given, is read from the
width of the model's output on one probe input (and checked against it when given).
"""

from __future__ import annotations

import json
import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bastion.core import Classifier, ConfigError, InputSpec
from bastion.models.entrypoint import build_module, is_entry_point, load_weights, refuse_pickle

MAX_INPUT_NUMEL = 2**24


@dataclass
class ModelSource:
    """Where a model comes from and what its inputs look like.

    Attributes:
        model: checkpoint path (.st), torch.export program (.pt2) or entry point
            'module.path:callable'.
        weights: safetensors state dict for an entry point (None = its initial weights).
        input_shape: per-example input shape, e.g. (1, 28, 28); required for entry points
            and .pt2 programs.
        num_classes: output classes (None = the width of the model's output).
        mean, std: per-channel normalisation the model expects (None = none); inputs stay
            in `bounds` and the classifier normalises internally.
        bounds: value range of raw inputs ((0, 1) when None).
        kwargs: keyword arguments for the entry point.
    """

    model: str | Path
    weights: str | Path | None = None
    input_shape: tuple[int, ...] | None = None
    num_classes: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    bounds: tuple[float, float] | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        """'entry-point', 'export' or 'checkpoint'."""
        text = str(self.model)
        if is_entry_point(text):
            return "entry-point"
        if Path(text).suffix.lower() == ".pt2":
            return "export"
        return "checkpoint"

    def spec_flags(self) -> list[str]:
        """The input-spec flags that were given."""
        names = {"weights": "--weights", "input_shape": "--input-shape", "num_classes": "--num-classes",
                 "mean": "--mean", "std": "--std", "bounds": "--bounds"}
        out = [flag for k, flag in names.items() if getattr(self, k) is not None]
        if self.kwargs:
            out.append("--model-arg")
        return out


def input_spec(src: ModelSource, what: str) -> InputSpec:
    """The InputSpec from explicit options; a missing shape is a one-line error."""
    if src.input_shape is None:
        raise ConfigError(f"{what} does not record its input shape: pass --input-shape, e.g. "
                          "--input-shape 1,28,28 (channels, height, width) or --input-shape 64")
    shape = tuple(src.input_shape)
    if not 1 <= len(shape) <= 4 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape):
        raise ConfigError(f"--input-shape must be 1 to 4 positive integers, got {','.join(map(str, shape))}")
    if math.prod(shape) > MAX_INPUT_NUMEL:
        raise ConfigError(f"--input-shape {shape} has more than {MAX_INPUT_NUMEL} values per example")
    for name, v in (("--mean", src.mean), ("--std", src.std)):
        if v is not None and len(v) not in (1, shape[0]):
            raise ConfigError(f"{name} has {len(v)} values; the input has {shape[0]} channel(s) (give 1 or {shape[0]})")
    if src.bounds is not None and len(src.bounds) != 2:
        raise ConfigError(f"--bounds must be two numbers LOW,HIGH, got {list(src.bounds)}")
    return InputSpec(shape=shape, bounds=tuple(src.bounds) if src.bounds is not None else (0.0, 1.0),  # type: ignore[arg-type]
                     mean=None if src.mean is None else tuple(src.mean),
                     std=None if src.std is None else tuple(src.std))


def _probe_classes(module: nn.Module, spec: InputSpec, num_classes: int | None, what: str) -> int:
    """Run one input through `module` (eval mode) and read the number of classes off its
    output; refuse a model that rejects the declared shape or returns no [N, K] logits."""
    module.eval()
    lo, hi = spec.bounds
    x = torch.full((2, *spec.shape), (lo + hi) / 2)
    if spec.mean is not None or spec.std is not None:
        mean = torch.tensor(spec.mean or (0.0,)).view(1, -1, *([1] * (len(spec.shape) - 1)))
        std = torch.tensor(spec.std or (1.0,)).view(1, -1, *([1] * (len(spec.shape) - 1)))
        x = (x - mean) / std
    try:
        with torch.no_grad():
            out = module(x)
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else ""
        hint = ""
        if isinstance(module, ExportedModule) and "size()[0]" in msg:
            hint = ("; export it with a dynamic batch dimension: torch.export.export(model, (x,), "
                    "dynamic_shapes=({0: torch.export.Dim('batch')},)) with a batch of 2 or more in x")
        raise ConfigError(f"{what} does not accept batches of inputs of shape {list(spec.shape)} "
                          f"(--input-shape): {type(e).__name__}: {msg}"[:400] + hint) from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 2:
        got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"{what} must return logits of shape [batch, classes]; on a batch of 2 it "
                          f"returned {got}")
    k = int(out.shape[1])
    if num_classes is not None and num_classes != k:
        raise ConfigError(f"--num-classes {num_classes} does not match the model's {k} outputs")
    if k < 2:
        raise ConfigError(f"{what} has {k} output; a classifier needs at least 2 classes")
    return k


def _check_pt2_pickle_free(path: Path) -> None:
    """Refuse a .pt2 archive that would unpickle anything: torch.export.load unpickles
    tensor-subclass weights, custom objects and legacy .pt members; plain tensors it
    reads as raw bytes."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise ConfigError(f"{path}: not a torch.export archive ({e})") from None
    why = None
    with zf:
        for name in zf.namelist():
            if name.endswith("_config.json") and "/data/" in name:
                try:
                    cfg = json.loads(zf.read(name)).get("config", {})
                except (ValueError, AttributeError):
                    why = f"unreadable {name}"
                    break
                for fqn, meta in cfg.items():
                    if not isinstance(meta, dict):
                        why = f"unreadable {name}"
                    elif meta.get("use_pickle") or not str(meta.get("path_name", "")).startswith(
                            ("weight_", "tensor_")):
                        why = f"{fqn!r} is stored as a pickle"
                    if why:
                        break
            elif "/sample_inputs/" in name:
                import io
                try:  # torch.export.load retries a failed weights-only load with full unpickling
                    torch.load(io.BytesIO(zf.read(name)), weights_only=True)
                except Exception:
                    why = f"member {name} is not plain tensors"
            elif name.endswith((".pt", ".pkl")):
                why = f"member {name} is a pickle (legacy archive format)"
            if why:
                break
    if why:
        raise ConfigError(f"{path}: {why}, and loading a pickle runs code; re-export the model with "
                          "plain tensor weights, or use --model my_pkg.models:build --weights file.safetensors")


class ExportedModule(nn.Module):
    """A torch.export program as a module. The program's graph was captured in one mode
    (usually eval), and its own `eval()`/`train()` raise; here they only set the flag."""

    def __init__(self, program_module: nn.Module) -> None:
        super().__init__()
        self.program = program_module

    def train(self, mode: bool = True) -> ExportedModule:
        self.training = mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.program(x)


def load_exported(path: str | Path) -> nn.Module:
    """The module of a `torch.export.save` program (.pt2), after a pickle-free check."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--model {p}: file not found")
    _check_pt2_pickle_free(p)
    try:
        program = torch.export.load(str(p))
        return ExportedModule(program.module())
    except Exception as e:
        raise ConfigError(f"{p}: cannot load the torch.export program ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''})"[:400]) from None


def load_model(src: ModelSource, device: str | torch.device | None = "auto") -> Classifier:
    """Load any model source as a Classifier; every refusal is a one-line ConfigError (or
    CheckpointError) raised before any attack runs."""
    from bastion.models.checkpoint import load_classifier

    kind = src.kind
    text = str(src.model)
    if kind == "entry-point":
        spec = input_spec(src, f"entry point {text!r}")
        module = build_module(text, src.kwargs)
        if src.weights is not None:
            load_weights(module, src.weights, f"the model built by {text}")
        k = _probe_classes(module, spec, src.num_classes, f"the model built by {text}")
        meta = {"entry_point": text, "entry_args": dict(src.kwargs),
                "weights": None if src.weights is None else str(src.weights)}
        return Classifier(module, spec, k, device=device, name=text, meta=meta)
    refuse_pickle(text)
    if src.weights is not None:
        raise ConfigError(f"--weights needs --model as an entry point (module.path:callable) that builds the "
                          f"architecture; {text} is not one")
    if src.kwargs:
        raise ConfigError("--model-arg needs --model as an entry point (module.path:callable)")
    if kind == "export":
        spec = input_spec(src, f"the torch.export program {text}")
        module = load_exported(text)
        k = _probe_classes(module, spec, src.num_classes, f"the torch.export program {text}")
        return Classifier(module, spec, k, device=device, name=Path(text).stem,
                          meta={"exported_program": text})
    if Path(text).suffix.lower() == ".onnx":
        raise ConfigError(f"{text}: ONNX models are not read; export the PyTorch model with torch.export "
                          "(.pt2) or pass --model my_pkg.models:build --weights file.safetensors")
    given = src.spec_flags()
    if given:
        raise ConfigError(f"{text} is a Bastion checkpoint, which records its own architecture and input "
                          f"spec; drop {', '.join(given)}")
    return load_classifier(text, device=device)
