"""Gradient-leakage speed: one batch-1 CPL reconstruction on LeNet/MNIST (median over
several examples) and a batch-8 Inverting Gradients run, against a bare PyTorch loop.

    .venv/bin/python benchmarks/leakage.py [--runs 7] [--ig-iters 200] [--device auto]

CPL: untrained sigmoid LeNet ('lenet', variant='dlg', U(-0.5, 0.5)), one mnist-5k training
image per run, CPLConfig defaults (patterned init, L-BFGS, up to 300 iterations, stop at
gradient distance < 1e-4). The bare loop is the textbook DLG/CPL loop (model parameters
mutated in place, torch.autograd.grad with create_graph, L-BFGS, oneDNN left on) run for
the same number of function evaluations. IG: batch of 8, labels known, `--ig-iters` Adam
steps (the paper's 4800 scale linearly). Also: one FedAvg round (cnn-small, 10 clients,
mnist-5k). Writes benchmarks/results/leakage.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bastion.attacks.privacy.leakage import (
    CPLConfig,
    InvertingConfig,
    cpl_attack,
    inverting_gradients_attack,
    shared_gradient,
    uniform_init_,
)
from bastion.core import InputSpec, resolve_device
from bastion.data import load
from bastion.federated import FedConfig, run_fedavg
from bastion.models import build_classifier

OUT = Path(__file__).resolve().parent / "results" / "leakage.json"


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def lenet(dev: torch.device):
    clf = build_classifier("lenet", InputSpec((1, 28, 28)), 10,
                           {"activation": "sigmoid", "variant": "dlg"}, device=dev)
    return uniform_init_(clf, seed=0)


def bare_cpl(clf, x, y, evals: int) -> float:
    """The plain loop every DLG-style script writes, for `evals` function evaluations."""
    dev = clf.device
    params = [p for p in clf.parameters()]
    loss = F.cross_entropy(clf(x), y)
    target = [g.detach() for g in torch.autograd.grad(loss, params)]
    tile = torch.rand(1, 1, 14, 14, device=dev)
    dummy = tile.repeat(1, 1, 2, 2).requires_grad_(True)
    opt = torch.optim.LBFGS([dummy])
    count = [0]

    def closure():
        opt.zero_grad()
        out = clf(dummy)
        g = torch.autograd.grad(F.cross_entropy(out, y), params, create_graph=True)
        d = sum(((a - b) ** 2).sum() for a, b in zip(g, target, strict=True))
        d.backward()
        count[0] += 1
        return d

    sync(dev)
    t = time.perf_counter()
    while count[0] < evals:
        opt.step(closure)
    sync(dev)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--ig-iters", type=int, default=200)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = resolve_device(args.device)
    train = load("mnist-5k", "train")
    clf = lenet(dev)
    # warm-up
    x, y = train.x[:1].to(dev), train.y[:1].to(dev)
    cpl_attack(clf, shared_gradient(clf, x, y), CPLConfig(max_iter=3))
    cpl_times, evals, iters, ok = [], [], [], []
    for i in range(args.runs):
        x, y = train.x[i:i + 1].to(dev), train.y[i:i + 1].to(dev)
        payload = shared_gradient(clf, x, y)
        sync(dev)
        t = time.perf_counter()
        res = cpl_attack(clf, payload, CPLConfig(seed=i), reference=x, reference_labels=y)
        sync(dev)
        cpl_times.append(time.perf_counter() - t)
        evals.append(res.function_evals)
        iters.append(res.iterations)
        ok.append(bool(res.success.all()))
    med = statistics.median(cpl_times)
    med_evals = int(statistics.median(evals))
    bare = [bare_cpl(lenet(dev), train.x[i:i + 1].to(dev), train.y[i:i + 1].to(dev), med_evals)
            for i in range(min(3, args.runs))]
    bare_med = statistics.median(bare)
    xb, yb = train.x[:8].to(dev), train.y[:8].to(dev)
    payload = shared_gradient(clf, xb, yb, expose_labels=True)
    sync(dev)
    t = time.perf_counter()
    ig = inverting_gradients_attack(clf, payload, InvertingConfig(max_iter=args.ig_iters),
                                    reference=xb, reference_labels=yb)
    sync(dev)
    ig_time = time.perf_counter() - t
    cnn = build_classifier("cnn-small", InputSpec((1, 28, 28)), 10, device=dev)
    t = time.perf_counter()
    run_fedavg(cnn, train, None, FedConfig(num_clients=10, clients_per_round=10, rounds=1,
                                           local_batch_size=32, local_lr=0.1))
    sync(dev)
    fed_round = time.perf_counter() - t
    result = {
        "device": str(dev), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpl_batch1": {"runs": args.runs, "median_s": med, "all_s": cpl_times,
                       "median_function_evals": med_evals, "iterations": iters, "success": ok,
                       "bare_loop_median_s_same_evals": bare_med, "ratio_vs_bare": med / bare_med},
        "ig_batch8": {"iterations": args.ig_iters, "seconds": ig_time,
                      "ms_per_iteration": 1000 * ig_time / args.ig_iters,
                      "extrapolated_4800_s": ig_time / args.ig_iters * 4800,
                      "asr": ig.success_rate, "mean_psnr": float(ig.psnr.mean())},
        "fedavg_round_cnn_small_10_clients_s": fed_round,
    }
    print(f"CPL batch 1 (LeNet/MNIST): median {med:.3f} s over {args.runs} runs "
          f"({med_evals} evaluations, success {sum(ok)}/{len(ok)}); bare loop {bare_med:.3f} s "
          f"-> ratio {med / bare_med:.2f}")
    print(f"IG batch 8: {args.ig_iters} iterations in {ig_time:.2f} s "
          f"({1000 * ig_time / args.ig_iters:.1f} ms/iteration; 4800 -> {ig_time / args.ig_iters * 4800:.0f} s)")
    print(f"FedAvg round, cnn-small, 10 clients x 400 examples: {fed_round:.2f} s")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2))
    print(OUT)


if __name__ == "__main__":
    main()
