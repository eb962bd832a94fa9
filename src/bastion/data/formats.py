"""Readers for the standard on-disk formats a user may already have.

- MNIST / Fashion-MNIST IDX files (raw or .gz), names as published
  (train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-...).
- CIFAR-10 / CIFAR-100 "python version" batches, read with a restricted unpickler that
  only admits the numpy types those files contain (never arbitrary code).
- Image folders: one sub-folder per class (optionally under train/ and test/).
- .npz archives with arrays `x` and `y` (optional `class_names`).

Every failure is a `DataError` naming the path, the expected format and where to get it.
Every reader is bounded (see bastion.data.limits): declared sizes are checked against
limits and against the bytes present before anything large is read or decoded, only
regular files are opened, and labels must lie in 0..K-1.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import math
import os
import pickle
import pickletools
import stat
import struct
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from bastion.core import ConfigError, DataError
from bastion.data.dataset import Dataset
from bastion.data.limits import (
    check_bytes,
    check_classes,
    check_ratio,
    max_data_bytes,
    max_image_pixels,
    open_regular,
    reason,
)
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

IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _find(root: Path, stem: str, hint: str) -> Path:
    for sub in ("", "raw", "MNIST/raw", "FashionMNIST/raw"):
        for suffix in ("", ".gz"):
            p = root / sub / f"{stem}{suffix}"
            if os.path.lexists(p) and not p.is_dir():
                return p
    raise DataError(f"{root / stem}[.gz] not found (IDX format expected); obtain {hint}")


def _read_exact(stream: BinaryIO, n: int, path: Path, what: str) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise DataError(f"{path}: truncated IDX file ({what}: {len(data)} of {n} bytes)")
    return data


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (raw or gzip) into a numpy array.

    The header's dimensions are multiplied as Python integers and checked against
    limits.MAX_DATA_BYTES (as stored and as float32) before the payload is read; a raw
    file's size must match the header exactly, and a gzip stream is read with a bounded
    read of the declared size plus one byte, so a gzip bomb or trailing data is refused
    without decompressing more than the limit."""
    path = Path(path)
    try:
        with open_regular(path) as fh:
            stored = os.fstat(fh.fileno()).st_size
            gz = fh.read(2) == b"\x1f\x8b"
            fh.seek(0)
            stream: BinaryIO = gzip.GzipFile(fileobj=fh, mode="rb") if gz else fh  # type: ignore[assignment]
            return _read_idx_stream(stream, path, stored, gz)
    except DataError:
        raise
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot read IDX file ({reason(e)}); expected a raw or gzipped "
                        "IDX file") from None


def _read_idx_stream(stream: BinaryIO, path: Path, stored: int, gz: bool) -> np.ndarray:
    magic = _read_exact(stream, 4, path, "magic number")
    if magic[0] != 0 or magic[1] != 0:
        raise DataError(f"{path}: bad magic number; not an IDX file (expected bytes 00 00 <type> <ndim>)")
    code, ndim = magic[2], magic[3]
    if code not in IDX_DTYPES or ndim == 0:
        raise DataError(f"{path}: unsupported IDX type code 0x{code:02x} or ndim {ndim}")
    dims = struct.unpack(f">{ndim}I", _read_exact(stream, 4 * ndim, path, "dimensions"))
    dtype = np.dtype(IDX_DTYPES[code])
    count = math.prod(dims)
    expected = count * dtype.itemsize
    check_bytes(path, f"IDX header (shape {dims})", max(expected, 4 * count))
    header = 4 + 4 * ndim
    if not gz and stored - header != expected:
        raise DataError(f"{path}: IDX payload has {stored - header} bytes, header promises "
                        f"{expected} for shape {dims}; the file is truncated or corrupt")
    if gz:
        check_ratio(path, "gzip stream", header + expected, stored)
    payload = stream.read(expected + 1)
    if len(payload) != expected:
        raise DataError(f"{path}: IDX payload has {'more than ' if len(payload) > expected else ''}"
                        f"{min(len(payload), expected)} bytes, header promises {expected} for shape "
                        f"{dims}; the file is truncated or corrupt")
    return np.frombuffer(payload, dtype=dtype).reshape(dims)


