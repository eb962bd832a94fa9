"""ASR versus iteration cap for CPL with patterned versus random initialisation
(dissertation Table 5.1), and the non-private leakage row of Table 4.3.

    .venv/bin/python experiments/leakage_init.py [--n 20] [--n-cnn 10]

Victims: untrained sigmoid LeNet ('lenet', variant='dlg', U(-0.5, 0.5) weights) and
cnn-small (ReLU, default initialisation), gradients of single training examples of
mnist-5k (batch 1). One CPL run per example with the largest cap records after every
iteration whether the reconstruction is under the success threshold (nmse < 0.7), so the
ASR at caps 10/20/30/50/100/300 all come from the same runs, as if each had been stopped
at the cap. Two iteration conventions: one L-BFGS step of up to 20 function evaluations
(the DLG/CPL reference code) and one evaluation per iteration (lbfgs_inner=1).
Writes docs/results/leakage_init.json.
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

CAPS = (10, 20, 30, 50, 100, 300)


def sweep(model_name: str, n: int, inits: tuple[str, ...], inner: int, max_iter: int,
          train) -> dict:
    clf = victim(model_name)
    rows: dict = {}
    caps = [c for c in CAPS if c <= max_iter]
    for init in inits:
        per = []
        for i in range(n):
            x, y = train.x[i:i + 1], train.y[i:i + 1]
            t = time.perf_counter()
            cfg = CPLConfig(init=init, max_iter=max_iter, lbfgs_inner=inner, seed=i)
            res = cpl_attack(clf, shared_gradient(clf, x, y), cfg, reference=x, reference_labels=y)
            per.append({"asr_at": [res.asr_at(c) for c in caps], "success": bool(res.success[0]),
                        "iterations_to_success": int(res.iterations_to_success[0]),
                        "iterations": res.iterations, "function_evals": res.function_evals,
                        "mse": float(res.mse[0]), "nmse": float(res.nmse[0]),
                        "psnr": float(res.psnr[0]), "ssim": float(res.ssim[0]),
                        "label_ok": res.label_accuracy == 1.0,
                        "seconds": time.perf_counter() - t})
        ok = [p for p in per if p["success"]]
        rows[init] = {
            "n": n,
            "asr_at_cap": {str(c): mean([p["asr_at"][j] for p in per]) for j, c in enumerate(caps)},
            "asr": len(ok) / n,
            "mean_iterations_to_success": mean([p["iterations_to_success"] for p in ok]),
            "mean_mse_success": mean([p["mse"] for p in ok]),
            "mean_psnr": mean([p["psnr"] for p in per]), "mean_ssim": mean([p["ssim"] for p in per]),
            "label_accuracy": mean([float(p["label_ok"]) for p in per]),
            "mean_seconds": mean([p["seconds"] for p in per]), "per_example": per,
        }
        print(model_name, f"inner={inner}", init, {k: rows[init][k] for k in
                                                   ("asr_at_cap", "mean_iterations_to_success",
                                                    "mean_psnr", "mean_seconds")}, flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20, help="examples for lenet-sigmoid")
    ap.add_argument("--n-cnn", type=int, default=10, help="examples for cnn-small")
    ap.add_argument("--cnn-only", action="store_true",
                    help="only cnn-small, patterned vs random, one evaluation per iteration; "
                         "writes docs/results/leakage_init_cnn.json")
    args = ap.parse_args()
    train = load("mnist-5k", "train")
    if args.cnn_only:
        rows = sweep("cnn-small", args.n_cnn, ("patterned", "random"), 1, 100, train)
        out_cnn = {"caps": [c for c in CAPS if c <= 100], "success": "nmse < 0.7",
                   "runs": [{"model": "cnn-small", "lbfgs_inner": 1, "max_iter": 100,
                             "inits": rows}]}
        print(save("leakage_init_cnn", out_cnn))
        return
    runs = [
        ("lenet-sigmoid", args.n, ("patterned", "random", "uniform", "dark", "light"), 20, 300),
        ("lenet-sigmoid", args.n, ("patterned", "random", "uniform", "dark", "light"), 1, 300),
        ("cnn-small", args.n_cnn, ("patterned", "random", "uniform"), 1, 300),
        ("cnn-small", max(1, args.n_cnn // 2), ("patterned", "random"), 20, 100),
    ]
    out: dict = {"caps": list(CAPS), "success": "nmse < 0.7", "runs": []}
    for model_name, n, inits, inner, max_iter in runs:
        rows = sweep(model_name, n, inits, inner, max_iter, train)
        out["runs"].append({"model": model_name, "lbfgs_inner": inner, "max_iter": max_iter,
                            "inits": rows})
        save("leakage_init", out)
    print(save("leakage_init", out))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
