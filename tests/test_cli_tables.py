"""Tables fit an 80-column terminal: headers wrap, long text wraps, and columns that still
do not fit go to a continuation table; no cell is cut to an ellipsis and every number
shows in full. --wide prints one unwrapped table."""

from __future__ import annotations

import re

import pytest
from rich.console import Console

from bastion.cli.common import HEADERS, fmt, table

EVASION = ["attack", "eps", "robust_accuracy", "success_rate", "mean_l2", "mean_linf", "mean_l0",
           "queries_mean", "time_per_example_s", "mean_conf", "ssim", "psnr"]


def _rows() -> list[list[object]]:
    return [["pgd-linf (most likely)", eps, 0.123456, 0.876543, 1.23456, eps, 487.0, 40.0, 0.0123456,
             0.55, 0.912345, 28.1234] for eps in (0.05, 0.1, 0.15, 0.2, 0.3)]


def _render(renderable: object, width: int) -> str:
    c = Console(width=width, record=True, force_terminal=False)
    c.print(renderable)
    return c.export_text()


@pytest.mark.parametrize("width", [80, 60, 120])
def test_evasion_table_fits_without_truncation(width: int) -> None:
    text = _render(table("evasion: Evasion attacks", EVASION, _rows()), width)
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= width
    for row in _rows():
        for v in row[1:]:
            assert re.search(rf"(?<![\d.]){re.escape(fmt(v))}(?![\d])", text), fmt(v)
    assert text.count("pgd-linf (most likely)") >= 5
    for word in ("robust", "ASR", "L2", "PSNR"):
        assert word in text


def test_narrow_tables_repeat_the_key_columns() -> None:
    text = _render(table("t", EVASION, _rows()), 80)
    assert "(continued)" in text
    assert text.count("0.15") >= 2 * 1 and text.count("pgd-linf (most likely)") == 10


def test_table_that_fits_is_one_plain_table() -> None:
    text = _render(table("t", ["attack", "auc"], [["yeom", 0.61234]]), 80)
    assert "(continued)" not in text and "AUC" in text and "0.612" in text


def test_long_text_cells_wrap_instead_of_being_cut() -> None:
    args = ", ".join(f"arg{i}={i * 1.5}" for i in range(20))
    text = _render(table("zoo", ["name", "arguments"], [["cnn7", args]]), 80)
    assert "…" not in text
    flat = re.sub(r"[\s│┃]+", "", text)
    assert re.sub(r"\s+", "", args) in flat


def test_wide_prints_one_unwrapped_table() -> None:
    text = _render(table("t", EVASION, _rows(), wide=True), 80)
    assert "(continued)" not in text and "…" not in text
    assert "robust acc" in text and "L2 (mean)" in text and "Linf (mean)" in text  # headers on one line


def test_wide_flag_lets_lines_run_past_the_terminal() -> None:
    from bastion.cli import common

    width = common.console.width
    common.setup(wide=True)
    try:
        assert common.WIDE and common.console.width >= 1000
        assert table("t", EVASION, _rows()).wide
    finally:
        common.reset()
    assert common.console.width == width and not common.WIDE


def test_headers_are_human_names_with_units() -> None:
    assert HEADERS["success_rate"] == HEADERS["asr"] == "ASR"
    assert HEADERS["mean_l2"] == "L2 (mean)" and HEADERS["psnr"] == "PSNR (dB)"
    assert HEADERS["time_per_example_s"] == "s/example"


def test_cli_starts_without_torch() -> None:
    """`bastion --help` must be quick: importing the CLI loads neither torch nor numpy."""
    import subprocess
    import sys

    code = ("import sys, bastion.cli.main; from bastion.cli.main import run; run(['--help']); "
            "print(sorted(m for m in ('torch', 'numpy', 'scipy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
    assert "--help" in out.stdout or "Commands" in out.stdout


def test_catalog_matches_the_zoo_and_the_data_registry() -> None:
    """`bastion models` / `datasets` list from a torch-free catalog; it must equal the registries."""
    import inspect

    from bastion.catalog import DATASETS, MODELS
    from bastion.data import EMBEDDED, names
    from bastion.models import zoo

    assert MODELS == {n: {p.name: repr(p.default) for p in inspect.signature(zoo.BUILDERS[n]).parameters.values()
                          if p.name not in ("in_shape", "num_classes")} for n in zoo.names()}
    assert DATASETS == {n: n in EMBEDDED for n in names()}


def test_list_commands_start_without_torch() -> None:
    import subprocess
    import sys

    code = ("import sys; from bastion.cli.main import run; rc = run(['models', '--json']) + run(['datasets']); "
            "print(rc, sorted(m for m in ('torch', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    assert out.strip().endswith("0 []"), out