def load_idx_pair(root: str | Path, split: str, name: str, class_names: list[str]) -> Dataset:
    root = Path(root)
    if split not in ("train", "test"):
        raise ConfigError(f"{name}: split must be 'train' or 'test', got {split!r}")
    prefix = "train" if split == "train" else "t10k"
    images_path = _find(root, f"{prefix}-images-idx3-ubyte", MNIST_HINT)
    labels_path = _find(root, f"{prefix}-labels-idx1-ubyte", MNIST_HINT)
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise DataError(f"{root}: IDX images {images.shape} and labels {labels.shape} do not match "
                        "(expected [N, H, W] and [N])")
    if images.dtype != np.uint8:
        raise DataError(f"{images_path}: IDX images must be unsigned bytes (type 0x08), got {images.dtype}")
    if labels.dtype.kind not in "iu":
        raise DataError(f"{labels_path}: IDX labels must be integers, got {labels.dtype}")
    if images.shape[0] == 0 or 0 in images.shape[1:]:
        raise DataError(f"{images_path}: no images (shape {images.shape})")
    _check_labels(labels_path, labels, len(class_names))
    x = torch.from_numpy(images.astype(np.float32)[:, None] / 255.0)
    return Dataset(x, torch.from_numpy(labels.astype(np.int64)), len(class_names), class_names, name, split)


def _check_labels(path: Path, labels: np.ndarray, num_classes: int) -> None:
    """Labels must be integers in 0..num_classes-1; names the file and the offending value."""
    if labels.size == 0:
        return
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= num_classes:
        bad = lo if lo < 0 else hi
        where = int(np.flatnonzero(labels == bad)[0])
        raise DataError(f"{path}: label {bad} (at index {where}) is outside 0..{num_classes - 1} "
                        f"for {num_classes} classes")


# ----------------------------------------------------------------------------- CIFAR


def _bounded_reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    """numpy's pickle constructor, admitted only for plain ndarrays of a bounded size.

    A genuine pickle calls it with shape (0,) and fills the array from bytes in the file;
    a crafted one could ask for an array of any size here, before any data is read."""
    if subtype is not np.ndarray or not isinstance(shape, tuple) or len(shape) > 32 or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise pickle.UnpicklingError("refusing an unusual ndarray reconstruction")
    try:
        itemsize = np.dtype(dtype).itemsize
    except TypeError:
        raise pickle.UnpicklingError(f"refusing an ndarray of dtype {dtype!r}") from None
    if math.prod(shape) * max(itemsize, 1) > max_data_bytes():
        raise pickle.UnpicklingError(f"refusing an ndarray of shape {shape}")
    return np.ndarray.__new__(subtype, shape, dtype)


