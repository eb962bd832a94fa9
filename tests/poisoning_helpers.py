"""A small backdoored model shared by the poisoning and backdoor tests, trained once per
machine and cached in .cache/test-models (like conftest's trained models)."""

from __future__ import annotations

import fcntl
from pathlib import Path

import torch

from bastion.attacks.poisoning import PoisonResult, Trigger, badnets
from bastion.core import Classifier
from bastion.data import load
from bastion.models import build_classifier, load_classifier, save_classifier
from bastion.training import TrainConfig, fit

CACHE = Path(__file__).resolve().parents[1] / ".cache" / "test-models"
TARGET = 0
N_TRAIN = 2000
FRACTION = 0.05


def poisoned_train() -> PoisonResult:
    """BadNets, 3 x 3 pattern bottom-right, 5% of the first 2,000 mnist-5k training images -> class 0."""
    return badnets(load("mnist-5k", "train").take(N_TRAIN), FRACTION, target=TARGET, trigger=Trigger(), seed=0)


def backdoored_model() -> Classifier:
    path = CACHE / "backdoor-cnn-small-v2.st"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        with open(path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not path.exists():
                data = poisoned_train().data
                torch.manual_seed(0)
                clf = build_classifier("cnn-small", data.input_spec(), 10, device="cpu")
                fit(clf, data, None, TrainConfig(epochs=3, batch_size=32, seed=0, progress=False))
                save_classifier(path, clf, dataset="mnist-5k")
    return load_classifier(path, device="cpu")
