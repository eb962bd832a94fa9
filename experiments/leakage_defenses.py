"""Gradient defenses at increasing strength: CPL attack success rate and the cost to
model accuracy.

    .venv/bin/python experiments/leakage_defenses.py [--n 6] [--n-cnn 3] [--rounds 5]

ASR: CPL (patterned init, 30 L-BFGS iterations of up to 20 evaluations; success nmse < 0.7)
on single-example gradients of mnist-5k training images, for the untrained sigmoid LeNet
(U(-0.5, 0.5)) and cnn-small, with each defense applied to the shared gradient.
Accuracy: FedAvg of cnn-small (10 clients, all sampled, `--rounds` rounds, local SGD
lr 0.1, batch 16, 1 local epoch) with the same defense applied at every local SGD step
(per-example clipping + noise as a DP-SGD step). Writes docs/results/leakage_defenses.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from leakage_common import mean, save, victim

from bastion.attacks.privacy.leakage import CPLConfig, cpl_attack, shared_gradient
from bastion.data import load
from bastion.defenses.gradient import parse_defense
from bastion.federated import FedConfig, run_fedavg

LEVELS = {
    "none": ["none"],
    "noise": ["noise:0.0001", "noise:0.001", "noise:0.01", "noise:0.03", "noise:0.1"],
    "prune": ["prune:0.1", "prune:0.3", "prune:0.5", "prune:0.7", "prune:0.9", "prune:0.99"],
    "quant": ["quant:16", "quant:8", "quant:6", "quant:4", "quant:3", "quant:2"],
    "clip": ["clip:100,0", "clip:100,0.0001", "clip:100,0.001", "clip:4,0", "clip:4,0.01",
             "clip:1,0"],
}


def asr(model_name: str, spec: str, n: int, train) -> dict:
    clf = victim(model_name)
    fn = None if spec == "none" else parse_defense(spec)
    per = []
    for i in range(n):
        x, y = train.x[i:i + 1], train.y[i:i + 1]
        payload = shared_gradient(clf, x, y)
        if fn is not None:
            payload = fn(payload, seed=i)
        res = cpl_attack(clf, payload, CPLConfig(max_iter=30, seed=i), reference=x, reference_labels=y)
        per.append((bool(res.success[0]), float(res.mse[0]), float(res.nmse[0]), float(res.psnr[0]),
                    int(res.iterations_to_success[0]), res.label_accuracy))
    ok = [p for p in per if p[0]]
    return {"asr": len(ok) / n, "mse": mean([p[1] for p in per]), "nmse": mean([p[2] for p in per]),
            "psnr": mean([p[3] for p in per]),
            "iterations_to_success": mean([float(p[4]) for p in ok]),
            "label_accuracy": mean([p[5] for p in per])}


def accuracy(spec: str, rounds: int, train, test) -> float:
    clf = victim("cnn-small")
    cfg = FedConfig(num_clients=10, clients_per_round=10, rounds=rounds, local_lr=0.1,
                    local_batch_size=16, eval_every=rounds, seed=0)
    tf = None if spec == "none" else parse_defense(spec)
    return run_fedavg(clf, train, test, cfg, local_transform=tf).test_accuracy


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=6)
    ap.add_argument("--n-cnn", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    train, test = load("mnist-5k", "train"), load("mnist-5k", "test")
    out: dict = {"attack": "cpl patterned, 30 iterations", "success": "nmse < 0.7",
                 "accuracy": f"FedAvg cnn-small, 10 clients, {args.rounds} rounds", "rows": []}
    for family, specs in LEVELS.items():
        for spec in specs:
            t = time.perf_counter()
            row = {"family": family, "defense": spec,
                   "lenet-sigmoid": asr("lenet-sigmoid", spec, args.n, train),
                   "cnn-small": asr("cnn-small", spec, args.n_cnn, train),
                   "fedavg_accuracy": accuracy(spec, args.rounds, train, test)}
            row["seconds"] = time.perf_counter() - t
            out["rows"].append(row)
            print(spec, row["lenet-sigmoid"]["asr"], row["cnn-small"]["asr"], row["fedavg_accuracy"],
                  f"{row['seconds']:.0f}s", flush=True)
            save("leakage_defenses", out)
    print(save("leakage_defenses", out))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