def _latin1_encode(text: Any, encoding: Any = "utf-8") -> bytes:
    """`_codecs.encode` as protocol-2 pickles of numpy arrays use it: latin-1 text only."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("refusing _codecs.encode other than str to latin-1")
    return text.encode("latin-1")


class _SafeUnpickler(pickle.Unpickler):
    """Admits only what CIFAR batches contain: builtins containers and numpy arrays."""

    ALLOWED: frozenset[tuple[str, str]] = frozenset({
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict")})
    RECONSTRUCT: frozenset[tuple[str, str]] = frozenset({
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")})

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        if (module, name) in self.RECONSTRUCT:
            return _bounded_reconstruct
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")


def _read_cifar_batch(path: Path) -> dict[str, Any]:
    if not os.path.lexists(path):
        raise DataError(f"{path} not found (CIFAR python batch expected); obtain {CIFAR_HINT}")
    with open_regular(path) as fh:
        try:
            raw = fh.read()
        except OSError as e:
            raise DataError(f"{path}: cannot read ({reason(e)})") from None
    try:
        # pickletools reads every opcode's argument with a bounded read, so a length
        # field promising more bytes than the file holds is refused here; the C
        # unpickler would allocate the promised size first.
        for _ in pickletools.genops(raw):
            pass
        d = _SafeUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as e:  # any corrupt pickle: the unpickler raises many kinds
        raise DataError(f"{path}: not a readable CIFAR python batch ({reason(e)}); obtain {CIFAR_HINT}") from None
    if not isinstance(d, dict):
        raise DataError(f"{path}: expected a dict batch, got {type(d).__name__}")
    return {k.decode("utf-8", "replace") if isinstance(k, bytes) else str(k): v for k, v in d.items()}


def _cifar_labels(value: Any, path: Path, key: str) -> np.ndarray:
    if isinstance(value, np.ndarray) and value.dtype.kind in "iu" and value.ndim == 1:
        return value.astype(np.int64)
    if isinstance(value, list) and all(type(v) is int or isinstance(v, np.integer) for v in value):
        try:
            return np.array(value, dtype=np.int64)
        except OverflowError:
            raise DataError(f"{path}: CIFAR {key!r} holds a label too large for int64") from None
    raise DataError(f"{path}: CIFAR {key!r} must be a list of integer labels")


def _cifar_arrays(batches: list[tuple[Path, dict[str, Any]]], label_key: str,
                  num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    datas, labels = [], []
    for path, b in batches:
        if "data" not in b or label_key not in b:
            missing = "data" if "data" not in b else label_key
            raise DataError(f"{path}: CIFAR batch lacks key {missing!r}")
        data = b["data"]
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
                or data.shape[1] != 3072:
            desc = f"{data.dtype} array {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
            raise DataError(f"{path}: CIFAR 'data' must be a uint8 array [N, 3072], got {desc}")
        lab = _cifar_labels(b[label_key], path, label_key)
        if lab.shape[0] != data.shape[0]:
            raise DataError(f"{path}: CIFAR batch has {data.shape[0]} images but {lab.shape[0]} labels")
        _check_labels(path, lab, num_classes)
        datas.append(data)
        labels.append(lab)
    data = np.concatenate(datas)
    if data.shape[0] == 0:
        raise DataError(f"{batches[0][0]}: CIFAR batch holds no images")
    check_bytes(batches[0][0].parent, "CIFAR data as float32", data.size * 4)
    return data.reshape(-1, 3, 32, 32), np.concatenate(labels)


def _cifar_names(meta: Path, key: str, default: list[str], num_classes: int) -> list[str]:
    if not os.path.lexists(meta):
        return default
    raw = _read_cifar_batch(meta).get(key)
    if raw is None:
        return default
    if not isinstance(raw, list) or len(raw) != num_classes or not all(isinstance(n, (bytes, str)) for n in raw):
        raise DataError(f"{meta}: {key!r} must be a list of {num_classes} class names")
    return [n.decode("utf-8", "replace") if isinstance(n, bytes) else n for n in raw]


def load_cifar(root: str | Path, split: str, coarse: bool = False, hundred: bool = False) -> Dataset:
    root = Path(root)
    if split not in ("train", "test"):
        raise ConfigError(f"cifar: split must be 'train' or 'test', got {split!r}")
    if not hundred:
        base = root / "cifar-10-batches-py" if (root / "cifar-10-batches-py").is_dir() else root
        files = [base / f"data_batch_{i}" for i in range(1, 6)] if split == "train" else [base / "test_batch"]
        num, name, key = 10, "cifar10", "labels"
        batches = [(f, _read_cifar_batch(f)) for f in files]
        data, labels = _cifar_arrays(batches, key, num)
        names = _cifar_names(base / "batches.meta", "label_names", CIFAR10_NAMES, num)
    else:
        base = root / "cifar-100-python" if (root / "cifar-100-python").is_dir() else root
        key = "coarse_labels" if coarse else "fine_labels"
        num, name = (20, "cifar100") if coarse else (100, "cifar100")
        batches = [(base / split, _read_cifar_batch(base / split))]
        data, labels = _cifar_arrays(batches, key, num)
        names = _cifar_names(base / "meta", "coarse_label_names" if coarse else "fine_label_names",
                             [str(i) for i in range(num)], num)
    x = torch.from_numpy(data.astype(np.float32) / 255.0)
    return Dataset(x, torch.from_numpy(labels), num, names, name, split)


# ----------------------------------------------------------------------------- image folder


def _class_files(base: Path, classes: list[str]) -> list[tuple[Path, int]]:
    files: list[tuple[Path, int]] = []
    for c, cname in enumerate(classes):
        for p in sorted((base / cname).iterdir()):
            if p.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                st = p.stat()
            except OSError as e:
                raise DataError(f"{p}: cannot read ({e.strerror or reason(e)})") from None
            if not stat.S_ISREG(st.st_mode):
                raise DataError(f"{p}: not a regular file; image folders may hold only ordinary "
                                "image files (remove it or rename its suffix)")
            files.append((p, c))
    return files


@contextlib.contextmanager
def _open_image(path: Path, image_module: Any) -> Iterator[Any]:
    """Image.open (lazy: reads the header only) on a regular file, refusing images whose
    declared width x height exceeds limits.MAX_IMAGE_PIXELS before any pixel is decoded."""
    with open_regular(path) as fh:
        try:
            im = image_module.open(fh)
        except image_module.DecompressionBombError as e:
            raise DataError(f"{path}: image too large ({reason(e)}); the limit is {max_image_pixels():,} "
                            "pixels (BASTION_MAX_IMAGE_PIXELS)") from None
        except Exception as e:  # PIL's plugins raise many kinds on corrupt headers
            raise DataError(f"{path}: unreadable image ({reason(e)})") from None
        with im:
            w, h = im.size
            if w < 1 or h < 1 or w * h > max_image_pixels():
                raise DataError(f"{path}: image declares {w} x {h} pixels, outside "
                                f"1..{max_image_pixels():,} (BASTION_MAX_IMAGE_PIXELS); resize it first")
            yield im


def _decode_image(path: Path, image_module: Any, mode: str, size: int | None) -> np.ndarray:
    with _open_image(path, image_module) as im:
        try:
            im.load()
            out = im.convert(mode)
            if size is not None:
                out = out.resize((size, size), image_module.BILINEAR)
            return np.asarray(out, dtype=np.float32) / 255.0
        except Exception as e:  # truncated or corrupt pixel data, again of many kinds
            raise DataError(f"{path}: unreadable image ({reason(e)})") from None


@contextlib.contextmanager
def _pil_pixel_limit(image_module: Any) -> Iterator[None]:
    """Set PIL's own decompression-bomb limit to ours while this loader runs."""
    saved = image_module.MAX_IMAGE_PIXELS
    image_module.MAX_IMAGE_PIXELS = max_image_pixels()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", image_module.DecompressionBombWarning)
            yield
    finally:
        image_module.MAX_IMAGE_PIXELS = saved


