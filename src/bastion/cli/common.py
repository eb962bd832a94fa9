"""Shared CLI plumbing: console on stderr, JSON on stdout, option parsing helpers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from bastion.core import ConfigError
from bastion.fileio import strict_json
from bastion.paths import check_input_path as check_input_path
from bastion.paths import check_out_dir as check_out_dir
from bastion.paths import check_out_file as check_out_file
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


# --------------------------------------------------------------------------- argument checks
# Documented upper bounds (README, "Limits"): beyond them a run is a typo, not an experiment.
MAX_EPOCHS = 10_000
MAX_BATCH_SIZE = 65_536
MAX_EXAMPLES = 1_000_000
MAX_STEPS = 10_000_000


def check_int(value: int | None, flag: str, low: int = 1, high: int | None = None) -> None:
    """`flag`'s integer lies in [low, high] (None passes: the option was not given)."""
    if value is None:
        return
    if value < low or (high is not None and value > high):
        rng = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ConfigError(f"{flag} must be {rng}, got {value}")


def check_float(value: float | None, flag: str, *, low: float | None = 0.0, positive: bool = False,
                high: float | None = None) -> None:
    """`flag`'s number is finite and in range (None passes: the option was not given)."""
    from bastion.core import check_number

    if value is not None:
        check_number(value, flag, low=low, high=high, low_open=positive)


def check_common(seed: int | None = None, device: str | None = None, root: Path | None = None) -> None:
    """The options most commands share: seed range, device string, --root path."""
    from bastion.core import check_seed, resolve_device

    if seed is not None:
        check_seed(seed, "--seed")
    if device is not None:
        resolve_device(device)
    check_input_path(root, "--root")
