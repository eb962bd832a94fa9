"""Data registry, embedded sets, every on-disk format (tiny files made here), partitions."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from bastion.core import ConfigError, DataError
from bastion.data import dirichlet_partition, iid_partition, load, names, partition


def write_idx(path: Path, arr: np.ndarray, gz: bool = False) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    raw = header + arr.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


def make_mnist(root: Path, n: int = 12, gz: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = np.arange(n) % 10
    sfx = ".gz" if gz else ""
    for prefix in ("train", "t10k"):
        write_idx(root / f"{prefix}-images-idx3-ubyte{sfx}", imgs, gz)
        write_idx(root / f"{prefix}-labels-idx1-ubyte{sfx}", labels, gz)
    return imgs, labels


def test_mnist_5k_split_is_stratified_and_seeded() -> None:
    tr, te = load("mnist-5k", "train"), load("mnist-5k", "test")
    assert len(tr) == 4000 and len(te) == 1000
    assert tr.class_counts() == [400] * 10 and te.class_counts() == [100] * 10
    assert tr.input_shape == (1, 28, 28) and tr.x.dtype == torch.float32
    assert 0.0 <= float(tr.x.min()) and float(tr.x.max()) <= 1.0
    # labels are shuffled (the raw rows are sorted by class)
    assert len(set(tr.y[:20].tolist())) > 3
    assert torch.equal(load("mnist-5k", "test").x, te.x)
    assert not torch.equal(load("mnist-5k", "test", seed=1).y, te.y)
    # no overlap between train and test
    flat_tr = {hash(r.numpy().tobytes()) for r in tr.x[:, 0, 14]}
    assert sum(hash(r.numpy().tobytes()) in flat_tr for r in te.x[:50, 0, 14]) < 50


def test_digits_upsampling() -> None:
    d8, d28 = load("digits", "test"), load("digits", "test", size=28)
    assert d8.input_shape == (1, 8, 8) and d28.input_shape == (1, 28, 28)
    assert len(d8) == len(d28) and d8.num_classes == 10


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_formats(tmp_path: Path, gz: bool, name: str) -> None:
    imgs, labels = make_mnist(tmp_path, gz=gz)
    d = load(name, "test", root=tmp_path)
    assert d.input_shape == (1, 28, 28) and len(d) == 12
    assert torch.allclose(d.x[3, 0], torch.from_numpy(imgs[3] / 255.0).float())
    assert d.y.tolist() == labels.tolist()
    if name == "fashion-mnist":
        assert d.class_names[9] == "Ankle boot"


def test_idx_errors_name_path_and_format(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="train-images-idx3-ubyte.*IDX"):
        load("mnist", "train", root=tmp_path)
    make_mnist(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03" + b"\x00" * 20)
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte"):
        load("mnist", "test", root=tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"PK\x03\x04junk")
    with pytest.raises(DataError, match="magic"):
        load("mnist", "test", root=tmp_path)
    with pytest.raises(ConfigError, match="root"):
        load("mnist", "test")


def _cifar_batch(path: Path, n: int, key: str, classes: int) -> None:
    rng = np.random.default_rng(1)
    d = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), key.encode(): list(np.arange(n) % classes)}
    path.write_bytes(pickle.dumps(d))


def test_cifar10_batches(tmp_path: Path) -> None:
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    for i in range(1, 6):
        _cifar_batch(base / f"data_batch_{i}", 4, "labels", 10)
    _cifar_batch(base / "test_batch", 6, "labels", 10)
    (base / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"a%d" % i for i in range(10)]}))
    tr, te = load("cifar10", "train", root=tmp_path), load("cifar10", "test", root=tmp_path)
    assert len(tr) == 20 and len(te) == 6 and tr.input_shape == (3, 32, 32)
    assert te.class_names[2] == "a2" and float(tr.x.max()) <= 1.0


def test_cifar100_batches(tmp_path: Path) -> None:
    base = tmp_path / "cifar-100-python"
    base.mkdir()
    _cifar_batch(base / "train", 8, "fine_labels", 100)
    _cifar_batch(base / "test", 5, "fine_labels", 100)
    d = load("cifar100", "test", root=tmp_path)
    assert d.num_classes == 100 and len(d) == 5 and d.input_shape == (3, 32, 32)


def test_cifar_refuses_code_in_pickles(tmp_path: Path) -> None:
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()

    class Evil:
        def __reduce__(self) -> tuple:
            return (print, ("pwned",))

    (base / "test_batch").write_bytes(pickle.dumps({b"data": Evil(), b"labels": [0]}))
    with pytest.raises(DataError, match="refusing"):
        load("cifar10", "test", root=tmp_path)
    with pytest.raises(DataError, match="data_batch_1"):
        load("cifar10", "train", root=tmp_path)


def test_image_folder(tmp_path: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(2)
    for c in ("cat", "dog"):
        (tmp_path / c).mkdir()
        for i in range(5):
            Image.fromarray(rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)).save(tmp_path / c / f"{i}.png")
    d = load("imagefolder", "all", root=tmp_path)
    assert d.class_names == ["cat", "dog"] and len(d) == 10 and d.input_shape == (3, 10, 10)
    small = load("imagefolder", "train", root=tmp_path, size=8, mode="L")
    assert small.input_shape == (1, 8, 8) and len(small) == 8
    (tmp_path / "dog" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="broken.png"):
        load("imagefolder", "all", root=tmp_path)


def test_npz(tmp_path: Path) -> None:
    x = np.random.default_rng(3).integers(0, 256, (10, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(10) % 2)
    d = load("npz", "all", root=tmp_path / "d.npz")
    assert d.input_shape == (3, 8, 8) and d.num_classes == 2
    assert load(str(tmp_path / "d.npz"), "all").input_shape == (3, 8, 8)
    np.savez(tmp_path / "bad.npz", x=x.astype(np.float32), y=np.arange(10))
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        load("npz", "all", root=tmp_path / "bad.npz")
    np.savez(tmp_path / "nolabel.npz", x=x)
    with pytest.raises(DataError, match="'y'"):
        load("npz", "all", root=tmp_path / "nolabel.npz")


def test_unknown_names_list_valid_ones() -> None:
    with pytest.raises(ConfigError, match="mnist-5k"):
        load("imagenet")
    with pytest.raises(ConfigError, match="valid splits"):
        load("mnist-5k", "validation")
    assert "cifar10" in names()


def test_partitions_are_seeded_and_cover_the_data() -> None:
    y = np.repeat(np.arange(10), 50)
    parts = iid_partition(len(y), 7, seed=1)
    assert sorted(np.concatenate(parts).tolist()) == list(range(500))
    assert [p.tolist() for p in parts] == [p.tolist() for p in iid_partition(500, 7, seed=1)]
    skew = dirichlet_partition(y, 5, alpha=0.1, seed=0)
    assert sorted(np.concatenate(skew).tolist()) == list(range(500))
    # small alpha concentrates each client on few classes
    dominant = [np.bincount(y[p], minlength=10).max() / len(p) for p in skew]
    balanced = [np.bincount(y[p], minlength=10).max() / len(p) for p in dirichlet_partition(y, 5, 100.0)]
    assert np.mean(dominant) > np.mean(balanced) + 0.2
    with pytest.raises(ConfigError):
        partition(y, 5, "weird")
    with pytest.raises(ConfigError):
        dirichlet_partition(y, 5, alpha=0)
