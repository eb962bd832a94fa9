"""Shared fixtures: embedded data and trained models cached on disk (.cache/test-models),
so the suite trains each small model once per machine, not once per test."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from bastion.core import Classifier, InputSpec
from bastion.data import Dataset, load
from bastion.models import build_classifier, load_classifier, save_classifier
from bastion.training import TrainConfig, fit

os.environ.setdefault("BASTION_QUIET", "1")
CACHE = Path(__file__).resolve().parents[1] / ".cache" / "test-models"


def _share_cores_between_workers() -> None:
    """Under pytest-xdist each worker takes its share of the cores. Torch's default (all
    cores in every worker) oversubscribes them, and the spinning intra-op threads made
    latency-bound loops (universal perturbations, C&W, the tutorial run) up to 10x slower
    than in a lone process."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        from bastion.threads import cores

        torch.set_num_threads(max(1, cores() // workers))


_share_cores_between_workers()


@pytest.fixture(scope="session")
def mnist_train() -> Dataset:
    return load("mnist-5k", "train")


@pytest.fixture(scope="session")
def mnist_test() -> Dataset:
    return load("mnist-5k", "test")


def _train_cached(arch: str, data: str = "mnist-5k", epochs: int = 3, batch_size: int = 32,
                  seed: int = 0, n_train: int | None = None, normalize: bool = False,
                  **arch_args: Any) -> Classifier:
    key = json.dumps({"arch": arch, "data": data, "epochs": epochs, "bs": batch_size, "seed": seed,
                      "n": n_train, "args": arch_args, "v": 1,
                      **({"norm": True} if normalize else {})}, sort_keys=True)
    path = CACHE / f"{arch}-{hashlib.sha1(key.encode()).hexdigest()[:12]}.st"
    if path.exists():
        return load_classifier(path, device="cpu")
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:  # parallel test workers train each model once
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.exists():
            _train_to(path, arch, data, epochs, batch_size, seed, n_train, normalize, arch_args)
    return load_classifier(path, device="cpu")


def _train_to(path: Path, arch: str, data: str, epochs: int, batch_size: int, seed: int, n_train: int | None,
              normalize: bool, arch_args: dict[str, Any]) -> None:
    train, test = load(data, "train"), load(data, "test")
    if n_train is not None:
        train = train.take(n_train)
    torch.manual_seed(seed)
    spec = train.input_spec() if normalize else InputSpec(train.input_shape)
    clf = build_classifier(arch, spec, train.num_classes, arch_args, device="cpu")
    res = fit(clf, train, test, TrainConfig(epochs=epochs, batch_size=batch_size, seed=seed, progress=False))
    save_classifier(path, clf, dataset=data, test_accuracy=res.test_accuracy, seed=seed)


@pytest.fixture(scope="session")
def trained_model() -> Callable[..., Classifier]:
    """Factory: trained_model('cnn-small', epochs=3, activation='sigmoid') -> Classifier
    (cached on disk across runs; a fresh copy is loaded each call, so tests may mutate it)."""
    return _train_cached


@pytest.fixture(scope="session")
def small_model() -> Classifier:
    """cnn-small trained 3 epochs on mnist-5k (~93% test accuracy): the default victim."""
    return _train_cached("cnn-small", epochs=3)


@pytest.fixture(scope="session")
def correct_batch(small_model: Classifier, mnist_test: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """The first 64 test images the small model classifies correctly."""
    pred = small_model.predict(mnist_test.x)
    idx = torch.nonzero(pred == mnist_test.y).flatten()[:64]
    return mnist_test.x[idx], mnist_test.y[idx]


@pytest.fixture(scope="module")
def one_thread():
    """Tiny-model inversion is latency-bound: one intra-op thread avoids contention.
    Use with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
