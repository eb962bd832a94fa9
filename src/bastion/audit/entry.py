"""`bastion.audit.run`: audit any PyTorch model from Python, the way `bastion audit` does
from the command line."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bastion.audit.config import AuditConfig, default_config, load_config, parse_config
from bastion.audit.runner import AuditRun, run_audit
from bastion.core import Classifier, ConfigError, InputSpec
from bastion.data.dataset import Dataset
from bastion.models.loading import ModelSource

DataLike = Dataset | tuple[torch.Tensor, torch.Tensor] | str | Path


def _as_config(config: AuditConfig | dict[str, Any] | str | Path | None) -> AuditConfig:
    if config is None:
        return default_config()
    if isinstance(config, AuditConfig):
        return config.model_copy(deep=True)
    if isinstance(config, dict):
        return parse_config(config)
    if isinstance(config, (str, Path)):
        return load_config(Path(config))
    raise ConfigError(f"config must be an AuditConfig, a dict or a YAML path, got {type(config).__name__}")


def _as_dataset(data: Dataset | tuple[torch.Tensor, torch.Tensor], num_classes: int, what: str) -> Dataset:
    if isinstance(data, Dataset):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        x, y = data
        if not x.is_floating_point():
            raise ConfigError(f"{what}: x must be a float tensor in the model's bounds (got {x.dtype}); "
                              "convert uint8 images with x.float() / 255")
        return Dataset(x.detach().cpu().float(), y.detach().cpu().long(), num_classes, name=what)
    raise ConfigError(f"{what} must be a Dataset, an (x, y) pair of tensors, a data set name or a path "
                      f"(.npz file or image folder), got {type(data).__name__}")


def _named(data: str | Path) -> tuple[str, Path | None]:
    """A registry name, an .npz file or an image folder as (loader name, root)."""
    p = Path(data)
    if p.suffix.lower() == ".npz":
        return "npz", p
    if p.is_dir():
        return "imagefolder", p
    if isinstance(data, Path) or "/" in str(data) or "\\" in str(data):
        raise ConfigError(f"data {str(data)!r}: no such .npz file or image folder")
    return str(data), None


def _as_classifier(model: Any, input_spec: InputSpec | Sequence[int] | None, num_classes: int | None,
                   device: str) -> Classifier | ModelSource | str | Path:
    if isinstance(model, (Classifier, ModelSource)):
        if input_spec is not None or num_classes is not None:
            if isinstance(model, Classifier):
                raise ConfigError("a Classifier carries its own input spec; drop input_spec= and num_classes=")
        return model
    if isinstance(model, (str, Path)):
        return model
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be an nn.Module, a Classifier, a ModelSource or a path, got "
                          f"{type(model).__name__}")
    from bastion.models.loading import _probe_classes

    if input_spec is None:
        raise ConfigError("a plain nn.Module needs input_spec= (an InputSpec, or the per-example shape "
                          "such as (1, 28, 28))")
    spec = input_spec if isinstance(input_spec, InputSpec) else InputSpec(tuple(int(s) for s in input_spec))
    k = _probe_classes(model, spec, num_classes, f"the model ({type(model).__name__})")
    return Classifier(model, spec, k, device=device, name=type(model).__name__)


def run(model: nn.Module | Classifier | ModelSource | str | Path, data: DataLike | None = None,
        config: AuditConfig | dict[str, Any] | str | Path | None = None, *,
        out_dir: str | Path, train: Dataset | tuple[torch.Tensor, torch.Tensor] | None = None,
        input_spec: InputSpec | Sequence[int] | None = None, num_classes: int | None = None,
        build_fn: Callable[[], nn.Module] | None = None,
        train_fn: Callable[..., Any] | None = None,
        device: str = "auto", wait: bool = False) -> AuditRun:
    """Audit a model and write results.json + report.html into `out_dir`.

    Args:
        model: any `nn.Module` (give `input_spec`; it maps normalised inputs to logits),
            a `bastion.core.Classifier`, a `bastion.models.ModelSource`, or a checkpoint
            path (.st).
        data: the evaluation data: a `Dataset`, an `(x, y)` pair of tensors (x float in
            the model's bounds, y integer labels), a data set name ('mnist-5k'), an .npz
            file (split 80/20 into train/test, stratified) or an image folder (with
            train/ and test/ class folders). None: the config's `data.name` or the
            checkpoint's data set.
        config: an `AuditConfig`, the same mapping as the YAML file, or a YAML path;
            None = FGSM + PGD at five budgets.
        out_dir: run folder (re-use it to resume; finished steps are reused).
        train: the model's training data when `data` is in memory (needed by a
            membership section: they are the members).
        input_spec: an `InputSpec` (shape, bounds, mean/std) or the per-example shape
            for a plain module; never guessed.
        num_classes: output classes (default: the width of the module's output).
        build_fn: returns a fresh, untrained model of the same architecture, for the
            shadow models of LiRA, RMIA and Shokri. Default: the zoo architecture or
            entry point the model was loaded from, else a copy of the module with every
            layer re-initialised by `reset_parameters()` (refused when some parameter
            has no such layer).
        train_fn: `train_fn(model, x, y) -> model`, your own training for each shadow
            model (default: Adam, 10 epochs, batch size 32, lr 1e-3; or the recipe a
            checkpoint records).
        device: 'auto', 'cpu' or 'cuda'.
        wait: wait for another audit writing into `out_dir` instead of refusing.

    Returns:
        The `AuditRun` (results dict, sections, cached/new step counts).

    Every input is checked (one-line `ConfigError`) before anything is written.
    """
    from bastion.models.entrypoint import fresh_builder

    cfg = _as_config(config)
    target = _as_classifier(model, input_spec, num_classes, device)
    if isinstance(target, (ModelSource, str, Path)):
        src = target if isinstance(target, ModelSource) else ModelSource(target)
        if build_fn is None and train_fn is None:
            return run_audit(src, cfg, out_dir, **_data_args(data, train, None), device=device, wait=wait)
        from bastion.models.loading import load_model
        target = load_model(src, device=device)
    if build_fn is not None:
        target.shadow_build_fn = build_fn  # type: ignore[assignment]
    elif "arch" not in target.meta and not target.meta.get("entry_point") \
            and not target.meta.get("exported_program"):
        # a module without reset_parameters() everywhere gets no builder: refused in one line
        # only if a section needs shadow models
        with contextlib.suppress(ConfigError):
            target.shadow_build_fn = fresh_builder(target.module)  # type: ignore[assignment]
    if train_fn is not None:
        target.shadow_train_fn = train_fn  # type: ignore[assignment]
    return run_audit(target, cfg, out_dir, **_data_args(data, train, target.num_classes), device=device,
                     wait=wait)


def _data_args(data: DataLike | None, train: Any, num_classes: int | None) -> dict[str, Any]:
    """run_audit's data= and root= for the forms `run` accepts."""
    if data is None:
        if train is not None:
            raise ConfigError("train= was given without data=")
        return {"data": None, "root": None}
    if isinstance(data, (str, Path)):
        if train is not None:
            raise ConfigError("train= goes with in-memory data; a named or on-disk data set has its own "
                              "train split")
        name, root = _named(data)
        return {"data": name, "root": root}
    if num_classes is None:
        raise ConfigError("in-memory data needs a loaded model; pass the model as a Classifier or nn.Module")
    test_ds = _as_dataset(data, num_classes, "data")
    train_ds = None if train is None else _as_dataset(train, num_classes, "train")
    return {"data": (train_ds, test_ds), "root": None}
