# ruff: noqa: B023  (the timed closures are called inside each loop iteration)
"""DP-SGD step time: Bastion's engines vs a non-private step vs Opacus, same model and batch.

    python benchmarks/dp.py [--batch 256] [--repeats 10] [--device cpu|cuda|auto] [--threads N]

Model: cnn-small (~106k parameters) on MNIST-shaped inputs, batch 256 (fixed, so every
method sees the same batch). A "step" is forward + per-example clipping + noise + SGD
update. Opacus runs its own PrivacyEngine (make_private, flat clipping, no Poisson sampling).
Prints ratios to the non-private step and writes benchmarks/results/dp.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from bastion.core import InputSpec
from bastion.models import build_classifier
from bastion.training.dp import DPSGD, DPConfig


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def timeit(fn, dev: torch.device, repeats: int) -> tuple[float, float | None]:
    for _ in range(3):
        fn()
    _sync(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(dev)
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else None
    return statistics.median(times), peak


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "dp.json"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devs = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if args.device != "auto":
        devs = [args.device]
    results: dict = {"batch": args.batch, "model": "cnn-small", "torch": torch.__version__,
                     "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
                     "devices": {}}
    for d in devs:
        dev = torch.device(d)
        torch.manual_seed(0)
        x = torch.rand(args.batch, 1, 28, 28, device=dev)
        y = torch.randint(0, 10, (args.batch,), device=dev)
        row: dict = {}
        if dev.type == "cuda":
            row["gpu"] = torch.cuda.get_device_name()

        clf = build_classifier("cnn-small", InputSpec((1, 28, 28)), 10, device=dev)
        clf.train()
        opt = torch.optim.SGD(clf.parameters(), lr=0.05)

        def plain() -> None:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(clf(x), y).backward()
            opt.step()
        base, base_mem = timeit(plain, dev, args.repeats)
        row["non_private"] = {"s": base, "peak_mb": base_mem}

        for engine in ("ghost", "vmap", "opacus"):
            clf_e = build_classifier("cnn-small", InputSpec((1, 28, 28)), 10, device=dev)
            dp = DPSGD(clf_e, DPConfig(engine=engine, batch_size=args.batch, lr=0.05), n=60000)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t, mem = timeit(lambda: dp.step(x, y), dev, args.repeats)
            dp.close()
            row[f"bastion_{engine}"] = {"s": t, "peak_mb": mem, "ratio": t / base}
        for variant in ("l2-max", "dyn-s-sigma"):
            clf_v = build_classifier("cnn-small", InputSpec((1, 28, 28)), 10, device=dev)
            dp = DPSGD(clf_v, DPConfig(variant=variant, batch_size=args.batch, lr=0.05), n=60000)
            t, mem = timeit(lambda: dp.step(x, y), dev, args.repeats)
            dp.close()
            row[f"bastion_ghost_{variant}"] = {"s": t, "peak_mb": mem, "ratio": t / base}

        try:
            from opacus import PrivacyEngine
            clf_o = build_classifier("cnn-small", InputSpec((1, 28, 28)), 10, device=dev)
            clf_o.train()
            opt_o = torch.optim.SGD(clf_o.parameters(), lr=0.05)
            loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x.cpu(), y.cpu()),
                                                 batch_size=args.batch)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model_o, opt_o, _ = PrivacyEngine().make_private(
                    module=clf_o, optimizer=opt_o, data_loader=loader, noise_multiplier=6.0,
                    max_grad_norm=4.0, poisson_sampling=False)

                def opacus_step() -> None:
                    opt_o.zero_grad(set_to_none=True)
                    F.cross_entropy(model_o(x), y).backward()
                    opt_o.step()
                t, mem = timeit(opacus_step, dev, args.repeats)
            row["opacus"] = {"s": t, "peak_mb": mem, "ratio": t / base}
        except ImportError:
            row["opacus"] = None
        results["devices"][d] = row
        print(f"[{d}] non-private step {base * 1e3:.1f} ms")
        for k, v in row.items():
            if isinstance(v, dict) and "ratio" in v:
                mem = "" if v["peak_mb"] is None else f"  peak {v['peak_mb']:.0f} MB"
                print(f"[{d}]   {k:28s} {v['s'] * 1e3:8.1f} ms  {v['ratio']:.2f}x{mem}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
