"""`bastion pool build --config pool.yaml`: train and cache a pool of diverse base models
for diversity ensembles and XEnsemble, with a progress bar; an interrupted build resumes
where it stopped (see bastion.defenses.ensemble.pool for the config)."""

from __future__ import annotations

from pathlib import Path

import typer

from bastion.cli.app import app
from bastion.cli.common import (
    DEVICE_OPTION,
    JSON_OPTION,
    QUIET_OPTION,
    THREADS_OPTION,
    WIDE_OPTION,
    check_common,
    check_input_path,
    console,
    emit,
    setup,
    table,
)

pool_app = typer.Typer(help="Model pools for diversity ensembles (XEnsemble).", no_args_is_help=True)
app.add_typer(pool_app, name="pool")


@pool_app.command("build")
def build_cmd(
    config: Path = typer.Option(..., "--config", "-c", help="Pool config (YAML): data, out, members, train."),
    out: Path = typer.Option(None, "--out", "-o", help="Pool folder (overrides the config's 'out')."),
    device: str = DEVICE_OPTION,
    as_json: bool = JSON_OPTION,
    threads: int = THREADS_OPTION,
    quiet: bool = QUIET_OPTION,
    wide: bool = WIDE_OPTION,
) -> None:
    """Train every pool member not trained yet and write the pool manifest (pool.json)."""
    from dataclasses import replace

    from bastion.defenses.ensemble.pool import (
        PoolConfig,
        build_pool,
        check_pool_config,
        read_manifest,
    )
    from bastion.safe_yaml import load_yaml_file

    check_input_path(config, "--config")
    check_common(device=device)
    cfg = PoolConfig.from_dict(load_yaml_file(config, "pool config"))
    if out is not None:
        cfg = replace(cfg, out=str(out))
    if device != "auto":
        cfg = replace(cfg, device=device)
    check_pool_config(cfg)
    setup(quiet, wide, threads)
    if threads:
        import torch

        torch.set_num_threads(threads)
    manifest = build_pool(cfg, progress=not quiet)
    rec = read_manifest(manifest)
    rows = [[m["name"], m["arch"], m["epochs"], m["test_accuracy"]] for m in rec["members"]]
    console.print(table(f"pool {cfg.out} ({cfg.data})", ["member", "arch", "epochs", "test accuracy"], rows))
    console.print(f"[green]manifest[/] {manifest}", highlight=False)
    emit({"manifest": str(manifest), **rec}, as_json)
