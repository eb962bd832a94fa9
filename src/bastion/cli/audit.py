"""`bastion audit`: run the configured attacks against a checkpoint, print a table,
write results.json and a self-contained report.html (resumable)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import typer
from rich.table import Table

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
from bastion.cli.model_options import (
    BOUNDS_OPTION,
    INPUT_SHAPE_OPTION,
    MEAN_OPTION,
    MODEL_ARG_OPTION,
    MODEL_HELP,
    NUM_CLASSES_OPTION,
    STD_OPTION,
    WEIGHTS_OPTION,
    model_source,
)

COLORS = {"pass": "green", "warn": "yellow", "fail": "red", "not measured": "dim"}


def _scorecard_table(res: dict, value: Callable[[dict], str], threshold: Callable[[dict], str]) -> Table:
    """The scorecard as a rich table: one row per threat metric, the verdict coloured."""
    verdict = res["verdict"]
    t = Table(title=f"scorecard: [{COLORS.get(verdict, 'bold')}]{verdict.upper()}[/]", header_style="bold")
    for c, wrap in (("threat", False), ("metric", True), ("value [95% CI]", False), ("threshold", False),
                    ("verdict", False), ("meaning", True)):
        t.add_column(c, no_wrap=not wrap, overflow="fold")
    for r in res["scorecard"]:
        c = COLORS.get(r["verdict"], "")
        t.add_row(r["threat"], r["metric"], value(r), threshold(r), f"[{c}]{r['verdict']}[/]",
                  r["meaning"] + (f" ({r['note']})" if r["note"] else ""))
    return t


@app.command("audit")
def audit_cmd(
    model: Path = typer.Option(..., "--model", "-m", help=MODEL_HELP),
    weights: Path = WEIGHTS_OPTION,
    model_arg: list[str] = MODEL_ARG_OPTION,
    input_shape: str = INPUT_SHAPE_OPTION,
    num_classes: int = NUM_CLASSES_OPTION,
    mean: str = MEAN_OPTION,
    std: str = STD_OPTION,
    bounds: str = BOUNDS_OPTION,
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
    fail_on: str = typer.Option("never", "--fail-on", help="Exit with code 1 when any scorecard verdict "
                                "is at least this bad: fail | warn | never (default)."),
    engine: str = typer.Option("local", "--engine", help="local (this process) | ray (every (section, "
                               "attack, budget) step as a Ray task; needs the scale extra)."),
    address: str = typer.Option(None, "--address", help="With --engine ray: an existing Ray cluster "
                                "(host:port, ray://host:port or auto); default: a local one."),
    as_json: bool = JSON_OPTION,
    threads: int = THREADS_OPTION,
    quiet: bool = QUIET_OPTION,
    wide: bool = WIDE_OPTION,
) -> None:
    """Audit a model: attacks over budgets, a table here, results.json + report.html in --out."""
    from bastion.audit import load_config, run_audit
    from bastion.audit.scorecard import FAIL_ON, failing, format_threshold, format_value
    from bastion.core import ConfigError

    if not out.strip():
        raise ConfigError("--out is empty; name a run folder, e.g. --out runs/NAME")
    out_dir = Path(out)
    if fail_on not in FAIL_ON:
        raise ConfigError(f"--fail-on must be one of {', '.join(FAIL_ON)}, got {fail_on!r}")
    check_int(n, "--n", 1, MAX_EXAMPLES)
    check_common(seed, device, root)
    check_input_path(model, "--model")
    check_input_path(config, "--config")
    check_out_dir(out_dir, "--out")
    if engine != "local" or address is not None:
        from bastion.scale.engine import check_engine

        check_engine(engine, address)
    setup(quiet, wide, threads)
    cfg = load_config(config)
    src = model_source(model, weights, input_shape, num_classes, mean, std, bounds, model_arg)
    if n is not None:
        cfg.data.n = n
    if seed is not None:
        cfg.seed = seed
    run = run_audit(src, cfg, out_dir, data=data, device=device, root=root, wait=wait, threads=threads,
                    engine=engine, address=address)
    res = run.results
    console.print(f"threads: {res['threads']} ({res['threads_policy']})", style="dim", highlight=False)
    console.print(f"[bold]{res['model']['name']}[/] on {res['data']['name']} ({res['data']['n']} examples): "
                  f"clean accuracy {res['clean_accuracy']:.4f}", highlight=False)
    console.print(_scorecard_table(res, format_value, format_threshold))
    for sec in run.sections:
        for t in sec.tables:
            console.print(table(f"{sec.name}: {t.title}", t.columns, t.rows))
    console.print(f"steps: {run.new_steps} run, {run.cached_steps} reused from {out_dir}", highlight=False)
    console.print(f"[green]report[/] {out_dir / 'report.html'}   [green]results[/] {out_dir / 'results.json'}",
                  highlight=False)
    emit(res, as_json)
    bad = failing(res["scorecard"], fail_on)
    if bad:
        console.print(f"[red]--fail-on {fail_on}:[/] " + "; ".join(f"{r['threat']} {r['metric']}: {r['verdict']}"
                                                                   for r in bad), highlight=False)
        raise typer.Exit(1)
