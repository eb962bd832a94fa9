"""Readers for the standard on-disk formats a user may already have.

- MNIST / Fashion-MNIST IDX files (raw or .gz), names as published
  (train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-...).
- CIFAR-10 / CIFAR-100 "python version" batches, read with a restricted unpickler that
  only admits the numpy types those files contain (never arbitrary code).
- Image folders: one sub-folder per class (optionally under train/ and test/).
- .npz archives with arrays `x` and `y` (optional `class_names`).

Every failure is a `DataError` naming the path, the expected format and where to get it.
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bastion.core import ConfigError, DataError
from bastion.data.dataset import Dataset
from bastion.data.splits import stratified_split

MNIST_HINT = ("the four IDX files from the MNIST page (yann.lecun.com/exdb/mnist) or, for "
              "Fashion-MNIST, from github.com/zalandoresearch/fashion-mnist; put them in ROOT "
              "(raw or .gz)")
CIFAR_HINT = ("the 'CIFAR-10/100 python version' archive from www.cs.toronto.edu/~kriz/cifar.html, "
              "extracted under ROOT")
FASHION_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                 "Sneaker", "Bag", "Ankle boot"]
CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                 "truck"]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


# ----------------------------------------------------------------------------- IDX


def _find(root: Path, stem: str, hint: str) -> Path:
    for sub in ("", "raw", "MNIST/raw", "FashionMNIST/raw"):
        for suffix in ("", ".gz"):
            p = root / sub / f"{stem}{suffix}"
            if p.is_file():
                return p
    raise DataError(f"{root / stem}[.gz] not found (IDX format expected); obtain {hint}")


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (raw or gzip) into a numpy array; validates magic and size."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"{path}: cannot read IDX file ({e}); expected a raw or gzipped IDX file") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path}: bad magic number; not an IDX file (expected bytes 00 00 <type> <ndim>)")
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    code, ndim = raw[2], raw[3]
    if code not in dtypes or ndim == 0:
        raise DataError(f"{path}: unsupported IDX type code 0x{code:02x} or ndim {ndim}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(dtypes[code])
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(f"{path}: IDX payload has {len(raw) - header} bytes, header promises "
                        f"{expected} for shape {dims}; the file is truncated or corrupt")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def load_idx_pair(root: str | Path, split: str, name: str, class_names: list[str]) -> Dataset:
    root = Path(root)
    if split not in ("train", "test"):
        raise ConfigError(f"{name}: split must be 'train' or 'test', got {split!r}")
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(_find(root, f"{prefix}-images-idx3-ubyte", MNIST_HINT))
    labels = read_idx(_find(root, f"{prefix}-labels-idx1-ubyte", MNIST_HINT))
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise DataError(f"{root}: IDX images {images.shape} and labels {labels.shape} do not match "
                        "(expected [N, H, W] and [N])")
    x = torch.from_numpy(images.astype(np.float32)[:, None] / 255.0)
    return Dataset(x, torch.from_numpy(labels.astype(np.int64)), 10, class_names, name, split)


# ----------------------------------------------------------------------------- CIFAR


class _SafeUnpickler(pickle.Unpickler):
    """Admits only what CIFAR batches contain: builtins containers and numpy arrays."""

    ALLOWED: frozenset[tuple[str, str]] = frozenset({("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict")})

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")


def _read_cifar_batch(path: Path) -> dict[Any, Any]:
    if not path.is_file():
        raise DataError(f"{path} not found (CIFAR python batch expected); obtain {CIFAR_HINT}")
    try:
        with path.open("rb") as fh:
            d = _SafeUnpickler(io.BytesIO(fh.read()), encoding="bytes").load()
    except Exception as e:
        raise DataError(f"{path}: not a readable CIFAR python batch ({e}); obtain {CIFAR_HINT}") from e
    if not isinstance(d, dict):
        raise DataError(f"{path}: expected a dict batch, got {type(d).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}


def _cifar_arrays(batches: list[dict[Any, Any]], label_key: str, path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        data = np.concatenate([np.asarray(b["data"], dtype=np.uint8) for b in batches])
        labels = np.concatenate([np.asarray(b[label_key], dtype=np.int64) for b in batches])
    except KeyError as e:
        raise DataError(f"{path}: CIFAR batch lacks key {e}") from e
    if data.ndim != 2 or data.shape[1] != 3072 or data.shape[0] != labels.shape[0]:
        raise DataError(f"{path}: CIFAR data has shape {data.shape}, expected [N, 3072]")
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar(root: str | Path, split: str, coarse: bool = False, hundred: bool = False) -> Dataset:
    root = Path(root)
    if split not in ("train", "test"):
        raise ConfigError(f"cifar: split must be 'train' or 'test', got {split!r}")
    if not hundred:
        base = root / "cifar-10-batches-py" if (root / "cifar-10-batches-py").is_dir() else root
        files = [base / f"data_batch_{i}" for i in range(1, 6)] if split == "train" else [base / "test_batch"]
        batches = [_read_cifar_batch(f) for f in files]
        data, labels = _cifar_arrays(batches, "labels", base)
        names = CIFAR10_NAMES
        meta = base / "batches.meta"
        if meta.is_file():
            names = [n.decode() if isinstance(n, bytes) else str(n)
                     for n in _read_cifar_batch(meta).get("label_names", names)]
        num, name = 10, "cifar10"
    else:
        base = root / "cifar-100-python" if (root / "cifar-100-python").is_dir() else root
        key = "coarse_labels" if coarse else "fine_labels"
        batches = [_read_cifar_batch(base / split)]
        data, labels = _cifar_arrays(batches, key, base)
        num, name = (20, "cifar100") if coarse else (100, "cifar100")
        names = [str(i) for i in range(num)]
        meta = base / "meta"
        if meta.is_file():
            m = _read_cifar_batch(meta)
            raw = m.get("coarse_label_names" if coarse else "fine_label_names")
            if raw is not None:
                names = [n.decode() if isinstance(n, bytes) else str(n) for n in raw]
    x = torch.from_numpy(data.astype(np.float32) / 255.0)
    return Dataset(x, torch.from_numpy(labels), num, names, name, split)


# ----------------------------------------------------------------------------- image folder


def load_image_folder(root: str | Path, split: str = "train", size: int | None = None,
                      mode: str | None = None, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """root/<class>/<image>, or root/train/<class>/... and root/test/<class>/...
    Images are converted to `mode` ('L' or 'RGB'; default: 'L' if every image is
    greyscale) and resized to `size` x `size` when given (else all must match)."""
    from PIL import Image, UnidentifiedImageError

    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: image folder not found; expected ROOT/<class name>/<images>")
    explicit = (root / "train").is_dir() and (root / "test").is_dir()
    base = root / split if explicit and split in ("train", "test") else root
    classes = sorted(p.name for p in base.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{base}: no class sub-folders; expected ROOT/<class name>/<images>")
    files: list[tuple[Path, int]] = []
    for c, cname in enumerate(classes):
        files += [(p, c) for p in sorted((base / cname).iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise DataError(f"{base}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in the class folders")
    images = []
    for p, _ in files:
        try:
            with Image.open(p) as im:
                im.load()
                images.append(im.copy())
        except (OSError, UnidentifiedImageError) as e:
            raise DataError(f"{p}: unreadable image ({e})") from e
    if mode is None:
        mode = "L" if all(im.mode in ("L", "1", "I;16") for im in images) else "RGB"
    if mode not in ("L", "RGB"):
        raise ConfigError(f"image mode must be 'L' or 'RGB', got {mode!r}")
    arrays = []
    for im in images:
        im = im.convert(mode)
        if size is not None:
            im = im.resize((size, size), Image.BILINEAR)
        arrays.append(np.asarray(im, dtype=np.float32) / 255.0)
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise DataError(f"{base}: images have different sizes {sorted(shapes)[:3]}...; pass size=")
    x = np.stack(arrays)
    x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
    y = np.array([c for _, c in files], dtype=np.int64)
    name = "imagefolder"
    if not explicit and split in ("train", "test"):
        tr, te = stratified_split(y, test_fraction, seed)
        idx = tr if split == "train" else te
        x, y = x[idx], y[idx]
    return Dataset(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y), len(classes),
                   classes, name, split)


# ----------------------------------------------------------------------------- npz


def load_npz(path: str | Path, split: str = "all", test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """An .npz with `x` ([N, H, W], [N, C, H, W], [N, H, W, C] or [N, D]; uint8 0..255 or
    float in [0, 1]) and integer `y`; optional `class_names`. No pickled objects allowed."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} not found; expected an .npz with arrays 'x' and 'y'")
    try:
        with np.load(path, allow_pickle=False) as z:
            if "x" not in z or "y" not in z:
                raise DataError(f"{path}: .npz must contain arrays 'x' and 'y', found {sorted(z.files)}")
            x, y = z["x"], z["y"]
            names = [str(n) for n in z["class_names"]] if "class_names" in z else None
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{path}: unreadable .npz ({e}); expected numpy.savez output with 'x' and 'y'") from e
    if x.shape[0] != y.shape[0] or y.ndim != 1:
        raise DataError(f"{path}: x has {x.shape[0]} rows, y has shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: y must hold integer class labels, got {y.dtype}")
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / 255.0
    else:
        x = x.astype(np.float32)
        if x.size and (x.min() < 0 or x.max() > 1):
            raise DataError(f"{path}: float x must lie in [0, 1] (got [{x.min():.3g}, {x.max():.3g}]); "
                            "store uint8 or rescale")
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
        x = x.transpose(0, 3, 1, 2)
    num = int(y.max()) + 1 if y.size else 0
    if names is not None:
        num = max(num, len(names))
    if split in ("train", "test"):
        tr, te = stratified_split(y, test_fraction, seed)
        idx = tr if split == "train" else te
        x, y = x[idx], y[idx]
    return Dataset(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y.astype(np.int64)),
                   max(num, 2), names or [], path.stem, split)
