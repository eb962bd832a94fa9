"""Shared set-up for the gradient-leakage experiments (experiments/leakage_*.py)."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

import torch

from bastion.attacks.privacy.leakage import uniform_init_
from bastion.core import Classifier, InputSpec
from bastion.models import build_classifier

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"

# The two victims of the issue: the sigmoid LeNet of DLG/CPL (pool-free 'dlg' variant,
# U(-0.5, 0.5) weights as in their reference code) and cnn-small (ReLU + max-pool,
# PyTorch default initialisation). Both untrained: the leak is taken at the first
# training iteration, as in the dissertation's Table 4.3.
MODELS = {
    "lenet-sigmoid": ("lenet", {"activation": "sigmoid", "variant": "dlg"}, True),
    "cnn-small": ("cnn-small", {}, False),
}


def victim(name: str, seed: int = 0) -> Classifier:
    arch, args, uniform = MODELS[name]
    torch.manual_seed(seed)
    clf = build_classifier(arch, InputSpec((1, 28, 28)), 10, args, device="auto")
    return uniform_init_(clf, seed=seed) if uniform else clf


def save(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {**payload, "env": {"torch": torch.__version__, "python": platform.python_version(),
                                  "threads": torch.get_num_threads(),
                                  "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=float))
    return path


def mean(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None
