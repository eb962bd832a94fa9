"""Shared CLI plumbing: console on stderr, JSON on stdout, option parsing helpers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from bastion.errors import ConfigError
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
THREADS_OPTION = typer.Option(None, "--threads", help="Intra-op CPU threads (default: measured for "
                              "the model, the faster of 1 and all cores; see docs/performance.md).")
WIDE = False  # set by `--wide` (see `setup`)
QUIET_OPTION = typer.Option(False, "--quiet", "-q", help="No progress lines or bars on stderr.")
WIDE_OPTION = typer.Option(False, "--wide", help="Print tables at full width, unwrapped.")


_state: dict[str, Any] = {}


def setup(quiet: bool = False, wide: bool = False, threads: int | None = None) -> None:
    """Apply a command's shared run options before its work: progress on stderr (a bar on
    a terminal, plain lines in a log) unless --quiet; --wide tables; --threads checked."""
    global WIDE
    from bastion import progress
    from bastion.threads import check_requested

    check_requested(threads)
    _state.setdefault("width", console.width)
    progress.configure(not quiet)
    _state["quiet"] = quiet
    WIDE = wide
    if wide:
        console.width = max(console.width, 1000)   # the terminal wraps; nothing is cut


def use_threads(model: Any, x: Any, requested: int | None, batch_size: int = 32) -> dict[str, Any]:
    """Set the intra-op thread count for work on `model` (`--threads`, else measured; see
    bastion.threads), say which on stderr, and return it for the JSON report."""
    from bastion.threads import configure

    return _announce(lambda: configure(model, x, requested, batch_size))


def train_threads(arch: str, data: str, root: Any, arch_args: dict[str, Any] | None, requested: int | None,
                  batch_size: int, device: str) -> dict[str, Any]:
    """`use_threads` for a model about to be trained (timed on a fresh zoo model)."""
    from bastion.threads import configure_for_arch

    return _announce(lambda: configure_for_arch(arch, data, root, arch_args, requested, batch_size, device))


def _announce(decide: Any) -> dict[str, Any]:
    import torch

    _state.setdefault("torch_threads", torch.get_num_threads())
    choice = decide()
    if not _state.get("quiet"):
        console.print(choice.describe(), style="dim", highlight=False)
    return choice.to_dict()


def reset() -> None:
    """Undo `setup` and `use_threads` (the CLI runs in-process in tests)."""
    global WIDE
    from bastion import progress

    progress.configure(None)
    WIDE = False
    if "width" in _state:
        console.width = _state["width"]
    if "torch_threads" in _state:
        import torch

        torch.set_num_threads(_state["torch_threads"])
    _state.clear()


def to_json(obj: Any) -> str:
    """Strict JSON (NaN/inf become null) with a fallback to str for odd types."""
    return strict_json(obj)


def emit(obj: Any, as_json: bool) -> None:
    if as_json:
        typer.echo(to_json(obj))


# Column keys -> the names tables show, with units where a number has one. Keep these in
# step with the report (docs/audit.md lists the same names).
HEADERS = {"robust_accuracy": "robust acc", "success_rate": "ASR", "asr": "ASR", "mr": "MR", "clean_error": "clean error",
           "mean_l2": "L2 (mean)", "mean_linf": "Linf (mean)", "mean_l0": "L0 (mean)",
           "queries_mean": "queries (mean)", "time_per_example_s": "s/example",
           "clean_accuracy": "clean acc", "test_accuracy": "test acc", "mean_conf": "mean conf",
           "ssim": "SSIM", "psnr": "PSNR (dB)", "wall_time_s": "time (s)", "time_s": "time (s)",
           "auc": "AUC", "balanced_accuracy": "bal. acc", "tpr@0.1%fpr": "TPR@0.1%FPR",
           "tpr@1%fpr": "TPR@1%FPR", "iterations_to_success": "iters to success", "mse": "MSE",
           "nmse": "NMSE", "label_accuracy": "label acc", "stop_reason": "stop reason",
           "seconds_per_attack": "s/attack", "epsilon": "epsilon"}
LEFT = ("attack", "name", "kind", "norms", "arguments", "defense", "init", "metric", "accountant",
        "note", "stop_reason")
# a text column wider than this may wrap its cells when the table does not fit
WRAP_TEXT_AT = 24


def table(title: str, columns: list[str], rows: list[list[Any]], wide: bool | None = None) -> Any:
    """A table that fits the console it is printed on: headers wrap at spaces, long text
    cells wrap, and when the columns still do not fit they are split into several tables
    that repeat the leading key column(s). Numbers are never cut. `wide` (default: the
    `--wide` flag of the running command) prints one unwrapped table whatever the width."""
    return FitTable(title, [HEADERS.get(c, c) for c in columns], [c in LEFT for c in columns],
                    [[fmt(v) for v in r] for r in rows], WIDE if wide is None else wide)


class FitTable:
    """A rich renderable choosing its layout at print time from the console width."""

    def __init__(self, title: str, headers: list[str], left: list[bool], cells: list[list[str]],
                 wide: bool = False) -> None:
        self.title, self.headers, self.left, self.cells, self.wide = title, headers, left, cells, wide

    # widths -----------------------------------------------------------------------------
    def _cell_width(self, i: int) -> int:
        return max((_text_width(r[i]) for r in self.cells if i < len(r)), default=0)

    def _natural(self, i: int) -> int:
        return max(self._cell_width(i), _text_width(self.headers[i]))

    def _compact(self, i: int) -> int:
        """Width with the header wrapped at spaces and a long text column wrapped."""
        head = max((len(w) for w in self.headers[i].split()), default=0)
        cell = self._cell_width(i)
        if self.left[i] and cell > WRAP_TEXT_AT:
            longest_word = max((len(w) for r in self.cells if i < len(r) for w in r[i].split()), default=0)
            cell = max(WRAP_TEXT_AT, longest_word)
        return max(head, cell)

    @staticmethod
    def _span(widths: list[int]) -> int:
        return sum(widths) + 3 * len(widths) + 1   # padding 1+1 and a border per column, one edge

    def _build(self, idx: list[int], title: str | None, widths: list[int] | None, wrap: bool) -> Any:
        from rich.table import Table

        t = Table(title=title, header_style="bold")
        for j, i in enumerate(idx):
            text_wraps = wrap and self.left[i] and self._cell_width(i) > WRAP_TEXT_AT
            head = "\n".join(_wrap_words(self.headers[i], widths[j])) if (wrap and widths) else self.headers[i]
            t.add_column(head, justify="left" if self.left[i] else "right",
                         no_wrap=not text_wraps, overflow="fold",
                         min_width=None if text_wraps or widths is None else widths[j],
                         max_width=widths[j] if (text_wraps and widths) else None)
        for r in self.cells:
            t.add_row(*[r[i] if i < len(r) else "" for i in idx])
        return t

    def layouts(self, width: int) -> list[Any]:
        """The tables to print for a console `width` columns wide."""
        n = len(self.headers)
        idx = list(range(n))
        natural = [self._natural(i) for i in idx]
        if self.wide or self._span(natural) <= width:
            return [self._build(idx, self.title, None, False)]
        compact = [self._compact(i) for i in idx]
        if self._span(compact) <= width:
            return [self._build(idx, self.title, compact, True)]
        # split: the key columns (leading text columns, and an eps column after them) repeat
        keys = [i for i in idx if self.left[i] and all(self.left[j] for j in range(i))][:2]
        if len(keys) < n and self.headers[len(keys)] in ("eps",):
            keys.append(len(keys))
        if not keys:
            keys = [0]
        rest = [i for i in idx if i not in keys]
        base = [compact[i] for i in keys]
        groups: list[list[int]] = []
        cur: list[int] = []
        for i in rest:
            if cur and self._span(base + [compact[j] for j in cur] + [compact[i]]) > width:
                groups.append(cur)
                cur = []
            cur.append(i)
        if cur:
            groups.append(cur)
        out = []
        for g, grp in enumerate(groups):
            cols = keys + grp
            title = self.title if g == 0 else f"{self.title} (continued)"
            out.append(self._build(cols, title, [compact[i] for i in cols], True))
        return out

    def __rich_console__(self, console: Any, options: Any) -> Any:
        width = options.max_width
        tables = self.layouts(width)
        if self.wide:
            natural = self._span([self._natural(i) for i in range(len(self.headers))])
            options = options.update(width=max(natural, width), max_width=max(natural, width))
        for t in tables:
            yield from console.render(t, options)

    def __rich_measure__(self, console: Any, options: Any) -> Any:
        from rich.measure import Measurement

        span = self._span([self._natural(i) for i in range(len(self.headers))])
        return Measurement(min(span, options.max_width), span)


def _text_width(text: str) -> int:
    return max((len(line) for line in str(text).splitlines()), default=0)


def _wrap_words(text: str, width: int) -> list[str]:
    """`text` split at spaces into lines of at most `width` characters (a longer word
    stays whole on its own line)."""
    lines: list[str] = []
    for word in text.split():
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines or [text]


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
    from bastion.errors import check_number

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
