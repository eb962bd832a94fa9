"""Resource bombs and bad values in data files and configs: each is refused with a one-line
DataError/ConfigError, quickly and before any large allocation."""

from __future__ import annotations

import gzip
import os
import pickle
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from bastion.audit.config import load_config
from bastion.cli.common import parse_kv
from bastion.core import BastionError, ConfigError, DataError
from bastion.data import Dataset, load
from bastion.data.formats import read_idx
from bastion.safe_yaml import MAX_CONFIG_BYTES, load_yaml_text
from loader_files import (
    BILLION_LAUGHS,
    cifar_batch_bytes,
    forged_npz,
    gzip_bomb_idx,
    idx_bytes,
    make_cifar10,
    make_image_folder,
    make_mnist,
    npz_bytes,
    png_header_only,
    zip_bomb_npz,
)

PEAK_BYTES = 64 << 20   # every refusal below must stay under this (tracemalloc peak)


def refused(fn: Callable[[], Any], error: type[BastionError], match: str) -> tuple[float, int]:
    """Run fn, expect `error` with a one-line message matching `match`; return (CPU s, peak B).
    CPU time, not wall time: the bound is on the work done, whatever else shares the cores."""
    tracemalloc.start()
    t0 = time.process_time()
    try:
        with pytest.raises(error, match=match) as info:
            fn()
        seconds = time.process_time() - t0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "\n" not in str(info.value), str(info.value)
    assert peak < PEAK_BYTES, f"refusal allocated {peak:,} bytes"
    assert seconds < 5, f"refusal took {seconds:.1f} CPU s"
    return seconds, peak


# ----------------------------------------------------------------------------- YAML


def test_billion_laughs_config_is_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "laughs.yaml"
    cfg.write_text(BILLION_LAUGHS)
    assert cfg.stat().st_size < 700
    refused(lambda: load_config(cfg), ConfigError, r"aliases \(\*a\) are not allowed at line 5")


