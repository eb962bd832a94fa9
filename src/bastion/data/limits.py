"""Size limits every on-disk loader checks before it allocates, and the checks themselves.

A data file is untrusted input: a few kilobytes can declare gigabytes (a zip or gzip
bomb, an IDX header, an .npy header, a PNG header, a pickle) or a billion classes. Each
loader compares the declared sizes with these limits, and with the bytes really present,
before it reads or decodes anything large.

Limits (module constants; the environment variable named beside each overrides it):

- MAX_DATA_BYTES = 2 GiB (BASTION_MAX_DATA_BYTES): the most memory one loaded data set
  may take as float32, and the most bytes any single file or archive member may hold
  once decompressed.
- MAX_CLASSES = 100,000 (BASTION_MAX_CLASSES): labels must be integers in 0..K-1 with
  K <= MAX_CLASSES.
- MAX_IMAGE_PIXELS = 2**25, about 33.5 megapixels (BASTION_MAX_IMAGE_PIXELS): the largest
  width x height an image in an image folder may declare.
- MAX_COMPRESSION_RATIO = 200: a compressed member that expands to more than
  COMPRESSION_FLOOR (64 MiB) must not expand more than this many times its stored size
  (real image data compresses 2-10x; a deflate bomb about 1,000x).
"""

from __future__ import annotations

import math
import os
import stat
from pathlib import Path
from typing import BinaryIO

import torch

from bastion.core import ConfigError, DataError

MAX_DATA_BYTES = 2 << 30
MAX_CLASSES = 100_000
MAX_IMAGE_PIXELS = 1 << 25
MAX_COMPRESSION_RATIO = 200
COMPRESSION_FLOOR = 64 << 20

_ENV = {"MAX_DATA_BYTES": "BASTION_MAX_DATA_BYTES", "MAX_CLASSES": "BASTION_MAX_CLASSES",
        "MAX_IMAGE_PIXELS": "BASTION_MAX_IMAGE_PIXELS"}


def _limit(name: str, default: int) -> int:
    env = _ENV[name]
    raw = os.environ.get(env)
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise ConfigError(f"{env}={raw!r}: expected a positive integer")
    return value


def max_data_bytes() -> int:
    return _limit("MAX_DATA_BYTES", MAX_DATA_BYTES)


def max_classes() -> int:
    return _limit("MAX_CLASSES", MAX_CLASSES)


def max_image_pixels() -> int:
    return _limit("MAX_IMAGE_PIXELS", MAX_IMAGE_PIXELS)


def reason(e: BaseException, limit: int = 160) -> str:
    """An exception's message on one line, shortened: safe to embed in a DataError."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def check_bytes(path: Path | str, what: str, nbytes: int) -> None:
    """Refuse `nbytes` (a declared size, as a Python int) above max_data_bytes()."""
    limit = max_data_bytes()
    if nbytes > limit:
        raise DataError(f"{path}: {what} declares {nbytes:,} bytes, more than the {limit:,}-byte limit "
                        "(BASTION_MAX_DATA_BYTES); the file is corrupt or too large to load")


def check_ratio(path: Path | str, what: str, expanded: int, stored: int) -> None:
    """Refuse compressed data that expands implausibly (a decompression bomb)."""
    if expanded > COMPRESSION_FLOOR and expanded > MAX_COMPRESSION_RATIO * max(stored, 1):
        raise DataError(f"{path}: {what} expands {stored:,} stored bytes to {expanded:,} "
                        f"(over {MAX_COMPRESSION_RATIO}x); refusing a likely decompression bomb")


def check_classes(path: Path | str, num_classes: int) -> None:
    limit = max_classes()
    if num_classes > limit:
        raise DataError(f"{path}: labels imply {num_classes:,} classes, more than the limit of "
                        f"{limit:,} (BASTION_MAX_CLASSES); labels must be 0..K-1")


def open_regular(path: Path | str, max_bytes: int | None = None) -> BinaryIO:
    """Open `path` for reading only if it is a regular file of at most `max_bytes`
    (default max_data_bytes()). FIFOs, devices and sockets are refused without blocking:
    the file is opened non-blocking and checked with fstat before any read."""
    path = Path(path)
    limit = max_data_bytes() if max_bytes is None else max_bytes
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise DataError(f"{path}: not a regular file ({_kind(st.st_mode)}); data files must be "
                            "ordinary files")
        fd = os.open(path, flags)
    except DataError:
        raise
    except OSError as e:
        raise DataError(f"{path}: cannot open ({e.strerror or reason(e)})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise DataError(f"{path}: not a regular file ({_kind(st.st_mode)}); data files must be "
                            "ordinary files")
        if st.st_size > limit:
            raise DataError(f"{path}: {st.st_size:,} bytes, more than the {limit:,}-byte limit "
                            "(BASTION_MAX_DATA_BYTES)")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISDIR, "a folder")):
        if test(mode):
            return name
    return "not an ordinary file"


def check_dataset_values(x: torch.Tensor, y: torch.Tensor, num_classes: int, name: str) -> None:
    """Inputs finite in [0, 1], labels integer class indices in 0..num_classes-1."""
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise DataError(f"{name}: num_classes must be a positive integer, got {num_classes!r}")
    check_classes(name, num_classes)
    if y.dim() != 1:
        raise DataError(f"{name}: labels must be a 1-D tensor, got shape {tuple(y.shape)}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise DataError(f"{name}: labels must be integers, got {y.dtype}")
    if y.numel():
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= num_classes:
            bad = lo if lo < 0 else hi
            raise DataError(f"{name}: label {bad} is outside 0..{num_classes - 1} "
                            f"({num_classes} classes)")
    if x.numel():
        lo_t, hi_t = torch.aminmax(x.detach())
        lo_x, hi_x = float(lo_t), float(hi_t)
        if not (math.isfinite(lo_x) and math.isfinite(hi_x)):
            raise DataError(f"{name}: inputs contain NaN or infinite values; clean the data first")
        if lo_x < 0.0 or hi_x > 1.0:
            raise DataError(f"{name}: inputs must lie in [0, 1], got [{lo_x:.4g}, {hi_x:.4g}]; "
                            "store uint8 0..255 or rescale")
