# XEnsemble query benchmark (see the docstring).
"""Latency and throughput of one XEnsemble query batch (k denoisers x n models) against
the members' bare batched forwards and against k x n separate forward calls.

    python benchmarks/xensemble.py [--batch 100] [--k 3] [--n 3] [--rounds 7] [--device cpu]
                                   [--threads 1] [--arch cnn-small]

Models: n team members and the target, all `--arch` (untrained weights: timing only, so
the n members share an architecture; on a GPU they run as one `torch.vmap` over their
stacked weights, on CPU one call each, which measured faster there; `--vmap on|off` forces
either). Denoisers: 1-bit depth reduction, 3 x 3 median, rotation by -12 degrees (the
MNIST team). Per query batch of B inputs, timed round-robin for `--rounds` rounds
(medians reported):

* xensemble: `XEnsemble.decide(x)`, the whole query: k denoisers, the target on the
  (1 + k) B raw and denoised inputs, the team on the k B denoised ones (one vmap call on a
  GPU; on CPU one call per model and version of B inputs, which ran faster there than one
  (1 + k) B batch), the decision logic.
* members only: the same forwards on already-denoised inputs: the target on the (1 + k) B
  raw and denoised inputs, the team (`StackedMembers`) on the k B denoised ones.
* bare batched: the same inputs, one plain call per model, the sum of their times: the
  floor for the forwards.
* separate calls: k x n calls model(denoiser(x)) plus the target's k + 1, one at a time.

The figure of merit is throughput(xensemble) / throughput(bare batched), with and without
the denoisers' own cost (which the bare forwards do not pay). Writes
benchmarks/results/xensemble[_DEVICE].json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from bastion.core import InputSpec
from bastion.defenses.preprocess import BitDepth, MedianFilter, Rotation
from bastion.defenses.xensemble import XEnsemble
from bastion.models import build_classifier


def timed(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--k", type=int, default=3, choices=(1, 2, 3))
    ap.add_argument("--n", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--arch", default="cnn-small")
    ap.add_argument("--vmap", choices=("auto", "on", "off"), default="auto",
                    help="stack same-architecture members into one vmap call (auto: on a GPU only)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    spec = InputSpec((1, 28, 28))
    torch.manual_seed(0)
    models = [build_classifier(args.arch, spec, 10, device=dev, name=f"m{i}") for i in range(args.n + 1)]
    target, team = models[0], models[1:]
    dens = [BitDepth(bits=1), MedianFilter(kernel=3), Rotation(degrees=-12.0)][:args.k]
    xe = XEnsemble(target, dens, [team], vectorize={"auto": None, "on": True, "off": False}[args.vmap])
    x = torch.rand(args.batch, *spec.shape, device=dev)
    with torch.no_grad():
        denoised = torch.stack([d(x) for d in dens]).flatten(0, 1)  # [k B, ...]
        versions = torch.cat([x, denoised])  # the target also sees the raw input

    def run_xe() -> None:
        with torch.no_grad():
            xe.decide(x)

    def run_members() -> None:
        with torch.no_grad():
            xe.module[0](versions)
            xe.module[1](denoised)

    def run_bare() -> None:
        with torch.no_grad():
            target(versions)
            for m in team:
                m(denoised)

    def run_denoise() -> None:
        with torch.no_grad():
            for d in dens:
                d(x)

    def run_separate() -> None:
        with torch.no_grad():
            target(x)
            for d in dens:
                xd = d(x)
                target(xd)
                for m in team:
                    m(xd)

    methods = {"xensemble": run_xe, "members only": run_members, "bare batched": run_bare,
               "denoisers": run_denoise, "separate calls": run_separate}
    for fn in methods.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in methods}
    for _ in range(args.rounds):
        for name, fn in methods.items():
            times[name].append(timed(fn, dev))
    med = {k: statistics.median(v) for k, v in times.items()}
    thr = {k: args.batch / v for k, v in med.items()}
    res = {"device": str(dev), "gpu": torch.cuda.get_device_name(0) if dev.type == "cuda" else None,
           "cpu": platform.processor() or platform.machine(), "threads": args.threads, "arch": args.arch,
           "batch": args.batch, "k": args.k, "n": args.n, "rounds": args.rounds,
           "vmap": xe.module[1].uses_vmap, "vmap_groups": [len(g) for g in xe.module[1].groups],
           "median_seconds": med, "queries_per_second": thr,
           "ratio_xensemble_to_bare": med["bare batched"] / med["xensemble"],
           "ratio_xensemble_minus_denoisers_to_bare": med["bare batched"] / max(med["xensemble"] - med["denoisers"], 1e-12),
           "ratio_members_to_bare": med["bare batched"] / med["members only"],
           "speedup_over_separate_calls": med["separate calls"] / med["xensemble"],
           "torch": torch.__version__}
    suffix = ("" if dev.type == "cpu" else f"_{dev.type}") + ("" if args.vmap == "auto" else f"_vmap-{args.vmap}")
    out = Path(__file__).resolve().parent / "results" / f"xensemble{suffix}.json"
    out.write_text(json.dumps(res, indent=1))
    for k in methods:
        print(f"{k:>15}: {med[k] * 1e3:8.2f} ms  {thr[k]:9.0f} queries/s")
    print({k: round(v, 3) for k, v in res.items() if k.startswith(("ratio", "speedup"))})


if __name__ == "__main__":
    main()
