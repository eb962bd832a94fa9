"""Tiny files of every on-disk data format and resource bombs, built in the tests."""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np


def idx_bytes(arr: np.ndarray, code: int = 0x08, dims: tuple[int, ...] | None = None) -> bytes:
    dims = arr.shape if dims is None else dims
    header = struct.pack(">BBBB", 0, 0, code, len(dims)) + struct.pack(f">{len(dims)}I", *dims)
    return header + arr.astype(np.uint8).tobytes()


def make_mnist(root: Path, n: int = 12, gz: bool = False, labels: np.ndarray | None = None) -> None:
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = np.arange(n) % 10 if labels is None else labels
    sfx = ".gz" if gz else ""
    for prefix in ("train", "t10k"):
        for stem, arr in ((f"{prefix}-images-idx3-ubyte", imgs), (f"{prefix}-labels-idx1-ubyte", labels)):
            raw = idx_bytes(arr)
            (root / f"{stem}{sfx}").write_bytes(gzip.compress(raw, 1) if gz else raw)


def cifar_batch_bytes(n: int = 4, labels: list[int] | None = None, protocol: int = 4) -> bytes:
    rng = np.random.default_rng(1)
    d = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
         b"labels": list(np.arange(n) % 10) if labels is None else labels}
    return pickle.dumps(d, protocol=protocol)


def make_cifar10(root: Path, test_batch: bytes | None = None) -> Path:
    base = root / "cifar-10-batches-py"
    base.mkdir(exist_ok=True)
    for i in range(1, 6):
        (base / f"data_batch_{i}").write_bytes(cifar_batch_bytes())
    (base / "test_batch").write_bytes(cifar_batch_bytes(6) if test_batch is None else test_batch)
    return base


def png_bytes(w: int = 6, h: int = 6, mode: str = "RGB", seed: int = 0) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    shape = (h, w, 3) if mode == "RGB" else (h, w)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(buf, "PNG")
    return buf.getvalue()


def png_header_only(w: int, h: int) -> bytes:
    """A PNG that declares w x h greyscale pixels but carries only a few bytes of data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


def make_image_folder(root: Path, files: dict[str, bytes] | None = None) -> None:
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(3):
            (root / c / f"{i}.png").write_bytes(png_bytes(seed=i + 3 * (c == "dog")))
    for rel, data in (files or {}).items():
        (root / rel).write_bytes(data)


def npz_bytes(x: np.ndarray | None = None, y: np.ndarray | None = None, compressed: bool = False,
              **extra: np.ndarray) -> bytes:
    x = np.random.default_rng(3).integers(0, 256, (8, 6, 6), dtype=np.uint8) if x is None else x
    y = np.arange(len(x)) % 2 if y is None else y
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, x=x, y=y, **extra)
    return buf.getvalue()


def npy_header(shape: tuple[int, ...], descr: str = "|u1") -> bytes:
    """A version-1.0 .npy header for `shape` (the data may be missing)."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def zip_bomb_npz(nbytes: int) -> bytes:
    """An .npz whose x.npy deflates `nbytes` of zeros (about 1,000:1) behind a true header."""
    header = npy_header((nbytes,))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("y.npy", _npy(np.zeros(1, dtype=np.int64)))
        info = zipfile.ZipInfo("x.npy")
        info.compress_type = zipfile.ZIP_DEFLATED
        with zf.open(info, "w", force_zip64=True) as fh:
            fh.write(header)
            chunk = bytes(1 << 22)
            left = nbytes
            while left:
                fh.write(chunk[:min(left, len(chunk))])
                left -= min(left, len(chunk))
    return buf.getvalue()


def forged_npz(shape: tuple[int, ...], descr: str = "|u1", payload: bytes = b"") -> bytes:
    """An .npz whose x.npy header declares `shape` but carries only `payload`."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("x.npy", npy_header(shape, descr) + payload)
        zf.writestr("y.npy", _npy(np.zeros(1, dtype=np.int64)))
    return buf.getvalue()


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def gzip_bomb_idx(n: int) -> bytes:
    """A gzipped IDX image file of n zero 28x28 images (about 1,000:1)."""
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [comp.compress(struct.pack(">BBBBIII", 0, 0, 8, 3, n, 28, 28))]
    chunk = bytes(28 * 28 * 4096)
    left = n * 784
    while left:
        parts.append(comp.compress(chunk[:min(left, len(chunk))]))
        left -= min(left, len(chunk))
    parts.append(comp.flush())
    return b"".join(parts)


BILLION_LAUGHS = """\
sections:
  - kind: evasion
    attacks: [{attack: fgsm, eps: [0.1]}]
    extra: &a [&b [&c [&d [&e [&f [&g [&h [&i [lol, lol, lol, lol, lol, lol, lol, lol, lol]]]]]]]]]
    j: &j [*a, *a, *a, *a, *a, *a, *a, *a, *a]
    k: &k [*j, *j, *j, *j, *j, *j, *j, *j, *j]
    l: &l [*k, *k, *k, *k, *k, *k, *k, *k, *k]
    m: &m [*l, *l, *l, *l, *l, *l, *l, *l, *l]
    n: &n [*m, *m, *m, *m, *m, *m, *m, *m, *m]
    o: [*n, *n, *n, *n, *n, *n, *n, *n, *n]
"""