def test_config_size_cap_and_utf8(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    big = tmp_path / "big.yaml"
    big.write_text("seed: 0\n" + "#" * MAX_CONFIG_BYTES + "\n")
    refused(lambda: load_config(big), ConfigError, "byte limit")
    monkeypatch.setenv("BASTION_MAX_CONFIG_BYTES", str(2 * MAX_CONFIG_BYTES))
    with pytest.raises(ConfigError, match="no sections"):   # read, then validated
        load_config(big)
    latin = tmp_path / "latin1.yaml"
    latin.write_bytes("seed: 0\n# caf\u00e9\n".encode("latin-1"))
    refused(lambda: load_config(latin), ConfigError, r"not UTF-8 text \(byte 0xe9 at offset 13\)")
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    refused(lambda: load_config(fifo), ConfigError, "not a regular file")


def test_deep_nesting_and_bad_values_are_config_errors(tmp_path: Path) -> None:
    deep = tmp_path / "deep.yaml"
    deep.write_text("seed: " + "[" * 5000 + "]" * 5000)
    refused(lambda: load_config(deep), ConfigError, "nested deeper than 64")
    with pytest.raises(ConfigError, match="month must be in 1..12"):
        load_yaml_text("when: 2001-13-45")
    ok = tmp_path / "ok.yaml"
    ok.write_text("sections:\n  - kind: evasion\n    attacks: [{attack: fgsm, eps: [0.1]}]\n")
    assert load_config(ok).sections[0].kind == "evasion"


def test_parse_kv_uses_the_safe_reader() -> None:
    assert parse_kv(["steps=40", "hidden=[32, 16]", "name=abc"]) == {
        "steps": 40, "hidden": [32, 16], "name": "abc"}
    for bad, msg in (("x=&a [*a, *a]", "aliases"), ("d=2001-13-45", "month"), ("v=[1", "not valid YAML"),
                     ("o=!!python/object/apply:os.system [echo]", "not valid YAML")):
        with pytest.raises(ConfigError, match=msg) as info:
            parse_kv([bad])
        assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------- npz


def test_npz_with_labels_of_a_billion_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "labels.npz"
    p.write_bytes(npz_bytes(y=np.full(8, 10**9), compressed=True))
    refused(lambda: load("npz", "all", root=p), DataError, "1,000,000,001 classes, more than the limit of 100,000")
    p.write_bytes(npz_bytes(y=np.array([0, 1, -3, 1, 0, 1, 0, 1])))
    refused(lambda: load("npz", "all", root=p), DataError, "label -3 is negative")


def test_npz_zip_bomb_is_refused_before_decompressing(tmp_path: Path) -> None:
    p = tmp_path / "bomb.npz"
    p.write_bytes(zip_bomb_npz(256 << 20))
    assert p.stat().st_size < 400_000
    refused(lambda: load("npz", "all", root=p), DataError, "decompression bomb")


def test_npz_declared_shapes_are_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "forged.npz"
    p.write_bytes(forged_npz((10**6, 10**6)))
    refused(lambda: load("npz", "all", root=p), DataError, "1,000,000,000,000 bytes, more than")
    p.write_bytes(forged_npz((1000, 28, 28), payload=b"\x00" * 100))
    refused(lambda: load("npz", "all", root=p), DataError, "truncated or corrupt")
    monkeypatch.setenv("BASTION_MAX_DATA_BYTES", "1000")
    p.write_bytes(npz_bytes(x=np.zeros((8, 6, 6), np.uint8)))
    refused(lambda: load("npz", "all", root=p), DataError, "as float32 declares 1,152 bytes")


def test_npz_object_arrays_are_never_unpickled(tmp_path: Path) -> None:
    p = tmp_path / "obj.npz"
    p.write_bytes(npz_bytes(x=np.array([object()] * 8, dtype=object).reshape(8, 1)))
    refused(lambda: load("npz", "all", root=p), DataError, "object .pickled. array")


def test_npz_nan_and_range_are_data_errors(tmp_path: Path) -> None:
    p = tmp_path / "nan.npz"
    x = np.full((8, 6, 6), 0.5, np.float32)
    x[3, 2, 1] = np.nan
    p.write_bytes(npz_bytes(x=x))
    refused(lambda: load("npz", "all", root=p), DataError, "NaN or infinite")
    x[3, 2, 1] = np.inf
    p.write_bytes(npz_bytes(x=x))
    refused(lambda: load("npz", "all", root=p), DataError, "NaN or infinite")
    p.write_bytes(npz_bytes(x=np.full((8, 6, 6), 1.5, np.float32)))
    refused(lambda: load("npz", "all", root=p), DataError, r"\[0, 1\]")
    p.write_bytes(npz_bytes(x=np.zeros((8, 4)), y=np.arange(8) % 3, class_names=np.array(["a", "b"])))
    refused(lambda: load("npz", "all", root=p), DataError, "class_names has 2 names but labels reach 2")


def test_dataset_construction_refuses_nan_and_bad_labels() -> None:
    x = torch.full((4, 1, 2, 2), 0.5)
    assert len(Dataset(x, torch.tensor([0, 1, 2, 1]), 3)) == 4
    with pytest.raises(DataError, match="label 3 is outside 0..2"):
        Dataset(x, torch.tensor([0, 1, 3, 1]), 3, name="t")
    with pytest.raises(DataError, match="label -1"):
        Dataset(x, torch.tensor([0, -1, 2, 1]), 3)
    with pytest.raises(DataError, match="more than the limit"):
        Dataset(x, torch.tensor([0, 1, 2, 1]), 10**9)
    with pytest.raises(DataError, match="integers"):
        Dataset(x, torch.tensor([0.0, 1.0, 2.0, 1.0]), 3)
    x[1, 0, 0, 0] = float("nan")
    with pytest.raises(DataError, match="NaN"):
        Dataset(x, torch.tensor([0, 1, 2, 1]), 3)


# ----------------------------------------------------------------------------- IDX


def test_gzip_idx_bomb_is_refused_before_decompressing(tmp_path: Path) -> None:
    make_mnist(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte").unlink()
    bomb = tmp_path / "t10k-images-idx3-ubyte.gz"
    bomb.write_bytes(gzip_bomb_idx(200_000))          # 157 MB of pixels in about 150 KB
    assert bomb.stat().st_size < 200_000
    refused(lambda: load("mnist", "test", root=tmp_path), DataError, "decompression bomb")


def test_idx_declared_sizes_and_overflow(tmp_path: Path) -> None:
    p = tmp_path / "x-idx"
    # 2^32-1 cubed: the old numpy product wrapped around; Python ints do not
    p.write_bytes(idx_bytes(np.zeros(0, np.uint8), dims=(2**32 - 1,) * 3))
    refused(lambda: read_idx(p), DataError, "more than the")
    p.write_bytes(idx_bytes(np.zeros(0, np.uint8), dims=(2**16, 2**16, 2**16, 2**16)))
    refused(lambda: read_idx(p), DataError, "73,786,976,294,838,206,464 bytes")
    g = tmp_path / "y-idx.gz"
    g.write_bytes(gzip.compress(idx_bytes(np.zeros(10, np.uint8)) + b"trailing"))
    refused(lambda: read_idx(g), DataError, "more than 10 bytes")
    g.write_bytes(gzip.compress(idx_bytes(np.zeros(10, np.uint8)))[:-12])
    refused(lambda: read_idx(g), DataError, "IDX")
    ok = tmp_path / "ok-idx"
    ok.write_bytes(idx_bytes(np.arange(6).reshape(2, 3)))
    assert read_idx(ok).tolist() == [[0, 1, 2], [3, 4, 5]]


def test_idx_labels_out_of_range(tmp_path: Path) -> None:
    make_mnist(tmp_path, labels=np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 0]))
    refused(lambda: load("mnist", "test", root=tmp_path), DataError,
            r"t10k-labels-idx1-ubyte: label 12 \(at index 10\) is outside 0..9")


