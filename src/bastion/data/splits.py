"""Seeded stratified train/test splitting."""

from __future__ import annotations

import numpy as np


def stratified_split(y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Shuffle within each class with `seed` and hold out `test_fraction` of each class.
    Returns (train_index, test_index), each shuffled across classes."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        k = round(len(idx) * test_fraction)
        test.append(idx[:k])
        train.append(idx[k:])
    tr, te = np.concatenate(train), np.concatenate(test)
    rng.shuffle(tr)
    rng.shuffle(te)
    return tr, te
