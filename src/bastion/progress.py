"""One progress-bar helper for all long work (rich), silent when disabled or not a TTY."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")


def enabled(flag: bool | None = None) -> bool:
    """Bars show when `flag` is True, or by default on an interactive stderr (not in CI,
    not when BASTION_QUIET is set)."""
    if flag is not None:
        return flag
    return sys.stderr.isatty() and not os.environ.get("CI") and not os.environ.get("BASTION_QUIET")


@contextmanager
def task(description: str, total: float | None, show: bool | None = None) -> Iterator[_Task]:
    """`with task("training", total=n) as t: ... t.advance(1, info="loss 0.1")`."""
    if not enabled(show):
        yield _Task(None, None)
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    prog = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                    transient=False, console=None)
    with prog:
        tid = prog.add_task(description, total=total, info="")
        yield _Task(prog, tid)


class _Task:
    def __init__(self, prog: object, tid: object) -> None:
        self._prog, self._tid = prog, tid

    def advance(self, n: float = 1, info: str | None = None) -> None:
        if self._prog is not None:
            kw = {"info": info} if info is not None else {}
            self._prog.update(self._tid, advance=n, **kw)  # type: ignore[attr-defined]


def track(it: Iterable[T], description: str, total: float | None = None,
          show: bool | None = None) -> Iterator[T]:
    with task(description, total, show) as t:
        for item in it:
            yield item
            t.advance()
