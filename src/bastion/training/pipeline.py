"""Build + train + checkpoint in one call (what `bastion train` and `make demo` run)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from bastion.core import InputSpec, resolve_device
from bastion.data import load
from bastion.models import build_classifier, save_classifier
from bastion.paths import check_out_file
from bastion.training.fit import TrainConfig, fit


def check_finite_weights(clf: Any) -> None:
    """Refuse to save a model whose training diverged (NaN or infinite weights)."""
    import torch

    from bastion.training.fit import DivergedError

    for name, t in clf.module.state_dict().items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise DivergedError(f"training diverged: tensor {name!r} holds NaN or infinite values; lower "
                                "the learning rate; nothing was saved")


def train_and_save(arch: str, data: str, out: str | Path, *, epochs: int = 5, batch_size: int = 32,
                   lr: float = 1e-3, optimizer: str = "adam", patience: int | None = None,
                   arch_args: dict[str, Any] | None = None, root: str | Path | None = None,
                   seed: int = 0, device: str = "auto", progress: bool | None = None,
                   on_epoch: Callable[[dict[str, float]], None] | None = None) -> dict[str, Any]:
    """Train zoo model `arch` on data set `data` and save it to `out`. All inputs are
    validated before training starts. Returns a JSON-ready report."""
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer, seed=seed,
                      patience=patience, progress=progress)
    cfg.validate()
    out = Path(out)
    check_out_file(out, "checkpoint path", (".st", ".safetensors"))
    dev = resolve_device(device)
    train, test = load(data, "train", root=root), load(data, "test", root=root)
    import torch
    torch.manual_seed(seed)
    clf = build_classifier(arch, train.input_spec(), train.num_classes, arch_args, device=dev)
    res = fit(clf, train, test, cfg, on_epoch=on_epoch)
    check_finite_weights(clf)
    save_classifier(out, clf, dataset=data, test_accuracy=res.test_accuracy,
                    train_accuracy=res.train_accuracy, seed=seed, training=res.config,
                    history=res.history, class_names=train.class_names)
    return {"checkpoint": str(out), "model": arch, "data": data, "test_accuracy": res.test_accuracy,
            "train_accuracy": res.train_accuracy, "epochs_run": len(res.history), "history": res.history,
            "wall_time_s": res.wall_time, "seed": seed, "device": str(dev)}


def train_dp_and_save(arch: str, data: str, out: str | Path, *, dp: Any, arch_args: dict[str, Any] | None = None,
                      root: str | Path | None = None, device: str = "auto",
                      on_eval: Callable[[dict[str, float]], None] | None = None) -> dict[str, Any]:
    """Train zoo model `arch` on `data` with DP-SGD (`dp`: a `DPConfig`) and save it with a
    `privacy` metadata record (parameters and the epsilon spent under every accountant)."""
    from bastion.training.dp import check_dp_model, train_dp

    dp.validate()
    out = Path(out)
    check_out_file(out, "checkpoint path", (".st", ".safetensors"))
    dev = resolve_device(device)
    train, test = load(data, "train", root=root), load(data, "test", root=root)
    dp.validate(len(train))
    import torch
    torch.manual_seed(dp.seed)
    clf = build_classifier(arch, InputSpec(train.input_shape), train.num_classes, arch_args, device=dev)
    check_dp_model(clf, fix=dp.fix_batchnorm)
    res = train_dp(clf, train, test, dp, on_eval=on_eval)
    check_finite_weights(clf)
    privacy = res.privacy_record()
    save_classifier(out, clf, dataset=data, test_accuracy=res.test_accuracy,
                    train_accuracy=res.train_accuracy, seed=dp.seed, training=res.config,
                    history=res.history, class_names=train.class_names, privacy=privacy)
    return {"checkpoint": str(out), "model": arch, "data": data, "test_accuracy": res.test_accuracy,
            "train_accuracy": res.train_accuracy, "steps": res.steps, "stop_reason": res.stop_reason,
            "history": res.history, "wall_time_s": res.wall_time, "seed": dp.seed, "device": str(dev),
            "engine": res.engine, "privacy": privacy}