def load_image_folder(root: str | Path, split: str = "train", size: int | None = None,
                      mode: str | None = None, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """root/<class>/<image>, or root/train/<class>/... and root/test/<class>/...
    Images are converted to `mode` ('L' or 'RGB'; default: 'L' if every image is
    greyscale) and resized to `size` x `size` when given (else all must match).

    Only regular files are opened (a FIFO or device named x.png is refused, never read);
    every header is checked against limits.MAX_IMAGE_PIXELS and the whole set's float32
    size against limits.MAX_DATA_BYTES before any image is decoded."""
    from PIL import Image

    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: image folder not found; expected ROOT/<class name>/<images>")
    if mode not in (None, "L", "RGB"):
        raise ConfigError(f"image mode must be 'L' or 'RGB', got {mode!r}")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 1):
        raise ConfigError(f"image size must be a positive integer, got {size!r}")
    explicit = (root / "train").is_dir() and (root / "test").is_dir()
    base = root / split if explicit and split in ("train", "test") else root
    classes = sorted(p.name for p in base.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{base}: no class sub-folders; expected ROOT/<class name>/<images>")
    check_classes(base, len(classes))
    files = _class_files(base, classes)
    if not files:
        raise DataError(f"{base}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in the class folders")
    with _pil_pixel_limit(Image):
        headers = []
        for p, _ in files:
            with _open_image(p, Image) as im:
                headers.append((im.size, im.mode))
        if mode is None:
            mode = "L" if all(m in ("L", "1", "I;16") for _, m in headers) else "RGB"
        channels = 1 if mode == "L" else 3
        total = sum((size * size if size else w * h) * channels * 4 for (w, h), _ in headers)
        check_bytes(base, f"{len(files)} images as float32", total)
        arrays = [_decode_image(p, Image, mode, size) for p, _ in files]
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


NPZ_MEMBERS = ("x", "y", "class_names", "x_test", "y_test")


def _npy_header(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Check one .npy member's declared sizes (zip entry and .npy header) before reading it."""
    member = info.filename
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise DataError(f"{path}: member {member} uses an unsupported compression; "
                        "write the file with numpy.savez or savez_compressed")
    check_bytes(path, f"member {member}", info.file_size)
    if info.compress_type == zipfile.ZIP_DEFLATED:
        check_ratio(path, f"member {member}", info.file_size, info.compress_size)
    with zf.open(info) as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version in ((2, 0), (3, 0)):
            shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            raise DataError(f"{path}: member {member} has .npy version {version}")
        offset = fh.tell()
    if dtype.hasobject:
        raise DataError(f"{path}: member {member} is an object (pickled) array, which is never "
                        "loaded; store plain numeric arrays")
    nbytes = math.prod(shape) * dtype.itemsize
    check_bytes(path, f"member {member} (shape {shape}, {dtype})", nbytes)
    if offset + nbytes != info.file_size:
        raise DataError(f"{path}: member {member} declares shape {shape} ({nbytes:,} bytes) but holds "
                        f"{info.file_size - offset:,}; the file is truncated or corrupt")
    return tuple(shape), dtype


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    with open_regular(path) as fh:
        try:
            zf = zipfile.ZipFile(fh)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
            raise DataError(f"{path}: not an .npz (zip) archive ({reason(e)}); expected numpy.savez "
                            "output with 'x' and 'y'") from None
        with zf:
            members = {Path(i.filename).stem: i for i in zf.infolist() if i.filename.endswith(".npy")}
            if "x" not in members or "y" not in members:
                raise DataError(f"{path}: .npz must contain arrays 'x' and 'y', found "
                                f"{sorted(members)[:10]}")
            out = {}
            for key in NPZ_MEMBERS:
                if key not in members:
                    continue
                shape, _ = _npy_header(zf, members[key], path)
                if key in ("x", "x_test"):
                    check_bytes(path, f"{key} (shape {shape}) as float32", math.prod(shape) * 4)
                with zf.open(members[key]) as m:
                    out[key] = np.lib.format.read_array(m, allow_pickle=False)
            return out


def load_npz(path: str | Path, split: str = "all", test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """An .npz with `x` ([N, H, W], [N, C, H, W], [N, H, W, C] or [N, D]; uint8 0..255 or
    float in [0, 1]) and integer `y` in 0..K-1; optional `class_names` (K strings). With
    `x_test` and `y_test` present, those are the test split and x/y the training split.

    No pickled objects are loaded. Each member's zip entry and .npy header are checked
    against limits.MAX_DATA_BYTES (and each other) before it is read; K must not exceed
    limits.MAX_CLASSES; NaN or infinite inputs are refused."""
    path = Path(path)
    if not os.path.lexists(path):
        raise DataError(f"{path} not found; expected an .npz with arrays 'x' and 'y'")
    try:
        arrays = _read_npz(path)
    except DataError:
        raise
    except Exception as e:  # zipfile, zlib and numpy's header parser raise many kinds
        raise DataError(f"{path}: unreadable .npz ({reason(e)}); expected numpy.savez output with "
                        "'x' and 'y'") from None
    if "x_test" in arrays and "y_test" in arrays and split in ("train", "test"):
        # a file with its own test split (e.g. `bastion poison` output): x/y train, x_test/y_test test
        arrays = {**arrays, "x": arrays["x_test"], "y": arrays["y_test"]} if split == "test" else arrays
        split = "all"
    x, y = arrays["x"], arrays["y"]
    if x.ndim not in (2, 3, 4) or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise DataError(f"{path}: x must be [N, ...] with 2 to 4 dimensions and y [N]; got x {x.shape}, "
                        f"y {y.shape}")
    if x.shape[0] == 0 or 0 in x.shape[1:]:
        raise DataError(f"{path}: x holds no data (shape {x.shape})")
    if y.dtype.kind not in "iu":
        raise DataError(f"{path}: y must hold integer class labels, got {y.dtype}")
    if x.dtype.kind not in "uif" or x.dtype == np.bool_:
        raise DataError(f"{path}: x must be uint8 or floating point, got {x.dtype}")
    names = _npz_names(path, arrays.get("class_names"))
    lo, hi = int(y.min()), int(y.max())
    if lo < 0:
        raise DataError(f"{path}: label {lo} is negative; labels must be 0..K-1")
    check_classes(path, hi + 1)
    num = max(hi + 1, len(names) if names is not None else 0, 2)
    if names is not None and len(names) != num:
        raise DataError(f"{path}: class_names has {len(names)} names but labels reach {hi}")
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / 255.0
    else:
        x = x.astype(np.float32)
        lo_x, hi_x = float(x.min()), float(x.max())
        if not (math.isfinite(lo_x) and math.isfinite(hi_x)):
            raise DataError(f"{path}: x contains NaN or infinite values; clean the data first")
        if lo_x < 0 or hi_x > 1:
            raise DataError(f"{path}: float x must lie in [0, 1] (got [{lo_x:.3g}, {hi_x:.3g}]); "
                            "store uint8 or rescale")
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
        x = x.transpose(0, 3, 1, 2)
    if split in ("train", "test"):
        tr, te = stratified_split(y, test_fraction, seed)
        idx = tr if split == "train" else te
        x, y = x[idx], y[idx]
    return Dataset(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y.astype(np.int64)),
                   num, names or [], path.stem, split)


def _npz_names(path: Path, raw: np.ndarray | None) -> list[str] | None:
    if raw is None:
        return None
    if raw.ndim != 1 or raw.dtype.kind not in "US":
        raise DataError(f"{path}: class_names must be a 1-D array of strings, got {raw.dtype} {raw.shape}")
    check_classes(path, raw.shape[0])
    return [n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in raw.tolist()]
