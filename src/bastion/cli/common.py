"""Shared CLI plumbing: console on stderr, JSON on stdout, option parsing helpers."""

from __future__ import annotations

from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from bastion.core import ConfigError
from bastion.fileio import strict_json
from bastion.safe_yaml import load_yaml_text

# Human-readable output goes to stderr so that `--json` leaves stdout clean for scripts.
# Logs and CI pipes are not terminals; rich would squeeze tables into 80 columns there.
console = Console(stderr=True)
if not console.is_terminal:
    console = Console(stderr=True, width=160)

JSON_OPTION = typer.Option(False, "--json", help="Print the result as JSON on stdout.")
SEED_OPTION = typer.Option(0, "--seed", help="Random seed.")
DEVICE_OPTION = typer.Option("auto", "--device", help="auto (CUDA when present), cpu or cuda.")
ROOT_OPTION = typer.Option(None, "--root", help="Folder (or .npz file) of an on-disk data set.")


def to_json(obj: Any) -> str:
    """Strict JSON (NaN/inf become null) with a fallback to str for odd types."""
    return strict_json(obj)


def emit(obj: Any, as_json: bool) -> None:
    if as_json:
        typer.echo(to_json(obj))


HEADERS = {"robust_accuracy": "robust acc", "success_rate": "ASR", "mean_l2": "L2", "mean_linf": "Linf",
           "mean_l0": "L0", "queries_mean": "queries", "time_per_example_s": "s/example",
           "clean_accuracy": "clean acc", "test_accuracy": "test acc", "mean_conf": "MeanConf"}
LEFT = ("attack", "name", "kind", "norms", "arguments", "defense", "init")


def table(title: str, columns: list[str], rows: list[list[Any]]) -> Table:
    t = Table(title=title, header_style="bold")
    for c in columns:
        t.add_column(HEADERS.get(c, c), justify="left" if c in LEFT else "right", no_wrap=True)
    for r in rows:
        t.add_row(*[fmt(v) for v in r])
    return t


def fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def parse_kv(items: list[str] | None) -> dict[str, Any]:
    """Parse repeated `--arg key=value` options; values are read as YAML scalars."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"expected key=value, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip().replace("-", "_")] = load_yaml_text(v, f"--arg {k.strip()}")
    return out


def parse_floats(text: str, name: str) -> list[float]:
    try:
        vals = [float(v) for v in text.split(",") if v.strip()]
    except ValueError as e:
        raise ConfigError(f"{name}: expected comma-separated numbers, got {text!r}") from e
    if not vals:
        raise ConfigError(f"{name}: at least one value needed")
    return vals
