"""Crash-safe file writes shared by every layer that persists results.

A write goes to a temporary file in the destination folder, is flushed and fsync'd, then
renamed over the destination, and the folder itself is fsync'd so the rename survives a
power loss. Readers therefore see either the old file or the complete new one, never a
truncated one.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def fsync_dir(folder: Path) -> None:
    """fsync a folder so that renames inside it are durable (no-op where unsupported)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is fsync'd and renamed over
    `path`, on any exception it is removed. For writers that need a file name
    (safetensors' `save_file`, numpy)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: str | Path, data: bytes | str) -> None:
    """Write `data` to `path` atomically and durably (see the module docstring)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data.encode() if isinstance(data, str) else data)


def _finite(o: Any) -> Any:
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {str(k): _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    if isinstance(o, Path):
        return str(o)
    return o


def strict_json(obj: Any, indent: int | None = 2) -> str:
    """JSON that every parser accepts: NaN and infinities become null, odd types str."""
    return json.dumps(_finite(obj), indent=indent, default=str, allow_nan=False)
