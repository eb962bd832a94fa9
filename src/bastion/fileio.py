"""Crash-safe file writes shared by every layer that persists results.

A write goes to a temporary file in the destination folder, is flushed and fsync'd, then
renamed over the destination, and the folder itself is fsync'd so the rename survives a
power loss. Readers therefore see either the old file or the complete new one, never a
truncated one.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bastion.errors import DataError


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


_FIXES = {
    errno.EACCES: "make it writable or choose another folder",
    errno.EPERM: "make it writable or choose another folder",
    errno.EROFS: "the file system is read-only; choose a folder on a writable one",
    errno.ENOSPC: "the disk is full; free space or choose a folder on another disk",
    errno.EDQUOT: "the disk quota is exhausted; free space or choose another folder",
    errno.ENAMETOOLONG: "the path is longer than the file system allows; choose a shorter one",
    errno.ENOTDIR: "a part of the path is a file, not a folder; choose another path",
    errno.EEXIST: "a file of that name is in the way; remove it or choose another path",
}


def os_error(path: str | Path, err: OSError, what: str = "cannot write") -> DataError:
    """A one-line DataError for an OSError met while writing under `path`, naming the path,
    the cause and the fix."""
    fix = _FIXES.get(err.errno or -1, "check the path and its permissions")
    where = err.filename if err.filename else path
    return DataError(f"{what} {where}: {err.strerror or err}; {fix}")


def write_probe(folder: str | Path, size: int = 65536) -> None:
    """Write `size` bytes to a temporary file in the existing `folder`, fsync and remove
    it: a read-only folder or a full disk raises OSError here rather than after long work."""
    fd, name = tempfile.mkstemp(dir=folder, prefix=".bastion-probe-", suffix=".tmp")
    try:
        os.write(fd, b"\0" * size)
        os.fsync(fd)
    finally:
        os.close(fd)
        Path(name).unlink(missing_ok=True)


def probe_writable(folder: str | Path) -> Path | None:
    """Create `folder` (with its parents) and prove it writable by writing, fsyncing and
    removing a probe file. Returns the topmost folder this call created (None when
    `folder` existed), so a caller can undo the creation. Raises DataError (path, cause,
    fix) for a read-only or full file system, a path that is too long or runs through a
    file, or a `folder` that is an existing file."""
    folder = Path(folder)
    created = None
    try:
        if folder.exists() and not folder.is_dir():
            raise DataError(f"{folder} exists and is not a folder; remove it or choose another path")
        for p in (folder, *folder.parents):
            if p.exists():
                break
            created = p
        folder.mkdir(parents=True, exist_ok=True)
        write_probe(folder)
    except DataError:
        raise
    except OSError as e:
        if created is not None:
            import shutil
            shutil.rmtree(created, ignore_errors=True)
        raise os_error(folder, e) from None
    return created