# ----------------------------------------------------------------------------- CIFAR


def test_cifar_labels_out_of_range_and_fake_arrays(tmp_path: Path) -> None:
    make_cifar10(tmp_path, cifar_batch_bytes(3, labels=[0, 10, 1]))
    refused(lambda: load("cifar10", "test", root=tmp_path), DataError, r"test_batch: label 10 \(at index 1\)")
    make_cifar10(tmp_path, pickle.dumps({b"data": [[300] * 3072], b"labels": [0]}))
    refused(lambda: load("cifar10", "test", root=tmp_path), DataError, "must be a uint8 array")


def test_cifar_pickle_cannot_allocate_huge_arrays(tmp_path: Path) -> None:
    # numpy's own reconstructor asked for a 10^12-element array before any data is read
    evil = (b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
            b"\x8a\x06\x00\x10\xa5\xd4\xe8\x00\x85C\x01b\x87R.")
    make_cifar10(tmp_path, evil)
    refused(lambda: load("cifar10", "test", root=tmp_path), DataError, "refusing an ndarray of shape")


def test_cifar_malicious_pickle_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self) -> tuple:
            return (os.system, (f"touch {marker}",))

    make_cifar10(tmp_path, pickle.dumps({b"data": Evil(), b"labels": [0]}))
    refused(lambda: load("cifar10", "test", root=tmp_path), DataError, "refusing to load global")
    assert not marker.exists()


# ----------------------------------------------------------------------------- image folders


def test_400_megapixel_png_is_refused_from_its_header(tmp_path: Path) -> None:
    make_image_folder(tmp_path, {"dog/huge.png": png_header_only(20_000, 20_000)})
    assert (tmp_path / "dog" / "huge.png").stat().st_size < 200
    refused(lambda: load("imagefolder", "all", root=tmp_path), DataError,
            r"huge.png: image too large \(.*400000000 pixels.*\); the limit is 33,554,432 pixels")


def test_fifo_in_image_folder_is_refused_not_opened(tmp_path: Path) -> None:
    make_image_folder(tmp_path)
    os.mkfifo(tmp_path / "cat" / "x.png")
    outcome: list[BaseException] = []

    def target() -> None:
        try:
            load("imagefolder", "all", root=tmp_path)
        except BaseException as e:
            outcome.append(e)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(10)
    if t.is_alive():   # unblock the reader so that the test process can end, then fail
        with open(tmp_path / "cat" / "x.png", "wb"):
            pass
        pytest.fail("the loader blocked on a FIFO")
    assert len(outcome) == 1 and isinstance(outcome[0], DataError), outcome
    assert "x.png: not a regular file" in str(outcome[0]) and "\n" not in str(outcome[0])


def test_image_folder_total_size_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_image_folder(tmp_path)
    assert len(load("imagefolder", "all", root=tmp_path)) == 6
    monkeypatch.setenv("BASTION_MAX_DATA_BYTES", "2000")
    refused(lambda: load("imagefolder", "all", root=tmp_path), DataError, "6 images as float32 declares 2,592")
    monkeypatch.setenv("BASTION_MAX_IMAGE_PIXELS", "35")
    refused(lambda: load("imagefolder", "all", root=tmp_path), DataError, "6 x 6 pixels, outside 1..35")
    monkeypatch.setenv("BASTION_MAX_IMAGE_PIXELS", "many")
    with pytest.raises(ConfigError, match="BASTION_MAX_IMAGE_PIXELS"):
        load("imagefolder", "all", root=tmp_path)


# ----------------------------------------------------------------------------- CLI


@pytest.mark.parametrize("command", ["train", "audit"])
def test_cli_bomb_exits_2_with_one_line(command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        small_model: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from bastion.cli.main import run
    from bastion.models import save_classifier

    monkeypatch.chdir(tmp_path)
    bomb = tmp_path / "b.npz"
    bomb.write_bytes(zip_bomb_npz(128 << 20))
    if command == "train":
        argv = ["train", "--model", "mlp", "--data", "npz", "--root", str(bomb), "--out", "m.st"]
    else:
        ckpt = save_classifier(tmp_path / "s.st", small_model, dataset="mnist-5k")
        argv = ["audit", "--model", str(ckpt), "--data", "npz", "--root", str(bomb), "--out", "r"]
    t0 = time.process_time()
    assert run(argv) == 2
    assert time.process_time() - t0 < 10  # CPU seconds: the refusal comes before any decompression
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error:") == 1 and "decompression bomb" in " ".join(err.split())
    assert not (tmp_path / "m.st").exists()


def test_cifar_pickle_length_fields_cannot_allocate(tmp_path: Path) -> None:
    # BINBYTES promising 2 GiB in a 9-byte file: the C unpickler allocated it first (found by fuzzing)
    make_cifar10(tmp_path, b"B\x00\x00\x00\x80\x02}q\x00.")
    refused(lambda: load("cifar10", "test", root=tmp_path), DataError, "not a readable CIFAR python batch")
