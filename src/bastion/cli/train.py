"""`bastion train`: train a zoo model on a data set and save a checkpoint."""

from __future__ import annotations

import warnings
from pathlib import Path

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
    sigma: float = typer.Option(6.0, "--sigma", help="DP: noise multiplier (start value if dynamic)."),
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
    setup(quiet, wide, threads)
    thr = train_threads(model, data, root, parse_kv(arg), threads, batch_size, device)
    if dp:
        _train_dp(model, data, out, epochs, batch_size, lr, optimizer, arg, root, seed, device, as_json,
                  sigma, clip, delta, dynamic, decay, target_eps, target_acc, per_layer, dp_steps,
                  accountant, fix_batchnorm, noise_seed)
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
