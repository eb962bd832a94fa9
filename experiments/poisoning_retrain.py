"""Targeted clean-label and dirty-label poisoning measured on retrained models, mnist-5k, cnn7:

- feature collision (Shafahi et al. 2018) against the transfer-learning victim (the clean
  model's feature extractor frozen, its last layer retrained on the poisoned set): success
  rate over target test images for 1, 5, 20 and 50 poisons, against the same retraining on
  the clean set;
- label flipping 7 -> 1 at p = 2%, 5% and 10% of the training set (p = 10% relabels
  nearly every 7): source-class recall and clean accuracy of a cnn7 trained from scratch.

    PYTHONPATH=src python experiments/poisoning_retrain.py [--targets 10] [--epochs 5]

Models are cached in .cache/poisoning-central/ (shared with poisoning_central.py)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

from bastion.attacks.poisoning import feature_collision, flip_labels, retrain_last_layer
from bastion.data import load
from bastion.fileio import atomic_write, strict_json
from bastion.metrics.poisoning import source_class_recall

sys.path.insert(0, str(Path(__file__).resolve().parent))
from poisoning_central import log, train


def collision(clf: Any, train_set: Any, test: Any, targets: int, budgets: list[int], steps: int) -> dict[str, Any]:
    pred = clf.predict(test.x).cpu()
    chosen = [int(i) for i in torch.nonzero(pred == test.y).flatten()[:targets]]
    clean_hits = []
    for j in chosen:
        base = int((test.y[j] + 1) % 10)
        clean_hits.append(int(retrain_last_layer(clf, train_set, seed=j).predict(test.x[j][None])[0]) == base)
    rows = []
    for n in budgets:
        hits, dist, secs = [], [], []
        for j in chosen:
            base = int((test.y[j] + 1) % 10)
            t = time.perf_counter()
            res = feature_collision(train_set, clf, test.x[j], base_class=base, n_poisons=n, steps=steps, seed=j)
            secs.append(time.perf_counter() - t)
            victim = retrain_last_layer(clf, res.data, seed=j)
            hits.append(int(victim.predict(test.x[j][None])[0]) == base)
            dist.append(res.record.extras["feature_distance_after"] / res.record.extras["feature_distance_before"])
        rows.append({"poisons": n, "share_of_training_set": n / len(train_set),
                     "success_rate": sum(hits) / len(hits), "hits": hits,
                     "feature_distance_ratio_mean": sum(dist) / len(dist),
                     "craft_seconds_mean": sum(secs) / len(secs)})
        log(f"feature collision {n} poisons: success {rows[-1]['success_rate']:.2f}")
    return {"targets": chosen, "base": "true label + 1", "steps": steps, "opacity": 0.3,
            "victim": "last layer retrained (Adam 0.01, 20 epochs), extractor frozen",
            "clean_retrain_success_rate": sum(clean_hits) / len(clean_hits), "budgets": rows}


def flipping(train_set: Any, test: Any, epochs: int, fractions: list[float]) -> list[dict[str, Any]]:
    rows = []
    clean, _ = train(train_set, test, "clean", epochs)
    rows.append({"fraction": 0.0, "flipped": 0, "clean_accuracy": clean.accuracy(test.x, test.y),
                 "source_recall": source_class_recall(clean, test.x, test.y, 7),
                 "source_to_target": float((clean.predict(test.x[test.y == 7]).cpu() == 1).float().mean())})
    for p in fractions:
        res = flip_labels(train_set, p, mode="source-target", source=7, target=1, seed=0)
        clf, _ = train(res.data, test, f"flip7to1-p{p}", epochs)
        rows.append({"fraction": p, "flipped": int(res.record.index.numel()),
                     "share_of_source_class": int(res.record.index.numel()) / int((train_set.y == 7).sum()),
                     "clean_accuracy": clf.accuracy(test.x, test.y),
                     "source_recall": source_class_recall(clf, test.x, test.y, 7),
                     "source_to_target": float((clf.predict(test.x[test.y == 7]).cpu() == 1).float().mean())})
        log(f"label flip p={p}: {rows[-1]}")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--targets", type=int, default=10)
    ap.add_argument("--budgets", default="1,5,20,50")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--fractions", default="0.02,0.05,0.1")
    ap.add_argument("--out", type=Path, default=Path("docs/results/poisoning_retrain.json"))
    args = ap.parse_args()
    train_set, test = load("mnist-5k", "train"), load("mnist-5k", "test")
    t0 = time.perf_counter()
    clf, _ = train(train_set, test, "clean", args.epochs)
    out: dict[str, Any] = {"command": "python experiments/poisoning_retrain.py " + " ".join(sys.argv[1:]),
                           "model": "cnn7", "epochs": args.epochs, "train_size": len(train_set),
                           "clean_accuracy": clf.accuracy(test.x, test.y)}
    out["label_flipping"] = flipping(train_set, test, args.epochs, [float(f) for f in args.fractions.split(",")])
    out["feature_collision"] = collision(clf, train_set, test, args.targets,
                                         [int(b) for b in args.budgets.split(",")], args.steps)
    out["wall_time_s"] = time.perf_counter() - t0
    atomic_write(args.out, strict_json(out))
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
