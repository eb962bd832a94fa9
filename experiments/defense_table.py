"""Evasion defenses against six attacks, undefended vs defended vs adaptive (the class
project's comparison table).

Victim: `--model cnn7` (5 epochs of plain training on mnist-5k, normalisation inside the
model, as in experiments/adv_training.py) or `--model cnn-small` (3 epochs, the test
suite's cached model); inputs: the first N mnist-5k test images. Every input transformation (sources' defaults) and every
detector (calibrated at 5% FPR on the last 1,000 training images, the binary detector
trained on the first 2,000; the L1 rule keeps its fixed bound 0.5) is run through
`bastion.audit.defense_section.evaluate_defense` against FGSM and PGD (Linf eps 0.3),
C&W-L2 and DeepFool (L2, evaluated at budget 2.0), Square (Linf eps 0.3) and HopSkipJump
(L2 budget 2.0), with a few hundred queries for the black-box ones. Each cell holds the
defended model's robust accuracy under the attack as run against the deployed defense,
and under the adaptive version (BPDA / EOT through `Preprocessed.adaptive()`,
detector-aware PGD for detectors); the undefended runs are shared by all defenses.

With `--trained`, two training-time defenses of the same architecture join the table:
PGD adversarial training (Madry et al. 2018: Linf eps 0.3, 10 steps, `--at-epochs` 35 with
eps ramped over the first 10 as in docs/results/adv_training.json; shorter runs ramp over
the first third) and defensive
distillation (Papernot et al. 2016: T = 100, teacher then student, lr 1e-2). They are
trained once and cached in .cache/experiments/. The plain attacks are their adaptive
evaluation: neither transforms the input.

Writes docs/results/defense_table.json (cnn-small) or defense_table_cnn7.json and prints the
markdown tables.

    python experiments/defense_table.py --model cnn7 --trained --at-epochs 12 --n 100 --threads 1
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

TRANSFORMS: list[tuple[str, dict[str, Any]]] = [
    ("bit-depth", {"bits": 1}), ("bit-depth", {"bits": 2}), ("median", {"kernel": 3}), ("mean", {"kernel": 3}),
    ("gaussian-blur", {"sigma": 1.0}), ("rotation", {"degrees": 12.0}),
    ("rotation", {"degrees": 12.0, "randomize": True}), ("jpeg", {"quality": 75}),
    ("gaussian-noise", {"sigma": 0.1}), ("tv", {}),
]
DETECTORS: list[tuple[str, dict[str, Any]]] = [("feature-squeezing", {}), ("l1", {}), ("binary", {})]
L2_BUDGET = 2.0


def attacks(queries: int) -> list[Any]:
    from bastion.audit.evasion_section import AttackSpec

    return [AttackSpec(attack="fgsm", eps=[0.3]),
            AttackSpec(attack="pgd", eps=[0.3], params={"steps": 20}),
            AttackSpec(attack="cw-l2", eps=[L2_BUDGET], params={"binary_search_steps": 4, "max_iter": 100,
                                                                "lr": 0.05, "initial_const": 0.1}),
            AttackSpec(attack="deepfool", eps=[L2_BUDGET]),
            AttackSpec(attack="square", eps=[0.3], params={"max_queries": queries}),
            AttackSpec(attack="hopskipjump", eps=[L2_BUDGET], params={"max_queries": queries})]


TRAINED: list[tuple[str, dict[str, Any]]] = [("pgd-at", {"eps": 0.3}), ("distillation", {"T": 100})]


def trained_defense(arch: str, name: str, train: Any, test: Any, args: Any) -> Any:
    """PGD adversarial training or defensive distillation of `arch`, trained once and cached."""
    from bastion.models import build_classifier, load_classifier, save_classifier
    from bastion.training import (
        DistillationConfig,
        PGDTraining,
        TrainConfig,
        adversarial_fit,
        defensive_distillation,
    )

    epochs = args.at_epochs if name == "pgd-at" else args.distill_epochs
    path = ROOT / ".cache" / "experiments" / f"{arch}-{name}-{epochs}ep.st"
    if path.is_file():
        return load_classifier(path, device="cpu")
    torch.manual_seed(0)
    build = lambda: build_classifier(arch, train.input_spec(), train.num_classes, device="cpu")  # noqa: E731
    if name == "pgd-at":
        clf = build()
        cfg = TrainConfig(epochs=epochs, batch_size=50, lr=1e-3, seed=0, schedule="cosine", progress=False)
        ramp = 10 if epochs >= 30 else max(1, epochs // 3)
        adversarial_fit(clf, train, test, PGDTraining(eps=0.3, steps=10, eps_ramp_epochs=ramp), cfg,
                        on_epoch=lambda row: print(json.dumps(row), flush=True))
    else:
        teacher, clf = build(), build()
        cfg = TrainConfig(epochs=epochs, batch_size=64, lr=1e-2, seed=0, progress=False)
        defensive_distillation(teacher, clf, train, test, DistillationConfig(temperature=100.0), cfg,
                               on_epoch=lambda row: print(json.dumps(row), flush=True))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_classifier(path, clf, dataset="mnist-5k")
    return clf


def label(name: str, params: dict[str, Any]) -> str:
    return f"{name}({', '.join(f'{k}={v}' for k, v in params.items())})" if params else name


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--queries", type=int, default=300, help="query budget of Square and HopSkipJump")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", default=None, help="comma-separated defense names to run (default: all); their "
                    "rows replace those of an existing results file")
    ap.add_argument("--model", choices=("cnn-small", "cnn7"), default="cnn-small")
    ap.add_argument("--trained", action="store_true", help="add PGD adversarial training and distillation rows")
    ap.add_argument("--at-epochs", type=int, default=35)
    ap.add_argument("--distill-epochs", type=int, default=10)
    ap.add_argument("--out", default=None, help="default: docs/results/defense_table[_cnn7].json")
    args = ap.parse_args()
    if args.out is None:
        args.out = str(ROOT / "docs" / "results" /
                       ("defense_table.json" if args.model == "cnn-small" else f"defense_table_{args.model}.json"))
    torch.set_num_threads(args.threads)
    os.environ.setdefault("BASTION_QUIET", "1")
    from bastion.audit.defense_section import evaluate_defense
    from bastion.core import seed_everything
    from bastion.data import load
    from bastion.defenses.preprocess import GradientMaskingWarning
    from bastion.defenses.saved import make_defense
    from conftest import _train_cached

    warnings.simplefilter("ignore", GradientMaskingWarning)
    seed_everything(0)
    model = (_train_cached("cnn-small", epochs=3) if args.model == "cnn-small"
             else _train_cached("cnn7", epochs=5, batch_size=32, normalize=True))
    train, test = load("mnist-5k", "train"), load("mnist-5k", "test")
    x, y = test.x[: args.n], test.y[: args.n]
    specs = attacks(args.queries)
    memo: dict[str, Any] = {}

    def step(key: str, fn: Any) -> Any:
        # the undefended runs and clean predictions do not depend on the defense: share them
        shared = key.split("/", 1)[1] if key.endswith("/undefended") else key
        if shared not in memo:
            memo[shared] = json.loads(json.dumps(fn()))
        return memo[shared]

    only = set(args.only.split(",")) if args.only else None
    results = []
    trained = TRAINED if args.trained else []
    for name, params in TRANSFORMS + DETECTORS + trained:
        if only and name not in only:
            continue
        start = time.perf_counter()
        seed_everything(0)
        if (name, params) in trained:
            defended = trained_defense(args.model, name, train, test, args)
        else:
            defended = make_defense(model, name, params, train, seed=0)
        res = evaluate_defense(model, defended, specs, x, y, seed=0, batch_size=250, step=step,
                               key=label(name, params), adaptive={"steps": 40})
        kind = ("training" if (name, params) in trained else defended.meta["defended"]["kind"]
                if "defended" in defended.meta else "detector")
        rec = {"defense": label(name, params), "kind": kind, "clean": res["clean"], "rows": res["rows"],
               "seconds": round(time.perf_counter() - start, 1)}
        if kind == "training":
            rec["training"] = defended.meta.get("defense")
        results.append(rec)
        print(json.dumps({"defense": rec["defense"], "seconds": rec["seconds"],
                          "cells": {r["attack"]: [r["robust_defended"], r["robust_adaptive"]] for r in rec["rows"]}}),
              flush=True)
    undefended = {r["attack"]: r["robust_undefended"] for r in results[0]["rows"]} if results else {}
    about = ("cnn-small, 3 epochs on mnist-5k (the test suite's cached model)" if args.model == "cnn-small"
             else "cnn7, 5 epochs on mnist-5k")
    out = {"model": about, "n": args.n,
           "budgets": {"linf": 0.3, "l2": L2_BUDGET}, "queries": args.queries,
           "attacks": [s.model_dump() for s in specs], "undefended_clean_accuracy":
           results[0]["clean"]["undefended_accuracy"] if results else None,
           "undefended_robust_accuracy": undefended, "threads": args.threads, "torch": torch.__version__,
           "python": platform.python_version(), "defenses": results}
    path = Path(args.out)
    if only and path.is_file():  # refresh the named defenses' rows in the existing table
        old = json.loads(path.read_text())
        fresh = {d["defense"]: d for d in results}
        old["defenses"] = [fresh.pop(d["defense"], d) for d in old["defenses"]] + list(fresh.values())
        out = {**out, "defenses": old["defenses"], "undefended_robust_accuracy": old["undefended_robust_accuracy"],
               "undefended_clean_accuracy": old["undefended_clean_accuracy"]}
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(markdown(out))


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.0%}"


def markdown(out: dict[str, Any]) -> str:
    """Robust accuracy per defense and attack: 'plain / adaptive' (adaptive only where the
    defense calls for one), then the PGD success-rate differences with their intervals."""
    names = [s["attack"] for s in out["attacks"]]
    lines = ["| defense | clean | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    u = out["undefended_robust_accuracy"]
    lines.append(f"| none | {_pct(out['undefended_clean_accuracy'])} | " + " | ".join(_pct(u.get(a)) for a in names)
                 + " |")
    for d in out["defenses"]:
        cells = []
        by = {r["attack"]: r for r in d["rows"]}
        for a in names:
            r = by.get(a)
            if r is None:
                cells.append("-")
                continue
            cell = _pct(r["robust_defended"])
            if r["robust_adaptive"] is not None:
                cell += f" / **{_pct(r['robust_adaptive'])}**"
            cells.append(cell)
        lines.append(f"| `{d['defense']}` | {_pct(d['clean']['defended_accuracy'])} | " + " | ".join(cells) + " |")
    lines += ["", "| defense | PGD ASR undefended | defended | diff [95% CI] | adaptive | diff [95% CI] |",
              "|---|---|---|---|---|---|"]
    for d in out["defenses"]:
        r = next((r for r in d["rows"] if r["attack"] == "pgd"), None)
        if r is None:
            continue

        def diff(tag: str, r: dict[str, Any] = r) -> str:
            if r.get(tag) is None:
                return "-"
            lo, hi = r[f"{tag}_ci"]
            return f"{r[tag]:+.2f} [{lo:+.2f}, {hi:+.2f}]"

        lines.append(f"| `{d['defense']}` | {_pct(r['asr_undefended'])} | {_pct(r['asr_defended'])} | "
                     f"{diff('asr_diff')} | {_pct(r['asr_adaptive'])} | {diff('asr_diff_adaptive')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
