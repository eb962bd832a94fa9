# Backdoor-scan benchmark (see the docstring).
"""Neural Cleanse wall time for all classes: Bastion's batched optimisation (every class's
mask and pattern stacked, one forward pass per mini-batch for all classes) against the
per-class loop of Wang et al.'s released code and ART's `KerasNeuralCleanse` (one
optimisation per class, one after the other; re-implemented here with the same optimiser,
schedule and settings by running Bastion's optimiser on one class at a time). Both must
flag the same class.

ART's `NeuralCleanse` (art.defences.transformer.poisoning) accepts only Keras classifiers,
so it cannot run on a PyTorch model; the benchmark records that. Where ART is importable,
it also times ART's `ActivationDefence` and `SpectralSignatureDefense` (both accept a
`PyTorchClassifier`) against Bastion's activation clustering and spectral signatures on
the same model and poisoned data, with the recall of the poisoned indices.

    python benchmarks/poisoning.py [--checkpoint CKPT] [--epochs 5] [--rounds 1] [--threads 2]

The model is a cnn7 trained on mnist-5k with 5% BadNets poisons (target 0, a 4 x 4 square), from the
experiment's cache (.cache/poisoning-central) when present, else trained here (3 epochs).
Writes benchmarks/results/poisoning.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from bastion.attacks.poisoning import Trigger, badnets
from bastion.core import InputSpec
from bastion.data import load
from bastion.defenses.backdoor import (
    ActivationClusteringConfig,
    NeuralCleanseConfig,
    activation_clustering,
    neural_cleanse,
    spectral_signatures,
)
from bastion.defenses.backdoor.neural_cleanse import reverse_triggers
from bastion.metrics.poisoning import anomaly_index, detection_scores
from bastion.models import build_classifier, load_classifier
from bastion.training import TrainConfig, fit


def model_for(args: argparse.Namespace, poisoned: Any) -> Any:
    if args.checkpoint:
        return load_classifier(args.checkpoint, device="cpu")
    cached = sorted(Path(".cache/poisoning-central").glob("cnn7-badnets5-*.st"), key=lambda p: p.stat().st_mtime)
    if cached:
        return load_classifier(cached[-1], device="cpu")
    torch.manual_seed(0)
    clf = build_classifier("cnn7", InputSpec(poisoned.input_shape), 10, device="cpu")
    fit(clf, poisoned, None, TrainConfig(epochs=3, batch_size=64, progress=False))
    return clf


def per_class_loop(clf: Any, x: torch.Tensor, cfg: NeuralCleanseConfig) -> dict[str, Any]:
    """Wang et al.'s / ART's structure: one optimisation per class, one after the other."""
    t = time.perf_counter()
    masks = []
    for k in range(clf.num_classes):
        _, m, _, _, _ = reverse_triggers(clf, x, replace(cfg, classes=(k,), seed=cfg.seed + k), progress=False)
        masks.append(m[0])
    l1 = torch.stack(masks).flatten(1).sum(1)
    anom = anomaly_index(l1)
    med = l1.double().quantile(0.5)
    flagged = [k for k in range(len(l1)) if float(anom[k]) > cfg.anomaly_threshold and float(l1[k]) < med]
    return {"wall_s": time.perf_counter() - t, "l1": l1.tolist(), "anomaly": anom.tolist(), "flagged": flagged,
            "smallest": int(l1.argmin())}


def art_detectors(clf: Any, data: Any, index: torch.Tensor) -> dict[str, Any]:
    try:
        import numpy as np
        from art.defences.detector.poison import ActivationDefence, SpectralSignatureDefense
        from art.estimators.classification import PyTorchClassifier
    except ImportError as e:
        return {"skipped": f"ART not importable ({e})"}
    est = PyTorchClassifier(clf, loss=torch.nn.CrossEntropyLoss(), input_shape=tuple(data.input_shape),
                            nb_classes=10, clip_values=(0.0, 1.0), device_type="cpu")
    x = data.x.numpy()
    y = np.eye(10)[data.y.numpy()]
    out: dict[str, Any] = {}
    t = time.perf_counter()
    ad = ActivationDefence(est, x, y)
    _, clean = ad.detect_poison(nb_clusters=2, nb_dims=10, reduce="PCA")
    out["activation_defence"] = {"wall_s": time.perf_counter() - t,
                                 **detection_scores(np.flatnonzero(np.array(clean) == 0).tolist(), index, len(x))}
    t = time.perf_counter()
    share = len(index) / int((data.y == 0).sum())
    sd = SpectralSignatureDefense(est, x, y, batch_size=256, eps_multiplier=1.5, expected_pp_poison=share)
    _, clean = sd.detect_poison()
    out["spectral_signature_defense"] = {"wall_s": time.perf_counter() - t,
                                         **detection_scores(np.flatnonzero(np.array(clean) == 0).tolist(), index,
                                                            len(x))}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--epochs", type=int, default=5, help="Neural Cleanse epochs of 10 mini-batches")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--trigger", default="square", help="the experiment's trigger (square, 4 px)")
    ap.add_argument("--trigger-size", type=int, default=4)
    ap.add_argument("--out", default="benchmarks/results/poisoning.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tr, te = load("mnist-5k", "train"), load("mnist-5k", "test")
    pz = badnets(tr, 0.05, target=0, trigger=Trigger(kind=args.trigger, size=args.trigger_size), seed=0)
    clf = model_for(args, pz.data)
    x = te.x[:300]
    cfg = NeuralCleanseConfig(epochs=args.epochs, early_stop_patience=10**4)   # fixed work: no early stop
    batched, loop = [], []
    for _ in range(args.rounds):
        r = neural_cleanse(clf, x, cfg, progress=False)
        batched.append({"wall_s": r.wall_time, "flagged": r.flagged, "smallest": int(r.l1.argmin()),
                        "anomaly": r.anomaly.tolist(), "l1": r.l1.tolist()})
        loop.append(per_class_loop(clf, x, cfg))
    tb = statistics.median(b["wall_s"] for b in batched)
    tl = statistics.median(b["wall_s"] for b in loop)
    t = time.perf_counter()
    ac = activation_clustering(clf, pz.data.x, pz.data.y, ActivationClusteringConfig(reducer="pca"))
    ac_s = time.perf_counter() - t
    share = pz.record.n_poisoned / int((pz.data.y == 0).sum())
    t = time.perf_counter()
    sp = spectral_signatures(clf, pz.data.x, pz.data.y, eps=share)
    sp_s = time.perf_counter() - t
    res = {
        "setup": {"model": "cnn7", "data": "mnist-5k", "poison": f"badnets p=0.05 target 0, {args.trigger} {args.trigger_size}px", "nc_epochs": args.epochs,
                  "steps_per_epoch": cfg.steps_per_epoch, "batch_size": cfg.batch_size, "clean_inputs": len(x),
                  "threads": args.threads, "rounds": args.rounds, "platform": platform.platform(),
                  "torch": torch.__version__},
        "neural_cleanse_batched": batched, "neural_cleanse_per_class_loop": loop,
        "speedup_batched_vs_loop": tl / tb,
        "same_smallest_class": batched[0]["smallest"] == loop[0]["smallest"],
        "art_neural_cleanse": "not run: art.defences.transformer.poisoning.NeuralCleanse accepts only KerasClassifier "
                              "(it raises NotImplementedError for other estimators) and TensorFlow is not installed",
        "bastion_activation_clustering": {"wall_s": ac_s,
                                          **detection_scores(ac["flagged_index"], pz.record.index, len(tr))},
        "bastion_spectral": {"wall_s": sp_s, **detection_scores(sp["flagged_index"], pz.record.index, len(tr))},
        "art": art_detectors(clf, pz.data, pz.record.index),
    }
    print(f"Neural Cleanse, all 10 classes, {args.epochs} epochs: batched {tb:.1f} s, per-class loop {tl:.1f} s, "
          f"ratio {tl / tb:.2f}x; smallest-trigger class {batched[0]['smallest']} vs {loop[0]['smallest']}")
    for k in ("bastion_activation_clustering", "bastion_spectral"):
        print(f"{k}: {res[k]['wall_s']:.2f} s, recall {res[k]['recall']:.3f}, precision {res[k]['precision']:.3f}")
    for k, v in res["art"].items():
        print(f"art {k}: {v}" if isinstance(v, str) else
              f"art {k}: {v['wall_s']:.2f} s, recall {v['recall']:.3f}, precision {v['precision']:.3f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
