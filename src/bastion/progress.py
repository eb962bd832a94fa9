"""Progress reporting for all long work: a rich bar with the time left on a terminal, one
plain line per step when stderr is a log or a pipe, nothing when disabled.

Library code calls `task(...)` (a context manager) or `track(...)`; neither imports rich
until a bar is actually shown, and both cost nothing when progress is off. Everything
goes to stderr, so `--json` output on stdout stays clean.

Whether progress shows:
- `show=True/False` passed by the caller decides;
- else the process-wide setting from `configure()` (the CLI sets it: on unless
  `--quiet`): on a terminal a bar, otherwise plain lines such as
  `[3/12] audit: evasion pgd eps=0.1: 0.8 s, about 9 s left`;
- else (library use) a bar on an interactive stderr only, not in CI;
- `BASTION_QUIET` in the environment turns everything off.

Tasks nest: a task started inside another (shadow models inside an audit step) shares the
outer bar display and disappears when it ends.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")

OFF, BAR, LINES = "off", "bar", "lines"
# plain-line mode: a task of at most this many steps (shadow models, leakage batches) prints
# every step; a longer one (the minibatches of a training run) prints at most one line per
# LINE_INTERVAL_S
EVERY_STEP_MAX = 20
LINE_INTERVAL_S = 10.0

_setting: bool | None = None
_live: Any = None      # the rich Progress shared by nested tasks
_depth = 0


def configure(enabled: bool | None) -> None:
    """Set the process-wide default: True = always report (bar or plain lines), False =
    never, None = back to the library default (a bar on an interactive terminal only)."""
    global _setting
    _setting = enabled


def _tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def mode(flag: bool | None = None) -> str:
    """'bar', 'lines' or 'off' for a task asked to show `flag` (None = default)."""
    if os.environ.get("BASTION_QUIET"):
        return OFF
    want = flag if flag is not None else _setting
    if want is None:
        return BAR if _tty() and not os.environ.get("CI") else OFF
    if not want:
        return OFF
    return BAR if _tty() else LINES


def enabled(flag: bool | None = None) -> bool:
    """Whether a task asked to show `flag` reports anything."""
    return mode(flag) != OFF


def duration(seconds: float) -> str:
    """'0.8 s', '42 s', '3 min 5 s', '1 h 12 min'."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {(s % 3600) // 60} min"


class Task:
    """A running task: `advance(n, info=...)` after each unit of work. `cached=True`
    marks work that was reused, not computed: it counts towards the total but not
    towards the time-left estimate."""

    def __init__(self, description: str, total: float | None, kind: str, prog: Any = None,
                 tid: Any = None, stream: Any = None, interval: float | None = None) -> None:
        self.description, self.total, self.kind = description, total, kind
        self._prog, self._tid, self._stream = prog, tid, stream
        self.done = 0.0
        self._computed = 0.0         # units that took real time (not cached)
        self._busy = 0.0             # seconds those units took
        self.start = self._last = self._last_line = time.perf_counter()
        if interval is None:
            interval = 0.0 if total is not None and total <= EVERY_STEP_MAX else LINE_INTERVAL_S
        self.interval = interval

    def remaining(self) -> float | None:
        """Seconds left at the pace of the computed units so far (None: unknown)."""
        if self.total is None or self._computed <= 0:
            return None
        return max(self.total - self.done, 0.0) * self._busy / self._computed

    def advance(self, n: float = 1, info: str | None = None, cached: bool = False) -> None:
        now = time.perf_counter()
        took = now - self._last
        self._last = now
        self.done += n
        if not cached:
            self._computed += n
            self._busy += took
        if self.kind == BAR:
            kw = {"info": info} if info is not None else {}
            self._prog.update(self._tid, advance=n, **kw)
        elif self.kind == LINES:
            last = self.total is not None and self.done >= self.total
            if last or now - self._last_line >= self.interval:
                self._line(info, took, cached)
                self._last_line = now

    def _line(self, info: str | None, took: float, cached: bool) -> None:
        count = f"[{_num(self.done)}/{_num(self.total)}] " if self.total is not None else ""
        what = self.description + (f": {info}" if info else "")
        if self.interval == 0:
            spent = "reused" if cached else duration(took)
        else:
            spent = f"{duration(self._last - self.start)} elapsed"
        left = self.remaining()
        tail = "" if left is None or (self.total is not None and self.done >= self.total) \
            else f", about {duration(left)} left"
        print(f"{count}{what}: {spent}{tail}", file=self._stream or sys.stderr, flush=True)

    def _finish(self) -> None:
        if self.kind == LINES and self.total is None:
            print(f"{self.description}: done in {duration(time.perf_counter() - self.start)}",
                  file=self._stream or sys.stderr, flush=True)


def _num(v: float | None) -> str:
    return "?" if v is None else f"{v:g}"


@contextmanager
def task(description: str, total: float | None, show: bool | None = None,
         interval: float | None = None) -> Iterator[Task]:
    """`with task("training", total=n) as t: ... t.advance(1, info="loss 0.1")`.
    `total=None` for work of unknown length (shows elapsed time, and in plain mode a line
    when it starts and when it ends). `interval`: plain-mode seconds between lines
    (default: every step for short tasks, else LINE_INTERVAL_S)."""
    global _live, _depth
    kind = mode(show)
    if kind == OFF:
        yield Task(description, total, OFF)
        return
    if kind == LINES:
        t = Task(description, total, LINES, interval=interval)
        if total is None:
            print(f"{description} ...", file=sys.stderr, flush=True)
        yield t
        t._finish()
        return
    outer = _live is None
    if outer:
        _live = _new_progress()
        _live.start()
    _depth += 1
    tid = _live.add_task(description, total=total, info="")
    try:
        yield Task(description, total, BAR, _live, tid)
    finally:
        _depth -= 1
        if outer:
            _live.stop()
            _live = None
        else:
            _live.remove_task(tid)


def _new_progress() -> Any:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.table import Column

    # the counts and times never shrink; the step text gives way on a narrow terminal
    keep = {"table_column": Column(no_wrap=True)}
    return Progress(SpinnerColumn(), TextColumn("[bold]{task.description}", **keep), BarColumn(bar_width=16),
                    MofNCompleteColumn(**keep), TimeElapsedColumn(**keep), TextColumn("left", **keep),
                    TimeRemainingColumn(**keep),
                    TextColumn("{task.fields[info]}",
                               table_column=Column(no_wrap=True, overflow="ellipsis", ratio=1)),
                    console=Console(stderr=True), transient=False)


def track(it: Iterable[T], description: str, total: float | None = None,
          show: bool | None = None) -> Iterator[T]:
    """Iterate `it`, advancing a task by one per item."""
    if total is None and hasattr(it, "__len__"):
        total = len(it)  # type: ignore[arg-type]
    with task(description, total, show) as t:
        for item in it:
            yield item
            t.advance()
