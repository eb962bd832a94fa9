"""The obfuscated-gradients lesson on input transformations (Athalye et al. 2018).

Victim: cnn-small trained 3 epochs on mnist-5k (the test suite's cached model); inputs:
the first N mnist-5k test images. For the undefended model and each transform (sources'
defaults): clean accuracy, robust accuracy under plain PGD-40 (Linf eps 0.3, alpha 0.01,
random start) run against the defended model itself, and under the same PGD run against
the adaptive surrogate `Preprocessed.adaptive()` (BPDA for non-differentiable transforms,
EOT over 10 draws for random ones). Robust accuracy is always scored on the defended
model; for random defenses it is the mean over 5 draws. Writes
docs/results/defenses_preprocess.json and prints a markdown table.

    python experiments/defenses_preprocess.py --n 200 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def defenses() -> list[Any]:
    from bastion.defenses.preprocess import (
        JPEG,
        BitDepth,
        Chain,
        GaussianBlur,
        GaussianNoise,
        MeanFilter,
        MedianFilter,
        NonLocalMeans,
        Rotation,
        TVMinimization,
    )
    return [None, BitDepth(1), BitDepth(2), MedianFilter(3), MeanFilter(3), GaussianBlur(1.0),
            Rotation(12.0), Rotation(12.0, randomize=True), NonLocalMeans(), JPEG(75), JPEG(25),
            GaussianNoise(0.1), TVMinimization(), Chain((GaussianNoise(0.1), BitDepth(2)))]


def label(t: Any) -> str:
    if t is None:
        return "none"
    if t.name == "chain":
        return " + ".join(label(m) for m in t.transforms)
    params = ", ".join(f"{k}={v}" for k, v in t.params().items())
    return f"{t.name}({params})"


def score(model: Any, x: torch.Tensor, y: torch.Tensor, draws: int) -> float:
    return sum(model.accuracy(x, y) for _ in range(draws)) / draws


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--eps", type=float, default=0.3)
    ap.add_argument("--out", default=str(ROOT / "docs" / "results" / "defenses_preprocess.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("BASTION_QUIET", "1")
    from bastion.attacks.evasion import PGD
    from bastion.core import seed_everything
    from bastion.data import load
    from bastion.defenses.preprocess import GradientMaskingWarning, Preprocessed
    from conftest import _train_cached

    seed_everything(0)
    model = _train_cached("cnn-small", epochs=3)
    test = load("mnist-5k", "test")
    x, y = test.x[: args.n], test.y[: args.n]
    attack = PGD(eps=args.eps, steps=40, alpha=0.01, seed=0)
    rows = []
    warnings.simplefilter("ignore", GradientMaskingWarning)
    for t in defenses():
        seed_everything(0)
        start = time.perf_counter()
        defended = model if t is None else Preprocessed(model, t)
        draws = 5 if t is not None and t.random else 1
        clean = score(defended, x, y, draws)
        plain = score(defended, attack(defended, x, y).x_adv, y, draws)
        surrogate = "none needed"
        adaptive_acc = plain
        if t is not None and defended.masks_gradients:
            parts = (["BPDA"] if not t.differentiable else []) + (["EOT-10"] if t.random else [])
            surrogate = " + ".join(parts)
            adaptive_acc = score(defended, attack(defended.adaptive(), x, y).x_adv, y, draws)
        row = {"defense": label(t), "differentiable": None if t is None else t.differentiable,
               "random": None if t is None else t.random, "clean_accuracy": clean,
               "pgd_robust_accuracy": plain, "adaptive": surrogate,
               "adaptive_robust_accuracy": adaptive_acc,
               "seconds": round(time.perf_counter() - start, 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    out = {"model": "cnn-small, 3 epochs on mnist-5k", "n": args.n, "eps": args.eps,
           "attack": "PGD-40 Linf, alpha 0.01, random start, seed 0",
           "threads": args.threads, "torch": torch.__version__, "python": platform.python_version(),
           "rows": rows}
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print("| defense | differentiable | random | clean | PGD | attack-time surrogate | PGD through it | s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        yn = {True: "yes", False: "no", None: "-"}
        print(f"| `{r['defense']}` | {yn[r['differentiable']]} | {yn[r['random']]} | "
              f"{r['clean_accuracy']:.1%} | {r['pgd_robust_accuracy']:.1%} | {r['adaptive']} | "
              f"{r['adaptive_robust_accuracy']:.1%} | {r['seconds']} |")


if __name__ == "__main__":
    main()
