"""Property-based fuzzing of every file loader and of config reading (hypothesis).

Property: a loader given a corrupted file either returns a valid Dataset (float32 in
[0, 1], finite, int64 labels in 0..K-1) or raises a BastionError with a one-line message;
never another exception, never a large allocation (tracemalloc peak), never code
execution (a marker file a malicious pickle would create never appears)."""

from __future__ import annotations

import gzip
import os
import pickle
import tempfile
import tracemalloc
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bastion.audit.config import AuditConfig, load_config
from bastion.core import BastionError
from bastion.data import Dataset, load
from bastion.safe_yaml import load_yaml_file
from loader_files import (
    cifar_batch_bytes,
    forged_npz,
    idx_bytes,
    make_image_folder,
    npz_bytes,
    png_bytes,
    png_header_only,
)

PEAK_BYTES = 64 << 20
FUZZ = settings(max_examples=250, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
PER_KIND = settings(FUZZ, max_examples=80)
CASES: Counter[str] = Counter()


@pytest.fixture(scope="module", autouse=True)
def _report_cases() -> Any:
    yield
    print("\nfuzz cases per target: " + ", ".join(f"{k}={v}" for k, v in sorted(CASES.items())))


def check(target: str, fn: Callable[[], Any]) -> None:
    """Run one case and assert the property."""
    CASES[target] += 1
    tracemalloc.start()
    try:
        out = fn()
    except BastionError as e:
        CASES[f"{target}:refused"] += 1
        assert "\n" not in str(e), f"multi-line message: {e!s}"
        out = None
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < PEAK_BYTES, f"{target}: allocated {peak:,} bytes"
    if isinstance(out, Dataset):
        assert out.x.dtype == torch.float32 and out.y.dtype == torch.int64
        assert bool(torch.isfinite(out.x).all()) and float(out.x.min()) >= 0 and float(out.x.max()) <= 1
        assert 1 <= out.num_classes <= 100_000
        assert len(out) == 0 or (int(out.y.min()) >= 0 and int(out.y.max()) < out.num_classes)


@st.composite
def mutated(draw: st.DrawFn, seed: bytes) -> bytes:
    """`seed` truncated, with bytes flipped or overwritten, junk inserted or appended."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "truncate", "insert", "append", "u32"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "truncate":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(max_size=16))
        elif op == "append":
            data += draw(st.binary(max_size=64))
        elif op == "u32" and len(data) >= 4:
            pos = min(pos, len(data) - 4)
            data[pos:pos + 4] = draw(st.sampled_from([0, 1, 255, 2**16, 2**31 - 1, 2**32 - 1])).to_bytes(4, "big")
    return bytes(data)


# ----------------------------------------------------------------------------- IDX

IMAGES = idx_bytes(np.random.default_rng(0).integers(0, 256, (6, 28, 28)))
LABELS = idx_bytes(np.arange(6) % 10)


@FUZZ
@given(which=st.sampled_from(["images", "labels"]), gz=st.booleans(), data=st.data())
def test_fuzz_idx(which: str, gz: bool, data: st.DataObject) -> None:
    seed = IMAGES if which == "images" else LABELS
    if gz and data.draw(st.booleans()):      # corrupt the gzip stream itself
        blob = data.draw(mutated(gzip.compress(seed, 1)))
    else:
        blob = data.draw(mutated(seed))
        blob = gzip.compress(blob, 1) if gz else blob
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sfx = ".gz" if gz else ""
        (root / f"t10k-images-idx3-ubyte{sfx}").write_bytes(blob if which == "images" else IMAGES)
        (root / f"t10k-labels-idx1-ubyte{sfx}").write_bytes(blob if which == "labels" else LABELS)
        if gz:
            for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
                p = root / f"{stem}.gz"
                if p.read_bytes() in (IMAGES, LABELS):
                    p.write_bytes(gzip.compress(p.read_bytes(), 1))
        check(f"idx{'.gz' if gz else ''}", lambda: load("mnist", "test", root=root))


# ----------------------------------------------------------------------------- CIFAR


class _Evil:
    def __init__(self, fn: Any, marker: Path) -> None:
        self.fn, self.marker = fn, marker

    def __reduce__(self) -> tuple:
        if self.fn is os.system:
            return (os.system, (f"touch {self.marker}",))
        if self.fn is eval:
            return (eval, (f"open({str(self.marker)!r}, 'w')",))
        return (self.fn, (str(self.marker), "w"))


@pytest.mark.parametrize("kind", ["mutated", "evil", "shape"])
@PER_KIND
@given(protocol=st.integers(0, 5), data=st.data())
def test_fuzz_cifar(kind: str, protocol: int, data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        marker = root / "pwned"
        if kind == "mutated":
            blob = data.draw(mutated(cifar_batch_bytes(3, protocol=max(protocol, 2))))
        elif kind == "evil":
            fn = data.draw(st.sampled_from([os.system, eval, open]))
            where = data.draw(st.sampled_from(["data", "labels", "top"]))
            evil = _Evil(fn, marker)
            obj: Any = evil if where == "top" else {b"data": evil if where == "data" else np.zeros((1, 3072), np.uint8),
                                                    b"labels": [evil] if where == "labels" else [0]}
            blob = pickle.dumps(obj, protocol=protocol)
        else:
            n = data.draw(st.integers(0, 4))
            labels = data.draw(st.lists(st.integers(-2**70, 2**70) | st.integers(-1, 11), max_size=5))
            arr = np.zeros((n, data.draw(st.sampled_from([3072, 3071, 1]))),
                           data.draw(st.sampled_from([np.uint8, np.float32, np.int64])))
            blob = pickle.dumps({b"data": arr, b"labels": labels}, protocol=max(protocol, 2))
        base = root / "cifar-10-batches-py"
        base.mkdir()
        (base / "test_batch").write_bytes(blob)
        check(f"cifar:{kind}", lambda: load("cifar10", "test", root=root))
        assert not marker.exists(), "a pickle ran code"


def test_evil_payloads_do_run_under_plain_pickle(tmp_path: Path) -> None:
    """The fuzzed payloads are live: plain pickle.loads executes them (so the marker
    check above can fail)."""
    for fn in (os.system, eval, open):
        marker = tmp_path / f"ran-{fn.__name__}"
        pickle.loads(pickle.dumps(_Evil(fn, marker)))
        assert marker.exists()


# ----------------------------------------------------------------------------- image folders

PNG = png_bytes()


def _bmp() -> bytes:
    import io

    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(buf, "BMP")
    return buf.getvalue()


@pytest.fixture(scope="module")
def small_pixel_limit() -> Any:
    """Mutated headers may declare any size up to the pixel limit, and decoding that much
    is allowed; a small limit keeps each case's memory bound tight."""
    from PIL import Image
    Image.init()   # import every plugin now, not inside the first measured case
    saved = os.environ.get("BASTION_MAX_IMAGE_PIXELS")
    os.environ["BASTION_MAX_IMAGE_PIXELS"] = "65536"
    yield
    if saved is None:
        del os.environ["BASTION_MAX_IMAGE_PIXELS"]
    else:
        os.environ["BASTION_MAX_IMAGE_PIXELS"] = saved


@FUZZ
@given(kind=st.sampled_from(["png", "bmp", "gif", "header"]), data=st.data())
def test_fuzz_image_folder(small_pixel_limit: None, kind: str, data: st.DataObject) -> None:
    if kind == "header":
        w, h = data.draw(st.integers(0, 2**31 - 1)), data.draw(st.integers(0, 2**31 - 1))
        blob = png_header_only(w, h)
    else:
        seed = {"png": PNG, "bmp": _bmp(), "gif": _gif()}[kind]
        blob = data.draw(mutated(seed))
    size = data.draw(st.sampled_from([None, 4]))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_image_folder(root, {f"dog/fuzz.{'png' if kind == 'header' else kind}": blob})
        check(f"imagefolder:{kind}", lambda: load("imagefolder", "all", root=root, size=size))


def _gif() -> bytes:
    import io

    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(np.arange(36, dtype=np.uint8).reshape(6, 6)).save(buf, "GIF")
    return buf.getvalue()


def test_fuzz_non_regular_files(tmp_path: Path) -> None:
    """FIFOs, sockets, device links and folders named like data files."""
    import socket
    make_image_folder(tmp_path / "img")
    os.mkfifo(tmp_path / "img" / "cat" / "fifo.png")
    check("nonregular", lambda: load("imagefolder", "all", root=tmp_path / "img"))
    (tmp_path / "img" / "cat" / "fifo.png").unlink()
    (tmp_path / "img" / "cat" / "zero.png").symlink_to("/dev/zero")
    check("nonregular", lambda: load("imagefolder", "all", root=tmp_path / "img"))
    for name in ("fifo.npz", "sock.npz", "dev.npz", "dir.npz"):
        p = tmp_path / name
        if name == "fifo.npz":
            os.mkfifo(p)
        elif name == "sock.npz":
            s = socket.socket(socket.AF_UNIX)
            s.bind(str(p))
            s.close()
        elif name == "dev.npz":
            p.symlink_to("/dev/zero")
        else:
            p.mkdir()
        check("nonregular", lambda p=p: load("npz", "all", root=p))
    mn = tmp_path / "mnist"
    mn.mkdir()
    os.mkfifo(mn / "t10k-images-idx3-ubyte")
    (mn / "t10k-labels-idx1-ubyte").write_bytes(LABELS)
    check("nonregular", lambda: load("mnist", "test", root=mn))
    assert CASES["nonregular:refused"] >= 7


# ----------------------------------------------------------------------------- npz

NPZ, NPZ_C = npz_bytes(), npz_bytes(compressed=True)


@st.composite
def npz_arrays(draw: st.DrawFn) -> bytes:
    n = draw(st.integers(0, 5))
    shape = draw(st.sampled_from([(n,), (n, 4), (n, 3, 3), (n, 2, 2, 3), (n, 1, 2, 2, 2)]))
    dtype = draw(st.sampled_from([np.uint8, np.float32, np.float64, np.int16, np.bool_, np.complex64, "U3"]))
    fill = draw(st.sampled_from([0.0, 0.5, 1.0, 2.0, -1.0, np.nan, np.inf]))
    x = np.full(shape, fill if np.dtype(dtype).kind in "fc" else 1).astype(dtype)
    y = np.array(draw(st.lists(st.integers(-3, 12) | st.sampled_from([10**9, 2**62]), min_size=n, max_size=n)),
                 dtype=np.int64).astype(draw(st.sampled_from([np.int64, np.uint8, np.float32])))
    extra: dict[str, Any] = {}
    if draw(st.booleans()):
        extra["class_names"] = np.array(draw(st.lists(st.text(max_size=3), max_size=4)), dtype=str)
    return npz_bytes(x=x, y=y, compressed=draw(st.booleans()), **extra)


@pytest.mark.parametrize("kind", ["mutated", "arrays", "object", "forged"])
@PER_KIND
@given(data=st.data())
def test_fuzz_npz(kind: str, data: st.DataObject) -> None:
    if kind == "mutated":
        blob = data.draw(mutated(data.draw(st.sampled_from([NPZ, NPZ_C]))))
    elif kind == "arrays":
        blob = data.draw(npz_arrays())
    elif kind == "object":
        which = data.draw(st.sampled_from(["x", "y", "class_names"]))
        arrays: dict[str, Any] = {"x": np.zeros((2, 4), np.uint8), "y": np.zeros(2, np.int64)}
        arrays[which] = np.array([os.system, "a"], dtype=object)
        blob = npz_bytes(**arrays)
    else:
        dims = data.draw(st.lists(st.integers(0, 2**40), min_size=1, max_size=5))
        blob = forged_npz(tuple(dims), data.draw(st.sampled_from(["|u1", "<f4", "<f8", "|O", "<U100"])),
                          data.draw(st.binary(max_size=32)))
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "d.npz"
        p.write_bytes(blob)
        check(f"npz:{kind}", lambda: load("npz", "all", root=p))


# ----------------------------------------------------------------------------- YAML configs

CONFIG = ("seed: 1\ndata: {name: mnist-5k, split: test, n: 50}\nsections:\n"
          "  - kind: evasion\n    attacks:\n      - {attack: fgsm, eps: [0.1, 0.2]}\n")
YAML_TOKENS = ["&a ", "*a", "[", "]", "{", "}", ": ", "- ", "!!python/object/apply:os.system ", "!!binary ",
               "<<: ", "? ", "|\n", ">", "'", '"', "\t", "\n", "  ", "2001-13-45", "1e999", ".nan", "~", "%YAML 1.1\n",
               "---\n", "...\n", "\x00", "\ufeff", "\u2028", "kind", "sections", "seed"]


@st.composite
def yaml_texts(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["tokens", "mutated", "nested", "binary", "aliases"]))
    if kind == "tokens":
        return "".join(draw(st.lists(st.sampled_from(YAML_TOKENS) | st.text(max_size=4), max_size=40))).encode(
            "utf-8", "surrogatepass")
    if kind == "mutated":
        return draw(mutated(CONFIG.encode()))
    if kind == "nested":
        depth = draw(st.integers(1, 3000))
        open_, close = draw(st.sampled_from([("[", "]"), ("{a: ", "}"), ("- ", "")]))
        body = open_ * depth + "1" + close * depth if open_ != "- " else "".join(
            "  " * i + "- " + ("\n" if i < depth - 1 else "1") for i in range(min(depth, 200)))
        return f"sections: {body}\n".encode()
    if kind == "binary":
        return draw(st.binary(max_size=200))
    reps = draw(st.integers(1, 9))
    return (CONFIG + "    extra: &x [lol]\n    more: [" + ", ".join(["*x"] * reps) + "]\n").encode()


@FUZZ
@given(text=yaml_texts())
def test_fuzz_yaml_configs(text: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "c.yaml"
        p.write_bytes(text)
        check("yaml:read", lambda: load_yaml_file(p))
        CASES["yaml:config"] += 1
        try:
            cfg = load_config(p)
        except BastionError:
            CASES["yaml:config:refused"] += 1
        else:
            assert isinstance(cfg, AuditConfig)
