"""`bastion models`, `bastion datasets`, `bastion info CKPT`: what is available."""

from __future__ import annotations

from pathlib import Path

import typer

from bastion.cli.app import app
from bastion.cli.common import JSON_OPTION, WIDE_OPTION, console, emit, setup, table


@app.command("models")
def models_cmd(as_json: bool = JSON_OPTION, wide: bool = WIDE_OPTION) -> None:
    """List the model zoo."""
    setup(wide=wide)
    import inspect

    from bastion.models import zoo

    rows = []
    for name in zoo.names():
        sig = inspect.signature(zoo.BUILDERS[name])
        args = {p.name: p.default for p in sig.parameters.values() if p.name not in ("in_shape", "num_classes")}
        rows.append({"name": name, "arguments": {k: repr(v) for k, v in args.items()}})
    console.print(table("Bastion model zoo", ["name", "arguments"],
                        [[r["name"], ", ".join(f"{k}={v}" for k, v in r["arguments"].items())] for r in rows]))
    emit(rows, as_json)


@app.command("datasets")
def datasets_cmd(as_json: bool = JSON_OPTION, wide: bool = WIDE_OPTION) -> None:
    """List the data sets (embedded ones need no files)."""
    setup(wide=wide)
    from bastion.data import EMBEDDED, names

    rows = [{"name": n, "embedded": n in EMBEDDED} for n in names()]
    console.print(table("Bastion data sets", ["name", "embedded"],
                        [[r["name"], "yes" if r["embedded"] else "needs --root"] for r in rows]))
    emit(rows, as_json)


@app.command("info")
def info_cmd(checkpoint: Path = typer.Argument(..., help="A .st checkpoint."),
             as_json: bool = JSON_OPTION) -> None:
    """Show a checkpoint's metadata (architecture, data, accuracy, versions)."""
    from bastion.cli.common import check_input_path
    from bastion.models import read_metadata

    check_input_path(checkpoint, "CHECKPOINT")
    meta = read_metadata(checkpoint)
    from rich.markup import escape

    rec = meta.get("privacy")
    for k, v in meta.items():
        if k != "privacy" or not isinstance(rec, dict):
            console.print(f"[bold]{escape(str(k))}[/]: {escape(str(v))}", highlight=False)
    if isinstance(rec, dict):
        _print_privacy(rec)
    emit(meta, as_json)


def _print_privacy(rec: dict) -> None:
    """A DP checkpoint's privacy: the DP statement and the labelled accountant table."""
    from bastion.privacy.statement import TABLE_COLUMNS, dp_statement, figure_rows, record_summary

    console.print("[bold]privacy[/]:", highlight=False)
    for line in dp_statement(rec):
        console.print("  " + line, highlight=False, markup=False)
    summ = record_summary(rec)
    if summ is not None:
        console.print(table("epsilon per accountant", TABLE_COLUMNS, figure_rows(summ)))
