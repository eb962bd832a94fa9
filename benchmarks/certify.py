# Randomized-smoothing certification benchmark (see the docstring).
"""CERTIFY throughput (noise draws per second) against the loop structure of Cohen et al.'s
reference implementation, same model, same noise, same certificates.

    python benchmarks/certify.py [--model cnn7] [--inputs 8] [--n 10000] [--batch 1000]
                                 [--rounds 3] [--threads 1] [--full 2]

The reference loop follows the structure of the CERTIFY code published with Cohen,
Rosenfeld and Kolter (2019) (re-implemented here, not copied): one input at a time, a batch
of `batch` noisy copies of that input per forward pass (`x.repeat`), the predictions moved
to the host and counted with numpy after every forward, default memory layout, under
`torch.no_grad`. Bastion's `SmoothedClassifier.certify` groups several inputs' copies per
forward pass (the same number of copies per pass), keeps counts on the device (no host
synchronisation per pass), runs in the model's fastest layout (channels-last on CPU) under
`torch.inference_mode`, and batches the n0 selection draws of several inputs together.

Both draw the same noise: input i's copies come from its own generator seeded from
(seed, i, phase), in blocks of `noise_block` copies, so the two must produce identical
counts, labels and radii; the benchmark asserts it. The methods alternate for `--rounds`
rounds (medians reported). `--full K` also times K inputs at the paper's n = 100,000.

The model is a cnn7 trained for one epoch on mnist-5k (seed 0) unless --checkpoint is
given. Writes benchmarks/results/certify.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import norm

from bastion.core import Classifier
from bastion.data import load
from bastion.defenses.certify.smoothing import (
    PHASE_ESTIMATE,
    PHASE_SELECT,
    SmoothedClassifier,
    lower_confidence_bound,
    noise_generator,
)


def reference_counts(base: Classifier, x: torch.Tensor, num: int, batch: int, sigma: float, seed: int,
                     index: int, phase: int, block: int) -> np.ndarray:
    """Cohen et al.'s sampling loop structure for one input: batches of noisy copies,
    counts accumulated on the host after each forward."""
    gen = noise_generator(x.device, seed, index, phase)
    counts = np.zeros(base.num_classes, dtype=np.int64)
    remaining = num
    blk = min(block, num)
    with torch.no_grad():
        while remaining > 0:
            this = min(batch, remaining)
            rep = x.repeat((this, 1, 1, 1))
            chunks, left = [], this
            while left > 0:   # the same noise stream as SmoothedClassifier (blocks of `blk`)
                k = min(blk, left)
                chunks.append(torch.randn((blk, *x.shape[1:]), generator=gen, device=x.device)[:k])
                left -= k
            pred = base(rep + sigma * torch.cat(chunks)).argmax(1)
            counts += np.bincount(pred.cpu().numpy(), minlength=base.num_classes)
            remaining -= this
    return counts


def reference_certify(base: Classifier, x: torch.Tensor, n0: int, n: int, alpha: float, sigma: float,
                      batch: int, seed: int, block: int) -> dict[str, np.ndarray]:
    labels, counts, radii = [], [], []
    for i in range(x.shape[0]):
        xi = x[i:i + 1]
        c0 = reference_counts(base, xi, n0, batch, sigma, seed, i, PHASE_SELECT, block)
        top = int(c0.argmax())
        c = reference_counts(base, xi, n, batch, sigma, seed, i, PHASE_ESTIMATE, block)
        p = float(lower_confidence_bound(np.array([c[top]]), n, alpha)[0])
        labels.append(top if p > 0.5 else -1)
        counts.append(int(c[top]))
        radii.append(sigma * norm.ppf(p) if p > 0.5 else 0.0)
    return {"label": np.array(labels), "count": np.array(counts), "radius": np.array(radii, dtype=np.float32)}


def model(arch: str, checkpoint: str | None) -> tuple[Classifier, float]:
    from bastion.models import build_classifier, load_classifier
    from bastion.training import TrainConfig, fit

    if checkpoint:
        return load_classifier(checkpoint, device="cpu"), 0.0
    train = load("mnist-5k", "train")
    torch.manual_seed(0)
    clf = build_classifier(arch, train.input_spec(), 10, device="cpu")
    res = fit(clf, train, None, TrainConfig(epochs=1, batch_size=64, seed=0, progress=False))
    return clf, res.wall_time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="cnn7")
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--inputs", type=int, default=8)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--n0", type=int, default=100)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--sigma", type=float, default=0.25)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--full", type=int, default=2, help="inputs timed at n = 100,000 (0 = skip)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "certify.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    base, train_s = model(args.model, args.checkpoint)
    base.eval()
    x = load("mnist-5k", "test").x[:args.inputs]
    g = SmoothedClassifier(base, args.sigma, batch_size=args.batch)
    draws = args.inputs * (args.n0 + args.n)
    ref_t, fast_t = [], []
    ref = fast = None
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        ref = reference_certify(base, x, args.n0, args.n, 0.001, args.sigma, args.batch, 0, g.noise_block)
        ref_t.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        fast = g.certify(x, n0=args.n0, n=args.n, alpha=0.001, seed=0)
        fast_t.append(time.perf_counter() - t0)
    assert ref is not None and fast is not None
    identical = (np.array_equal(ref["label"], fast.label.numpy()) and np.array_equal(ref["count"], fast.count.numpy())
                 and np.allclose(ref["radius"], fast.radius.numpy(), atol=1e-6))
    assert identical, "the batched loop and the reference loop disagree"
    r, f = statistics.median(ref_t), statistics.median(fast_t)
    result = {
        "model": args.model, "inputs": args.inputs, "n0": args.n0, "n": args.n, "batch": args.batch,
        "sigma": args.sigma, "threads": args.threads, "rounds": args.rounds, "device": "cpu",
        "train_seconds": train_s,
        "reference_seconds": r, "bastion_seconds": f, "speedup": r / f,
        "reference_draws_per_s": draws / r, "bastion_draws_per_s": draws / f,
        "identical_certificates": identical,
        "labels": fast.label.tolist(), "radii": [round(float(v), 6) for v in fast.radius],
        "torch": torch.__version__, "platform": platform.platform(), "processor": platform.processor(),
    }
    if args.full:
        t0 = time.perf_counter()
        g.certify(x[:args.full], n0=100, n=100_000, alpha=0.001, seed=0)
        result["seconds_per_input_n100k"] = (time.perf_counter() - t0) / args.full
    if torch.cuda.is_available():
        gpu = SmoothedClassifier(base.to("cuda"), args.sigma, batch_size=max(args.batch, 10_000))
        gpu.certify(x[:2].cuda(), n0=100, n=1000)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        gpu.certify(x.cuda(), n0=args.n0, n=args.n)
        torch.cuda.synchronize()
        result["cuda_draws_per_s"] = draws / (time.perf_counter() - t0)
        result["cuda_device"] = torch.cuda.get_device_name()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k not in ("labels", "radii")}, indent=1))


if __name__ == "__main__":
    main()
