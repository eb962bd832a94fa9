"""`load(name, split=..., root=...)`: one entry point for every data set.

Embedded (no files needed): mnist-5k, digits. On disk (pass root=): mnist,
fashion-mnist, cifar10, cifar100, imagefolder, npz (root = the .npz file).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from bastion.core import ConfigError, unknown_name
from bastion.data import embedded, formats
from bastion.data.dataset import Dataset

DIGITS = [str(i) for i in range(10)]


def _needs_root(name: str, root: str | Path | None) -> Path:
    if root is None:
        raise ConfigError(f"data set {name!r} is read from disk: pass root=PATH (--root on the CLI)")
    return Path(root).expanduser()


LOADERS: dict[str, Callable[..., Dataset]] = {
    "mnist-5k": lambda split, root, **kw: embedded.load_mnist_5k(split, **kw),
    "digits": lambda split, root, **kw: embedded.load_digits(split, **kw),
    "mnist": lambda split, root, **kw: formats.load_idx_pair(_needs_root("mnist", root), split,
                                                             "mnist", DIGITS),
    "fashion-mnist": lambda split, root, **kw: formats.load_idx_pair(
        _needs_root("fashion-mnist", root), split, "fashion-mnist", formats.FASHION_NAMES),
    "cifar10": lambda split, root, **kw: formats.load_cifar(_needs_root("cifar10", root), split),
    "cifar100": lambda split, root, **kw: formats.load_cifar(_needs_root("cifar100", root), split,
                                                             hundred=True, **kw),
    "imagefolder": lambda split, root, **kw: formats.load_image_folder(
        _needs_root("imagefolder", root), split, **kw),
    "npz": lambda split, root, **kw: formats.load_npz(_needs_root("npz", root), split, **kw),
}
EMBEDDED = ("mnist-5k", "digits")


def names() -> list[str]:
    return sorted(LOADERS)


def load(name: str, split: str = "train", root: str | Path | None = None, **kwargs: Any) -> Dataset:
    """Load a data set by name. `split` is 'train', 'test' (or 'all' where defined).
    Extra keyword arguments go to the loader (e.g. seed=, size=)."""
    key = name.lower()
    if key not in LOADERS:
        if Path(name).suffix == ".npz":
            return formats.load_npz(Path(name), split, **kwargs)
        raise unknown_name("data set", name, names())
    return LOADERS[key](split, root, **kwargs)
