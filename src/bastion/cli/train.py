"""`bastion train`: train a zoo model on a data set and save a checkpoint."""

from __future__ import annotations

from pathlib import Path

import typer

from bastion.cli.app import app
from bastion.cli.common import DEVICE_OPTION, JSON_OPTION, ROOT_OPTION, SEED_OPTION, console, emit, parse_kv


@app.command("train")
def train_cmd(
    model: str = typer.Option("cnn7", "--model", "-m", help="Zoo architecture (see `bastion models`)."),
    data: str = typer.Option("mnist-5k", "--data", "-d", help="Data set (see `bastion datasets`)."),
    out: Path = typer.Option(..., "--out", "-o", help="Checkpoint path (.st, safetensors)."),
    epochs: int = typer.Option(5, "--epochs"),
    batch_size: int = typer.Option(32, "--batch-size"),
    lr: float = typer.Option(1e-3, "--lr"),
    optimizer: str = typer.Option("adam", "--optimizer"),
    patience: int = typer.Option(None, "--patience", help="Early stop after N epochs without gain."),
    arg: list[str] = typer.Option(None, "--arg", help="Model argument key=value (repeatable)."),
    root: Path = ROOT_OPTION,
    seed: int = SEED_OPTION,
    device: str = DEVICE_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Train a model and write a safetensors checkpoint with its metadata."""
    from bastion.training.pipeline import train_and_save

    report = train_and_save(model, data, out, epochs=epochs, batch_size=batch_size, lr=lr,
                            optimizer=optimizer, patience=patience, arch_args=parse_kv(arg),
                            root=root, seed=seed, device=device,
                            on_epoch=lambda r: console.print(
                                f"epoch {r['epoch']}: loss {r['loss']:.4f}  train {r['train_accuracy']:.4f}"
                                f"  test {r.get('test_accuracy', float('nan')):.4f}", highlight=False))
    console.print(f"[green]saved[/] {out}  test accuracy {report['test_accuracy']:.4f}", highlight=False)
    emit(report, as_json)
