"""`bastion train`: train a zoo model on a data set and save a checkpoint."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import typer

from bastion.cli.app import app
from bastion.cli.common import (
    DEVICE_OPTION,
    JSON_OPTION,
    MAX_BATCH_SIZE,
    MAX_EPOCHS,
    MAX_STEPS,
    QUIET_OPTION,
    ROOT_OPTION,
    SEED_OPTION,
    THREADS_OPTION,
    WIDE_OPTION,
    check_common,
    check_float,
    check_int,
    check_out_file,
    console,
    emit,
    parse_kv,
    setup,
    train_threads,
)
from bastion.errors import ConfigError


@app.command("train")
def train_cmd(
    model: str = typer.Option("cnn7", "--model", "-m", help="Zoo architecture (see `bastion models`)."),
    data: str = typer.Option("mnist-5k", "--data", "-d", help="Data set (see `bastion datasets`)."),
    out: Path = typer.Option(..., "--out", "-o", help="Checkpoint path (.st, safetensors)."),
    epochs: int = typer.Option(5, "--epochs", help="Passes over the training set (1..10000)."),
    batch_size: int = typer.Option(32, "--batch-size", help="Minibatch size (1..65536)."),
    lr: float = typer.Option(1e-3, "--lr", help="Learning rate (finite, > 0)."),
    optimizer: str = typer.Option("adam", "--optimizer"),
    patience: int = typer.Option(None, "--patience", help="Early stop after N epochs without gain."),
    arg: list[str] = typer.Option(None, "--arg", help="Model argument key=value (repeatable)."),
    root: Path = ROOT_OPTION,
    seed: int = SEED_OPTION,
    device: str = DEVICE_OPTION,
    as_json: bool = JSON_OPTION,
    dp: bool = typer.Option(False, "--dp", help="Train with DP-SGD (see docs/dp.md)."),
    sigma: float = typer.Option(None, "--sigma", help="DP: noise multiplier (start value if dynamic; default 6). "
                                "gaussian-aug: noise level in input units (default 0.25)."),
    clip: float = typer.Option(4.0, "--clip", help="DP: clipping bound C (start value if decaying)."),
    delta: float = typer.Option(1e-5, "--delta", help="DP: target delta."),
    dynamic: str = typer.Option("baseline", "--dynamic",
                                help="DP variant: baseline | l2-max | cdecay | dyn-s | dyn-sigma | "
                                     "dyn-s-sigma | quantile | adaclip."),
    decay: str = typer.Option("linear", "--decay", help="DP: decay policy linear | exp | cyclic."),
    target_eps: float = typer.Option(None, "--target-eps", help="DP: stop before spending more."),
    target_acc: float = typer.Option(None, "--target-acc", help="DP: stop at this test accuracy."),
    per_layer: bool = typer.Option(False, "--per-layer", help="DP: clip each layer to C/sqrt(M)."),
    dp_steps: int = typer.Option(None, "--steps", help="DP: number of steps (default from --epochs)."),
    accountant: str = typer.Option("rdp", "--accountant",
                                   help="DP: guarantee enforcing --target-eps: rdp | pld | prv | moments."),
    noise_seed: int = typer.Option(None, "--noise-seed",
                                   help="DP: seed the noise and sampling (reproducible, NOT private; "
                                        "default: secure OS randomness)."),
    fix_batchnorm: bool = typer.Option(False, "--fix-batchnorm", help="DP: replace BatchNorm by GroupNorm."),
    defense: str = typer.Option(None, "--defense",
                                help="Train with a defense: pgd-at (Madry et al. 2018), fast-at (Wong et al. "
                                     "2020), trades (Zhang et al. 2019), distillation (Papernot et al. 2016), "
                                     "gaussian-aug (Cohen et al. 2019; with --sigma), ibp (Gowal et al. 2018) "
                                     "or pixeldp (Lecuyer et al. 2019)."),
    def_eps: float = typer.Option(None, "--eps", help="Adversarial / IBP training: Linf budget (default 0.3; "
                                  "ibp 0.1)."),
    defense_arg: list[str] = typer.Option(None, "--defense-arg",
                                          help="Defense parameter key=value (repeatable), e.g. steps=10, "
                                               "beta=6, temperature=100."),
    threads: int = THREADS_OPTION,
    quiet: bool = QUIET_OPTION,
    wide: bool = WIDE_OPTION,
) -> None:
    """Train a model and write a safetensors checkpoint with its metadata."""
    from bastion.training.pipeline import train_and_save

    check_int(epochs, "--epochs", 1, MAX_EPOCHS)
    check_int(batch_size, "--batch-size", 1, MAX_BATCH_SIZE)
    check_int(patience, "--patience", 1, MAX_EPOCHS)
    check_int(dp_steps, "--steps", 1, MAX_STEPS)
    check_float(lr, "--lr", positive=True, high=1e3)
    check_float(sigma, "--sigma", low=1e-6)
    check_float(clip, "--clip", positive=True)
    check_float(delta, "--delta", positive=True, high=1.0)
    check_float(target_eps, "--target-eps", positive=True)
    check_float(target_acc, "--target-acc", low=0.0, high=1.0)
    check_common(seed, device, root)
    check_out_file(out, "--out", (".st", ".safetensors"))
    training_defense = None
    if defense is not None or def_eps is not None or defense_arg:
        if dp:
            raise ConfigError("--defense and --dp are separate trainings; choose one")
        if defense is None:
            raise ConfigError("--eps and --defense-arg need --defense (pgd-at, fast-at, trades, distillation, "
                              "gaussian-aug, ibp or pixeldp)")
        params = parse_kv(defense_arg)
        if sigma is not None:
            if str(defense).lower() != "gaussian-aug":
                raise ConfigError(f"--sigma sets DP-SGD's or gaussian-aug's noise; {defense} has none")
            params = {**params, "sigma": sigma}
        training_defense = build_training_defense(defense, def_eps, params)
    setup(quiet, wide, threads)
    thr = train_threads(model, data, root, parse_kv(arg), threads, batch_size, device)
    if dp:
        _train_dp(model, data, out, epochs, batch_size, lr, optimizer, arg, root, seed, device, as_json,
                  6.0 if sigma is None else sigma, clip, delta, dynamic, decay, target_eps, target_acc, per_layer, dp_steps,
                  accountant, fix_batchnorm, noise_seed)
        return
    if training_defense is not None:
        report = train_defended_and_save(model, data, out, training_defense, epochs=epochs, batch_size=batch_size,
                                         lr=lr, optimizer=optimizer, patience=patience, arch_args=parse_kv(arg),
                                         root=root, seed=seed, device=device)
        console.print(f"[green]saved[/] {out}  {report['defense']['name']}  test accuracy "
                      f"{report['test_accuracy']:.4f}", highlight=False)
        emit({**report, **thr}, as_json)
        return

    report = train_and_save(model, data, out, epochs=epochs, batch_size=batch_size, lr=lr,
                            optimizer=optimizer, patience=patience, arch_args=parse_kv(arg),
                            root=root, seed=seed, device=device,
                            on_epoch=lambda r: console.print(
                                f"epoch {r['epoch']}: loss {r['loss']:.4f}  train {r['train_accuracy']:.4f}"
                                f"  test {r.get('test_accuracy', float('nan')):.4f}", highlight=False))
    console.print(f"[green]saved[/] {out}  test accuracy {report['test_accuracy']:.4f}", highlight=False)
    emit({**report, **thr}, as_json)


def _train_dp(model: str, data: str, out: Path, epochs: int, batch_size: int, lr: float, optimizer: str,
              arg: list[str] | None, root: Path | None, seed: int, device: str, as_json: bool,
              sigma: float, clip: float, delta: float, dynamic: str, decay: str,
              target_eps: float | None, target_acc: float | None, per_layer: bool,
              steps: int | None, accountant: str, fix_batchnorm: bool,
              noise_seed: int | None = None) -> None:
    from bastion.cli.common import table
    from bastion.privacy.statement import TABLE_COLUMNS, dp_statement, figure_rows
    from bastion.training.dp import DPConfig
    from bastion.training.pipeline import train_dp_and_save

    # DP-SGD needs larger batches and SGD; the plain-training defaults (32, Adam 1e-3) are
    # replaced unless the user changed them.
    cfg = DPConfig(sigma=sigma, clip=clip, delta=delta, variant=dynamic, decay=decay,
                   target_epsilon=target_eps, target_accuracy=target_acc, per_layer=per_layer,
                   batch_size=256 if batch_size == 32 else batch_size, epochs=epochs, steps=steps,
                   lr=0.05 if (lr == 1e-3 and optimizer == "adam") else lr,
                   optimizer="sgd" if optimizer == "adam" and lr == 1e-3 else optimizer,
                   accountant=accountant, fix_batchnorm=fix_batchnorm, seed=seed,
                   noise_seed=noise_seed)
    cfg.validate()
    if noise_seed is not None:
        console.print("[bold red]warning:[/] --noise-seed makes the DP noise reproducible: this run "
                      "is NOT private (anyone who knows the seed can remove the noise)",
                      highlight=False)
    with warnings.catch_warnings():   # the seeded-noise warning was printed above, once
        warnings.filterwarnings("ignore", message="DP noise seeded")
        report = train_dp_and_save(model, data, out, dp=cfg, arch_args=parse_kv(arg), root=root,
                                   device=device, on_eval=lambda r: console.print(
                                       f"step {r['step']}: epsilon ({accountant}) {r['epsilon']:.3f}"
                                       f"  test {r.get('test_accuracy', float('nan')):.4f}",
                                       highlight=False))
    rec = report["privacy"]
    console.print(table(f"privacy spent: {report['steps']} steps, q={rec['sample_rate']:.4g}, "
                        f"delta={delta:g} ({report['stop_reason']})", TABLE_COLUMNS, figure_rows(rec)))
    for line in dp_statement(rec):
        console.print(line, highlight=False, markup=False)
    console.print(f"[green]saved[/] {out}  test accuracy {report['test_accuracy']:.4f}", highlight=False)
    emit(report, as_json)


TRAINING_DEFENSES = ("pgd-at", "fast-at", "trades", "distillation", "gaussian-aug", "ibp", "pixeldp")


def build_training_defense(name: str, eps: float | None, params: dict[str, Any]) -> Any:
    """The defense config (`PGDTraining`, `FastTraining`, `TRADES`, `DistillationConfig`,
    `GaussianAugmentation`, `IBPTraining` or `PixelDPConfig`, with their papers' defaults)
    from --defense, --eps and --defense-arg, validated."""
    from dataclasses import fields

    from bastion.core import unknown_name
    from bastion.defenses.certify.bounds import IBPTraining
    from bastion.defenses.certify.pixeldp import PixelDPConfig
    from bastion.defenses.certify.smoothing import GaussianAugmentation
    from bastion.params import build
    from bastion.training.adversarial import DEFENSES
    from bastion.training.distillation import DistillationConfig

    key = str(name).lower()
    classes: dict[str, type] = {**DEFENSES, "distillation": DistillationConfig,
                                "gaussian-aug": GaussianAugmentation, "ibp": IBPTraining, "pixeldp": PixelDPConfig}
    if key not in classes:
        raise unknown_name("training defense", str(name), TRAINING_DEFENSES)
    cls = classes[key]
    valid = [f.name for f in fields(cls)]
    if eps is not None:
        if "eps" not in valid:
            raise ConfigError(f"{key} has no eps budget; drop --eps (its parameters: {', '.join(valid)})")
        check_float(eps, "--eps", low=0.0, high=1.0)
        params = {**params, "eps": eps}
    cfg = build(cls, params, f"training defense {key!r}")
    for f in fields(cls):
        v, d = getattr(cfg, f.name), f.default
        want = (bool,) if isinstance(d, bool) else (int,) if isinstance(d, int) else \
            (int, float) if isinstance(d, float) else None
        if want and (not isinstance(v, want) or (bool not in want and isinstance(v, bool))):
            raise ConfigError(f"{key}: {f.name} must be {type(d).__name__}, got {v!r}")
    cfg.validate()
    return cfg


def train_defended_and_save(arch: str, data: str, out: Path, defense: Any, *, epochs: int, batch_size: int,
                            lr: float, optimizer: str, patience: int | None, arch_args: dict[str, Any],
                            root: Path | None, seed: int, device: str) -> dict[str, Any]:
    """Adversarial training (`adversarial_fit`), defensive distillation
    (`defensive_distillation`), Gaussian augmentation, IBP or PixelDP training of a fresh zoo
    model; the checkpoint records the defense and its parameters in its `defense` metadata
    (a PixelDP checkpoint holds the network's weights; `bastion certify` rebuilds the noise
    layer from the record)."""
    import torch

    from bastion.core import resolve_device
    from bastion.data import load
    from bastion.defenses.certify.bounds import IBPTraining, ibp_fit
    from bastion.defenses.certify.pixeldp import PixelDPClassifier, PixelDPConfig, pixeldp_fit
    from bastion.defenses.certify.smoothing import GaussianAugmentation, gaussian_augmentation_fit
    from bastion.models import build_classifier, save_classifier
    from bastion.training import TrainConfig
    from bastion.training.adversarial import adversarial_fit
    from bastion.training.distillation import DistillationConfig, defensive_distillation
    from bastion.training.pipeline import check_finite_weights

    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer, seed=seed,
                      patience=patience)
    cfg.validate()
    dev = resolve_device(device)
    train, test = load(data, "train", root=root), load(data, "test", root=root)
    torch.manual_seed(seed)
    clf = build_classifier(arch, train.input_spec(), train.num_classes, arch_args, device=dev)

    def on_epoch(r: dict[str, Any]) -> None:
        console.print(f"epoch {r['epoch']}: loss {r['loss']:.4f}  train {r['train_accuracy']:.4f}"
                      f"  test {r.get('test_accuracy', float('nan')):.4f}", highlight=False)

    if isinstance(defense, DistillationConfig):
        teacher = build_classifier(arch, train.input_spec(), train.num_classes, arch_args, device=dev,
                                   name=f"{arch}-teacher")
        res = defensive_distillation(teacher, clf, train, test, defense, cfg, on_epoch=on_epoch)
        extra = {"teacher_test_accuracy": res.teacher_test_accuracy}
    elif isinstance(defense, (GaussianAugmentation, IBPTraining, PixelDPConfig)):
        extra = {}
        if isinstance(defense, GaussianAugmentation):
            res = gaussian_augmentation_fit(clf, train, test, defense, cfg, on_epoch=on_epoch)
        elif isinstance(defense, IBPTraining):
            res = ibp_fit(clf, train, test, defense, cfg, on_epoch=on_epoch)
        else:
            pdp = PixelDPClassifier(clf, defense)
            res = pixeldp_fit(pdp, train, test, cfg, on_epoch=on_epoch)
            clf.meta["defense"] = res.defense
    else:
        res = adversarial_fit(clf, train, test, defense, cfg, on_epoch=on_epoch)
        extra = {}
    check_finite_weights(clf)
    save_classifier(out, clf, dataset=data, seed=seed, class_names=train.class_names, **res.metadata(), **extra)
    return {"checkpoint": str(out), "model": arch, "data": data, "defense": res.defense,
            "test_accuracy": res.test_accuracy, "train_accuracy": res.train_accuracy,
            "epochs_run": len(res.history), "history": res.history, "wall_time_s": res.wall_time,
            "seed": seed, "device": str(dev), **extra}
