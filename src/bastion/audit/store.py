"""The run folder: cached step results (resume), tensors, final results and report.

Layout of `runs/NAME/`:
    steps/<key>.json          one finished step each (written atomically, fsync'd)
    tensors/<key>.safetensors  sample images and scores for the report
    results.json, report.html  written last; absent until a run completes
    .lock                      held (flock) by the audit writing into the folder

A step's file name hashes the step's own parameters (attack, budget, ...) together with
the run context: the model's weights and input spec, the data set's name, split, root,
size and `only_correct` flag, a hash of the selected test tensors and of the training
tensors, the seed, the batch size, the device type and the bastion and torch versions.
Changing any of them therefore never reuses a stale result. A step file also records its
key, the context hash and SHA-256 checksums of its value and of the tensor files written
by the step; a file that fails any check is reported in one line and the step recomputed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from bastion.core import DataError
from bastion.fileio import atomic_write, os_error

STEP_FORMAT = 2
LOCK_NAME = ".lock"
log = logging.getLogger("bastion.audit")


def fingerprint(obj: Any, length: int = 16) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:length]


def model_fingerprint(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def tensor_digest(*tensors: torch.Tensor) -> str:
    """SHA-256 over dtype, shape and contents of `tensors` (the data a step really sees)."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def _sha(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


class _Corrupt(Exception):
    """A cached step file that must not be reused (the message says why)."""


class RunStore:
    """Cached steps of one audit run. `context` is everything outside a step's own key that
    determines its result (see the module docstring); it is hashed into every file name."""

    def __init__(self, root: Path, context: dict[str, Any],
                 warn: Callable[[str], None] | None = None) -> None:
        self.root = Path(root)
        self.context = context
        self.context_fp = fingerprint(context, 64)
        self.warn = warn or log.warning
        self.hits = 0
        self.misses = 0
        self.corrupt = 0
        self._saved: dict[str, str] | None = None

    def _name(self, key: str) -> str:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in key)[:80]
        return f"{safe}-{fingerprint([key, self.context_fp], 24)}"

    def step_path(self, key: str) -> Path:
        return self.root / "steps" / f"{self._name(key)}.json"

    def tensors_path(self, key: str) -> Path:
        return self.root / "tensors" / f"{self._name(key)}.safetensors"

    def _write(self, path: Path, data: bytes | str) -> None:
        try:
            atomic_write(path, data)
        except OSError as e:
            raise os_error(path, e) from None

    def _read(self, path: Path, key: str) -> Any:
        """The cached value in `path`; raises _Corrupt when any check fails."""
        try:
            rec = json.loads(path.read_bytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise _Corrupt(f"not valid JSON ({e})") from None
        if not isinstance(rec, dict) or not {"format", "key", "context", "sha256", "value"} <= rec.keys():
            raise _Corrupt("fields missing")
        if rec["format"] != STEP_FORMAT or rec["key"] != key or rec["context"] != self.context_fp:
            raise _Corrupt("written for another step or run context")
        if _sha(json.dumps(rec["value"], default=str)) != rec["sha256"]:
            raise _Corrupt("checksum mismatch")
        tensors = rec.get("tensors") or {}
        if not isinstance(tensors, dict):
            raise _Corrupt("fields missing")
        for tkey, digest in tensors.items():
            tpath = self.tensors_path(str(tkey))
            try:
                data = tpath.read_bytes()
            except OSError:
                raise _Corrupt(f"its tensor file {tpath.name} is missing") from None
            if _sha(data) != digest:
                raise _Corrupt(f"its tensor file {tpath.name} fails its checksum")
        return rec["value"]

    def step(self, key: str, fn: Callable[[], Any]) -> Any:
        """Return the cached value of step `key`, or run `fn` and cache its JSON result.
        The value returned is always the JSON round trip, so a fresh and a resumed run
        hand the sections identical values."""
        path = self.step_path(key)
        if path.is_file():
            try:
                value = self._read(path, key)
                self.hits += 1
                return value
            except _Corrupt as e:
                self.corrupt += 1
                self.warn(f"cached step {path} is unusable ({e}); recomputing it")
            except OSError as e:
                self.corrupt += 1
                self.warn(f"cached step {path} cannot be read ({e.strerror}); recomputing it")
        outer, self._saved = self._saved, {}
        try:
            value = fn()
            saved = self._saved
        finally:
            self._saved = outer
        text = json.dumps(value, default=str)
        value = json.loads(text)
        rec = {"format": STEP_FORMAT, "key": key, "context": self.context_fp, "sha256": _sha(text),
               "tensors": saved, "value": value}
        self._write(path, json.dumps(rec, default=str))
        self.misses += 1
        return value

    def save_tensors(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save as st_save
        data = st_save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
        self._write(self.tensors_path(key), data)
        if self._saved is not None:
            self._saved[key] = _sha(data)

    def load_tensors(self, key: str) -> dict[str, torch.Tensor] | None:
        from safetensors import SafetensorError
        from safetensors.torch import load
        path = self.tensors_path(key)
        if not path.is_file():
            return None
        try:
            return load(path.read_bytes())
        except (OSError, SafetensorError) as e:
            self.warn(f"tensor file {path} is unreadable ({e}); its figure is left out")
            return None

    def remove_stale_temps(self) -> int:
        """Delete temporary files a killed writer left behind (call while holding the lock)."""
        n = 0
        for folder in (self.root, self.root / "steps", self.root / "tensors"):
            for tmp in folder.glob(".*.tmp"):
                with contextlib.suppress(OSError):
                    tmp.unlink()
                    n += 1
        return n


def _holder(path: Path) -> str:
    try:
        pid = path.read_text().strip()
    except OSError:
        pid = ""
    return f"pid {pid}" if pid.isdigit() else "pid unknown"


def _acquire(folder: Path, wait: bool) -> int:
    path = folder / LOCK_NAME
    while True:
        try:
            folder.mkdir(parents=True, exist_ok=True)  # a holder that failed may have removed it
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise os_error(path, e) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise os_error(path, e) from None
            raise DataError(f"run folder {folder} is in use by another audit ({_holder(path)}); "
                            "wait for it to finish, pass --wait, or choose another --out") from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the holder removed the folder while we waited: lock the new one


@contextlib.contextmanager
def run_lock(folder: Path, wait: bool = False) -> Iterator[Path]:
    """Hold an exclusive flock on `folder/.lock` for the block's duration. Another holder
    makes this raise DataError naming the folder and the holder's pid, or, with `wait`,
    blocks until it finishes. The lock dies with its process, so a killed audit never
    leaves the folder locked."""
    folder = Path(folder)
    fd = _acquire(folder, wait)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield folder / LOCK_NAME
    finally:
        os.close(fd)
