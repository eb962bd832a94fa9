"""`bastion compare RUN_A RUN_B`: the change from audit run A to run B, per threat and
budget, with 95% confidence intervals and significance (see bastion.audit.compare)."""

from __future__ import annotations

from pathlib import Path

import typer

from bastion.cli.app import app
from bastion.cli.common import JSON_OPTION, check_input_path, check_out_file, console, emit


@app.command("compare")
def compare_cmd(
    run_a: Path = typer.Argument(..., metavar="RUN_A", help="Run folder A (the baseline), e.g. runs/before."),
    run_b: Path = typer.Argument(..., metavar="RUN_B", help="Run folder B, e.g. runs/after; differences are B - A."),
    out: Path = typer.Option(None, "--out", "-o", help="Also write a self-contained HTML page (.html)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Compare two finished audits: differences B - A with 95% CIs and significance."""
    from rich.table import Table

    from bastion.audit.compare import compare_runs, format_figure, render_html
    from bastion.fileio import atomic_write, os_error

    check_input_path(run_a, "RUN_A")
    check_input_path(run_b, "RUN_B")
    check_out_file(out, "--out", (".html", ".htm"))
    cmp = compare_runs(run_a, run_b)
    t = Table(title=f"B - A  (A = {run_a}, B = {run_b}; "
                    f"{'same examples, paired tests' if cmp.paired else 'different examples'})",
              header_style="bold")
    for c, just in (("threat", "left"), ("metric", "left"), ("A", "right"), ("B", "right"),
                    ("B - A", "right"), ("95% CI", "right"), ("p", "right"), ("change", "left")):
        t.add_column(c, justify=just)  # type: ignore[arg-type]
    style = {"better": "green", "worse": "red"}
    for d in cmp.rows:
        def f(v: float | None, signed: bool = False, d=d) -> str:
            return format_figure(v, d.unit, signed)
        ci = "-" if d.ci is None else f"{f(d.ci[0], True)} .. {f(d.ci[1], True)}"
        p = "-" if d.p_value is None else f"{d.p_value:.3g}"
        colour = style.get(d.change.split(" ")[0], "")
        t.add_row(d.threat, d.metric, f(d.a), f(d.b), f(d.diff, True), ci, p,
                  f"[{colour}]{d.change}[/]" if colour else d.change)
    console.print(t)
    if cmp.only_a or cmp.only_b:
        console.print(f"not compared: {len(cmp.only_a)} figure(s) only in A, {len(cmp.only_b)} only in B",
                      highlight=False)
    if out is not None:
        try:
            atomic_write(out, render_html(cmp))
        except OSError as e:
            raise os_error(out, e) from None
        console.print(f"[green]comparison[/] {out}", highlight=False)
    emit(cmp.to_dict(), as_json)
