"""`bastion audit`: run the configured attacks against a checkpoint, print a table,
write results.json and a self-contained report.html (resumable)."""

from __future__ import annotations

from pathlib import Path

import typer

from bastion.cli.app import app
from bastion.cli.common import (
    DEVICE_OPTION,
    JSON_OPTION,
    MAX_EXAMPLES,
    QUIET_OPTION,
    ROOT_OPTION,
    THREADS_OPTION,
    WIDE_OPTION,
    check_common,
    check_input_path,
    check_int,
    check_out_dir,
    console,
    emit,
    setup,
    table,
)


@app.command("audit")
def audit_cmd(
    model: Path = typer.Option(..., "--model", "-m", help="Checkpoint (.st) to audit."),
    data: str = typer.Option(None, "--data", "-d", help="Data set (default: the checkpoint's)."),
    config: Path = typer.Option(None, "--config", "-c", help="Audit config YAML (default: FGSM + PGD "
                                "at eps 0.05..0.3)."),
    out: str = typer.Option(..., "--out", "-o", help="Run folder, e.g. runs/NAME (re-use it to resume)."),
    n: int = typer.Option(None, "--n", help="Examples to evaluate (overrides the config)."),
    seed: int = typer.Option(None, "--seed", help="Seed (overrides the config)."),
    root: Path = ROOT_OPTION,
    device: str = DEVICE_OPTION,
    wait: bool = typer.Option(False, "--wait", help="If another audit is writing into --out, wait for "
                              "it to finish instead of refusing."),
    as_json: bool = JSON_OPTION,
    threads: int = THREADS_OPTION,
    quiet: bool = QUIET_OPTION,
    wide: bool = WIDE_OPTION,
) -> None:
    """Audit a model: attacks over budgets, a table here, results.json + report.html in --out."""
    from bastion.audit import load_config, run_audit
    from bastion.core import ConfigError

    if not out.strip():
        raise ConfigError("--out is empty; name a run folder, e.g. --out runs/NAME")
    out_dir = Path(out)
    check_int(n, "--n", 1, MAX_EXAMPLES)
    check_common(seed, device, root)
    check_input_path(model, "--model")
    check_input_path(config, "--config")
    check_out_dir(out_dir, "--out")
    setup(quiet, wide, threads)
    cfg = load_config(config)
    if n is not None:
        cfg.data.n = n
    if seed is not None:
        cfg.seed = seed
    run = run_audit(model, cfg, out_dir, data=data, device=device, root=root, wait=wait, threads=threads)
    res = run.results
    console.print(f"threads: {res['threads']} ({res['threads_policy']})", style="dim", highlight=False)
    console.print(f"[bold]{res['model']['name']}[/] on {res['data']['name']} ({res['data']['n']} examples): "
                  f"clean accuracy {res['clean_accuracy']:.4f}", highlight=False)
    for sec in run.sections:
        for t in sec.tables:
            console.print(table(f"{sec.name}: {t.title}", t.columns, t.rows))
    console.print(f"steps: {run.new_steps} run, {run.cached_steps} reused from {out_dir}", highlight=False)
    console.print(f"[green]report[/] {out_dir / 'report.html'}   [green]results[/] {out_dir / 'results.json'}",
                  highlight=False)
    emit(res, as_json)
