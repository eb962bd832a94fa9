"""PGD adversarial training of cnn7 on mnist-5k at Linf eps 0.3, evaluated under PGD-40.

Trains cnn7 (normalisation inside the model, as `bastion train` builds it) with
`adversarial_fit(..., PGDTraining(eps=0.3, steps=K, eps_ramp_epochs=R))`, then measures
clean accuracy on the whole mnist-5k test split and PGD-40 robust accuracy (Linf, random
start, step eps / 30) on the first N test images at eps 0.1, 0.2 and 0.3. The undefended
cnn7 of the test suite (5 epochs of plain training) is attacked the same way for
comparison. With --ensemble M, the worst case over APGD-CE and APGD-T (`autoattack`
without the Square stage) is run on the first M images at eps 0.3 as well.
Writes docs/results/adv_training.json.

    python experiments/adv_training.py --threads 1 --epochs 20 --steps 10 --ramp 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

BUDGETS = (0.1, 0.2, 0.3)


def robust(model: Any, x: torch.Tensor, y: torch.Tensor, eps: float) -> dict[str, float]:
    from bastion.attacks.evasion import PGD
    res = PGD(eps=eps, steps=40, seed=0)(model, x, y)
    return {"eps": eps, "robust_accuracy": res.robust_accuracy, "wall_time_s": res.wall_time}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--ramp", type=int, default=5, help="epochs of the linear eps ramp")
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--eps", type=float, default=0.3)
    ap.add_argument("--n", type=int, default=500, help="test images attacked")
    ap.add_argument("--ensemble", type=int, default=0, help="images for the APGD worst case")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "docs" / "results" / "adv_training.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("BASTION_QUIET", "1")
    from bastion.attacks.evasion.ensemble import AutoAttack
    from bastion.data import load
    from bastion.models import build_classifier
    from bastion.models.checkpoint import library_versions
    from bastion.training import PGDTraining, TrainConfig, adversarial_fit
    from conftest import _train_cached

    train, test = load("mnist-5k", "train"), load("mnist-5k", "test")
    x, y = test.x[: args.n], test.y[: args.n]

    undefended = _train_cached("cnn7", epochs=5, batch_size=32, normalize=True)
    base = {"clean_accuracy": undefended.accuracy(test.x, test.y),
            "pgd40": [robust(undefended, x, y, e) for e in BUDGETS]}
    print("undefended", json.dumps(base))

    torch.manual_seed(args.seed)
    clf = build_classifier("cnn7", train.input_spec(), train.num_classes, device="cpu")
    defense = PGDTraining(eps=args.eps, steps=args.steps, eps_ramp_epochs=args.ramp)
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                      progress=False)
    res = adversarial_fit(clf, train, test, defense, cfg,
                          on_epoch=lambda row: print(json.dumps(row), flush=True))
    defended: dict[str, Any] = {"clean_accuracy": res.test_accuracy,
                                "train_time_s": res.wall_time,
                                "pgd40": [robust(clf, x, y, e) for e in BUDGETS]}
    if args.ensemble:
        xe, ye = test.x[: args.ensemble], test.y[: args.ensemble]
        start = time.perf_counter()
        worst = AutoAttack(eps=args.eps, attacks=("apgd-ce", "apgd-t"), seed=0)(clf, xe, ye)
        defended["apgd_worst_case"] = {"eps": args.eps, "n": args.ensemble,
                                       "robust_accuracy": worst.robust_accuracy,
                                       "wall_time_s": time.perf_counter() - start}
    print("defended", json.dumps(defended))
    out = {"model": "cnn7", "data": "mnist-5k", "n_train": len(train), "n_attacked": args.n,
           "defense": res.defense, "training": res.config, "history": res.history,
           "undefended": base, "defended": defended,
           "evaluation": "PGD-40 Linf, random start, step eps/30, first n test images; "
                         "clean accuracy on the whole test split",
           "threads": args.threads, "machine": platform.processor() or platform.machine(),
           "versions": library_versions()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
