"""`bastion models`, `bastion datasets`, `bastion info CKPT`: what is available."""

from __future__ import annotations

from pathlib import Path

import typer

from bastion.cli.app import app
from bastion.cli.common import JSON_OPTION, WIDE_OPTION, console, emit, setup, table
from bastion.cli.model_options import (
    BOUNDS_OPTION,
    INPUT_SHAPE_OPTION,
    MEAN_OPTION,
    MODEL_ARG_OPTION,
    NUM_CLASSES_OPTION,
    STD_OPTION,
    WEIGHTS_OPTION,
    load_model_from_options,
)


@app.command("models")
def models_cmd(as_json: bool = JSON_OPTION, wide: bool = WIDE_OPTION) -> None:
    """List the model zoo."""
    setup(wide=wide)
    from bastion.catalog import MODELS

    rows = [{"name": name, "arguments": dict(args)} for name, args in MODELS.items()]
    console.print(table("Bastion model zoo", ["name", "arguments"],
                        [[r["name"], ", ".join(f"{k}={v}" for k, v in r["arguments"].items())] for r in rows]))
    emit(rows, as_json)


@app.command("datasets")
def datasets_cmd(as_json: bool = JSON_OPTION, wide: bool = WIDE_OPTION) -> None:
    """List the data sets (embedded ones need no files)."""
    setup(wide=wide)
    from bastion.catalog import DATASETS

    rows = [{"name": n, "embedded": embedded} for n, embedded in DATASETS.items()]
    console.print(table("Bastion data sets", ["name", "embedded"],
                        [[r["name"], "yes" if r["embedded"] else "needs --root"] for r in rows]))
    emit(rows, as_json)


@app.command("info")
def info_cmd(checkpoint: Path = typer.Argument(..., help="A .st checkpoint, a .pt2 program or an entry "
                                                "point my_pkg.models:build (with the options below)."),
             weights: Path = WEIGHTS_OPTION, model_arg: list[str] = MODEL_ARG_OPTION,
             input_shape: str = INPUT_SHAPE_OPTION, num_classes: int = NUM_CLASSES_OPTION,
             mean: str = MEAN_OPTION, std: str = STD_OPTION, bounds: str = BOUNDS_OPTION,
             as_json: bool = JSON_OPTION) -> None:
    """Show a checkpoint's metadata (architecture, data, accuracy, versions), or what a
    user model source loads as (input spec, classes, parameters)."""
    from bastion.cli.common import check_input_path
    from bastion.models import read_metadata
    from bastion.models.entrypoint import is_entry_point, refuse_pickle

    check_input_path(checkpoint, "CHECKPOINT")
    own = (is_entry_point(str(checkpoint)) or checkpoint.suffix.lower() == ".pt2"
           or any(v is not None for v in (weights, input_shape, num_classes, mean, std, bounds, model_arg)))
    if own:
        clf = load_model_from_options(checkpoint, weights, input_shape, num_classes, mean, std, bounds,
                                      model_arg, "cpu")
        meta = {**clf.meta, "name": clf.name, "num_classes": clf.num_classes, "input_spec": clf.spec.to_dict(),
                "parameters": sum(p.numel() for p in clf.module.parameters())}
    else:
        refuse_pickle(checkpoint)
        meta = read_metadata(checkpoint)
        if "defended" in meta:  # a defended checkpoint: say what it loads as (checks it rebuilds)
            from bastion.models import load_classifier

            clf = load_classifier(checkpoint, device="cpu")
            meta["loads_as"] = {"class": type(clf).__name__, "name": clf.name}
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
