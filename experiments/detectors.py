"""Evasion detectors against fixed attacks and against a detector-aware attack.

Victim: cnn-small trained 3 epochs on mnist-5k (the test suite's cached model). Benign
calibration set: the first 500 mnist-5k test images (thresholds at a 5% false-positive
rate; the L1 rule also with its fixed attack-independent bound 0.5). Attack set: the first
N correctly classified test images after those. The binary detector is trained on FGSM
(eps 0.3) examples of the first 2000 training images, 3 epochs. Attacks, one budget each:
FGSM Linf eps 0.3; PGD-40 Linf eps 0.3 (alpha 0.01, random start); C&W L2 (fast preset:
5 binary steps x 100 iterations); DeepFool L2 (overshoot 0.02, 50 iterations). A detector
does not change predictions, so these attacks are run once on the model and every
detector screens the same adversarial inputs. Then, per detector, the detector-aware PGD
of Carlini & Wagner (2017) (Linf eps 0.3, 100 steps, lambda 1, BPDA through
non-differentiable transforms). Reported per pair: attack success rate, detection rate
(flagged among successful adversarial inputs), benign false-positive rate, robust accuracy
and robust accuracy with reject (correct or flagged), with 95% Wilson intervals in the
JSON. Writes docs/results/detectors.json and prints a markdown table.

    python experiments/detectors.py --n 200 --threads 1
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--adaptive-steps", type=int, default=100)
    ap.add_argument("--out", default=str(ROOT / "docs" / "results" / "detectors.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("BASTION_QUIET", "1")
    from bastion.attacks.evasion import FGSM, PGD, CarliniWagnerL2, DeepFool
    from bastion.core import seed_everything
    from bastion.data import load
    from bastion.defenses.detect import (
        BinaryConfig,
        BinaryDetector,
        Detected,
        DetectorAwarePGD,
        FeatureSqueezing,
        L1Detector,
        evaluate_detection,
    )
    from bastion.fileio import atomic_write, strict_json
    from conftest import _train_cached

    seed_everything(0)
    model = _train_cached("cnn-small", epochs=3)
    train, test = load("mnist-5k", "train"), load("mnist-5k", "test")
    cal = test.x[:500]
    rest_x, rest_y = test.x[500:], test.y[500:]
    keep = torch.nonzero(model.predict(rest_x) == rest_y).flatten()[: args.n]
    x, y = rest_x[keep], rest_y[keep]

    start = time.perf_counter()
    fs = FeatureSqueezing(model)
    fs.calibrate(cal)
    l1_fixed = L1Detector(model)
    l1_cal = L1Detector(model)
    l1_cal.calibrate(cal)
    binary = BinaryDetector(model, BinaryConfig(epochs=3))
    binary.fit(train.x[:2000], train.y[:2000])
    binary.calibrate(cal)
    detectors = {"feature-squeezing": fs, "binary (FGSM-trained)": binary,
                 "l1 (fixed bound 0.5)": l1_fixed, "l1 (calibrated)": l1_cal}
    setup_s = round(time.perf_counter() - start, 1)

    attacks = {"fgsm eps=0.3": FGSM(eps=0.3),
               "pgd-40 eps=0.3": PGD(eps=0.3, steps=40, alpha=0.01, seed=0),
               "cw-l2 (fast)": CarliniWagnerL2.fast(),
               "deepfool-l2": DeepFool()}
    rows: list[dict[str, Any]] = []

    def record(det_name: str, att_name: str, screened: Detected, res: Any, secs: float) -> None:
        m = evaluate_detection(screened, x, res.x_adv, y, res.success)
        l2 = float(res.norms["l2"].mean())
        row = {"detector": det_name, "attack": att_name, **m.summary(),
               "mean_l2": round(l2, 3), "seconds": round(secs, 1), "intervals": m.to_dict()}
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "intervals"}), flush=True)

    for att_name, attack in attacks.items():
        t0 = time.perf_counter()
        res = attack(model, x, y)
        secs = time.perf_counter() - t0
        for det_name, det in detectors.items():
            record(det_name, att_name, Detected(model, det), res, secs)
    for det_name, det in detectors.items():
        screened = Detected(model, det)
        t0 = time.perf_counter()
        res = DetectorAwarePGD(eps=0.3, steps=args.adaptive_steps, lam=1.0)(screened, x, y)
        record(det_name, f"detector-aware pgd-{args.adaptive_steps} eps=0.3", screened, res,
               time.perf_counter() - t0)

    out = {"model": "cnn-small, 3 epochs on mnist-5k", "n": int(x.shape[0]),
           "inputs": "correctly classified mnist-5k test images 500+",
           "calibration": "first 500 mnist-5k test images, fpr 0.05",
           "detectors": {k: d.describe() for k, d in detectors.items()},
           "setup_seconds": setup_s, "threads": args.threads, "torch": torch.__version__,
           "python": platform.python_version(), "rows": rows}
    atomic_write(args.out, strict_json(out) + "\n")
    print("| detector | attack | ASR | detection | FPR | robust acc | with reject |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['detector']} | {r['attack']} | {r['attack_success_rate']:.1%} | "
              f"{r['detection_rate']:.1%} | {r['false_positive_rate']:.1%} | "
              f"{r['robust_accuracy']:.1%} | {r['robust_accuracy_with_reject']:.1%} |")


if __name__ == "__main__":
    main()
