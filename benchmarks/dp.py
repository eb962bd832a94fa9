# DP-SGD step-time benchmark (see the docstring).
"""DP-SGD step time: Bastion's engines vs a non-private step vs Opacus, same model and batch.

    python benchmarks/dp.py [--batch 256] [--rounds 15] [--device cpu|cuda|auto] [--threads N]
                            [--model cnn-small|mlp] [--no-memory]

Model: cnn-small (~106k parameters) on MNIST-shaped inputs, batch 256 (fixed, so every
method sees the same batch). A "step" is forward + per-example clipping + noise + SGD
update. Opacus runs its own PrivacyEngine (make_private, flat clipping, no Poisson
sampling).

Timing: after warm-up, the methods are timed round-robin (one step of each per round, for
`--rounds` rounds) and the median per method is reported, so that a change of machine load
affects every method alike. Peak memory: on CUDA, `max_memory_allocated` during the timed
steps; on CPU, each method runs again in a fresh subprocess and reports the growth of the
peak resident set size (ru_maxrss) over its size just before the first step, which covers
every allocation of the step (activations, per-example gradients, noise).

Prints ratios to the non-private step and writes benchmarks/results/dp.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from bastion.core import InputSpec
from bastion.models import build_classifier
from bastion.training.dp import DPSGD, DPConfig

METHODS = ("non_private", "bastion_ghost", "bastion_ghost_l2-max", "bastion_ghost_dyn-s-sigma",
           "bastion_vmap", "bastion_opacus", "opacus")
LABELS = {
    "non_private": "non-private SGD step",
    "bastion_ghost": "Bastion ghost engine (default), baseline",
    "bastion_ghost_l2-max": "Bastion ghost engine, l2-max",
    "bastion_ghost_dyn-s-sigma": "Bastion ghost engine, dyn-s-sigma",
    "bastion_vmap": "Bastion torch.func vmap engine",
    "bastion_opacus": "Bastion + Opacus grad-sample hooks",
    "opacus": "Opacus PrivacyEngine",
}


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def make_step(method: str, model: str, dev: torch.device, x: torch.Tensor, y: torch.Tensor
              ) -> tuple[Callable[[], None], Callable[[], None]] | None:
    """(step, close) for one method, or None when it is unavailable (Opacus missing)."""
    torch.manual_seed(0)
    shape = tuple(x.shape[1:])
    clf = build_classifier(model, InputSpec(shape), 10, device=dev)
    clf.train()
    b = x.shape[0]
    if method == "non_private":
        opt = torch.optim.SGD(clf.parameters(), lr=0.05)

        def plain() -> None:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(clf(x), y).backward()
            opt.step()
        return plain, lambda: None
    if method.startswith("bastion_"):
        rest = method[len("bastion_"):]
        engine, _, variant = rest.partition("_")
        if engine == "opacus":
            try:
                import opacus  # noqa: F401
            except ImportError:
                return None
        dp = DPSGD(clf, DPConfig(engine=engine, variant=variant or "baseline", batch_size=b, lr=0.05),
                   n=60000)

        def private() -> None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                dp.step(x, y)
        return private, dp.close
    try:
        from opacus import PrivacyEngine
    except ImportError:
        return None
    opt_o = torch.optim.SGD(clf.parameters(), lr=0.05)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x.cpu(), y.cpu()), batch_size=b)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model_o, opt_o, _ = PrivacyEngine().make_private(
            module=clf, optimizer=opt_o, data_loader=loader, noise_multiplier=6.0, max_grad_norm=4.0,
            poisson_sampling=False)

    def opacus_step() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            opt_o.zero_grad(set_to_none=True)
            F.cross_entropy(model_o(x), y).backward()
            opt_o.step()
    return opacus_step, lambda: None


def batch(model: str, b: int, dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return torch.rand(b, 1, 28, 28, device=dev), torch.randint(0, 10, (b,), device=dev)


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(key)


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0); False when not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def memory_child(method: str, model: str, b: int, threads: int | None) -> None:
    """Run in a fresh process: print the peak-RSS growth (MB) of 3 steps of `method`."""
    if threads:
        torch.set_num_threads(threads)
    dev = torch.device("cpu")
    x, y = batch(model, b, dev)
    made = make_step(method, model, dev, x, y)
    if made is None:
        print(json.dumps(None))
        return
    step, close = made
    reset = _reset_peak()
    before = _status_mb("VmRSS") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for _ in range(3):
        step()
    peak = _status_mb("VmHWM")
    close()
    print(json.dumps({"peak_rss_growth_mb": peak - before, "rss_before_mb": before,
                      "peak_reset": reset}))


def cpu_memory(method: str, args: argparse.Namespace) -> dict | None:
    cmd = [sys.executable, __file__, "--child", method, "--model", args.model, "--batch", str(args.batch)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        print(out.stderr[-2000:], file=sys.stderr)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--model", default="cnn-small")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "dp.json"))
    args = ap.parse_args()
    if args.child:
        memory_child(args.child, args.model, args.batch, args.threads)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    devs = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if args.device != "auto":
        devs = [args.device]
    results: dict = {"batch": args.batch, "model": args.model, "torch": torch.__version__,
                     "threads": torch.get_num_threads(), "rounds": args.rounds,
                     "machine": platform.processor() or platform.machine(),
                     "command": " ".join(["python", "benchmarks/dp.py", *sys.argv[1:]]), "devices": {}}
    try:
        import opacus
        results["opacus"] = opacus.__version__
    except ImportError:
        results["opacus"] = None
    for d in devs:
        dev = torch.device(d)
        x, y = batch(args.model, args.batch, dev)
        steps: dict[str, tuple[Callable[[], None], Callable[[], None]]] = {}
        for m in METHODS:
            made = make_step(m, args.model, dev, x, y)
            if made is not None:
                steps[m] = made
        for fn, _ in steps.values():
            for _ in range(args.warmup):
                fn()
        _sync(dev)
        times: dict[str, list[float]] = {m: [] for m in steps}
        peaks: dict[str, float | None] = {m: None for m in steps}
        for _ in range(args.rounds):
            for m, (fn, _) in steps.items():
                if dev.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                t0 = time.perf_counter()
                fn()
                _sync(dev)
                times[m].append(time.perf_counter() - t0)
                if dev.type == "cuda":
                    peaks[m] = max(peaks[m] or 0.0, torch.cuda.max_memory_allocated() / 2**20)
        for _, close in steps.values():
            close()
        base = statistics.median(times["non_private"])
        row: dict = {}
        if dev.type == "cuda":
            row["gpu"] = torch.cuda.get_device_name()
        for m in steps:
            med = statistics.median(times[m])
            row[m] = {"s": med, "ratio": med / base, "min_s": min(times[m]), "peak_mb": peaks[m]}
            if dev.type == "cpu" and not args.no_memory:
                mem = cpu_memory(m, args)
                row[m]["peak_rss_growth_mb"] = None if mem is None else round(mem["peak_rss_growth_mb"], 1)
        results["devices"][d] = row
        print(f"[{d}] non-private step {base * 1e3:.1f} ms (median of {args.rounds} round-robin rounds)")
        for m, v in row.items():
            if not isinstance(v, dict):
                continue
            mem = v.get("peak_mb") if dev.type == "cuda" else v.get("peak_rss_growth_mb")
            mem_s = "" if mem is None else f"  peak {'+' if dev.type == 'cpu' else ''}{mem:.0f} MB"
            print(f"[{d}]   {LABELS[m]:42s} {v['s'] * 1e3:8.1f} ms  {v['ratio']:.2f}x{mem_s}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
