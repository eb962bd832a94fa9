# Robust-aggregation cost per federated round (see the docstring).
"""Server-side cost of one round of robust aggregation for 100 clients of cnn7 size
(312,202 parameters per update), against a naive Python-loop Krum.

    PYTHONPATH=src python benchmarks/fl_aggregation.py [--clients 100] [--f 10] [--reps 5] [--threads 2]

The updates are seeded Gaussian deltas shaped like cnn7's parameters on mnist-5k (the cost
does not depend on their values). Every registered rule is timed on the same round
(median of `--reps` calls): FedAvg, median, trimmed mean, Krum and Multi-Krum (f = 10),
Bulyan (f = 10; 100 >= 4f + 3), norm clipping and the statistical detector. Krum's
pairwise squared distances are one Gram-matrix product over the [n, d] matrix of
flattened updates (O(n^2 d), ||a||^2 + ||b||^2 - 2 a.b, the formula of `torch.cdist`'s
matrix-product mode; `torch.cdist` itself is timed too); the baseline computes the same
n(n-1)/2 distances in a Python double loop, one tensor reduction per pair, and the
benchmark asserts the two give the same Krum scores and choice. Writes benchmarks/results/fl_aggregation.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from bastion.core import InputSpec
from bastion.federated import ClientUpdate, get_aggregator
from bastion.federated.robust import flatten, krum_scores
from bastion.models import build_classifier

RULES = [("fedavg", {}), ("median", {}), ("trimmed-mean", {"beta": 0.1}), ("krum", "f"), ("multi-krum", "f"),
         ("bulyan", "f"), ("norm-clip", {}), ("detector", {})]


def updates(n: int, seed: int = 0) -> list[ClientUpdate]:
    model = build_classifier("cnn7", InputSpec((1, 28, 28)), 10, {}, device="cpu")
    g = torch.Generator().manual_seed(seed)
    shapes = {k: p.shape for k, p in model.named_parameters()}
    return [ClientUpdate(i, 0, {k: 0.01 * torch.randn(s, generator=g) for k, s in shapes.items()}, 400, 0.1, 13)
            for i in range(n)]


def naive_krum_scores(ups: list[ClientUpdate], f: int) -> torch.Tensor:
    """Pairwise squared distances in a Python double loop (one reduction per pair)."""
    vecs = [torch.cat([u.delta[k].reshape(-1) for k in u.delta]).double() for u in ups]
    n = len(vecs)
    d = [[0.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            d[i][j] = d[j][i] = float(((vecs[i] - vecs[j]) ** 2).sum())
    scores = []
    for i in range(n):
        others = sorted(d[i][j] for j in range(n) if j != i)
        scores.append(sum(others[: n - f - 2]))
    return torch.tensor(scores, dtype=torch.float64)


def timed(fn, reps: int) -> tuple[float, object]:
    out, times = None, []
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--f", type=int, default=10)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--naive-reps", type=int, default=1)
    ap.add_argument("--naive-clients", type=int, default=None,
                    help="time the loop (and the vectorised scores, for the ratio) on the first K clients only")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "fl_aggregation.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ups = updates(args.clients)
    d = sum(v.numel() for v in ups[0].delta.values())
    per_rule = {}
    for name, kw in RULES:
        agg = get_aggregator(name, **({"f": args.f} if kw == "f" else kw))
        t, _ = timed(lambda agg=agg: agg(ups), args.reps)
        per_rule[name] = t
        print(f"{name:13s} {t * 1000:9.1f} ms / round", flush=True)
    t_flat, (mat, _, _) = timed(lambda: flatten(ups), args.reps)
    k = args.naive_clients or args.clients
    t_vec, fast = timed(lambda: krum_scores(mat[:k], args.f), args.reps)
    sub = mat[:k].float()
    t_cdist, _ = timed(lambda: torch.cdist(sub, sub, compute_mode="use_mm_for_euclid_dist").pow(2), args.reps)
    t_naive, slow = timed(lambda: naive_krum_scores(ups[:k], args.f), args.naive_reps)
    assert torch.allclose(fast.double(), slow, rtol=1e-4), "vectorised and loop Krum scores differ"
    assert int(fast.argmin()) == int(slow.argmin())
    result = {
        "clients": args.clients, "parameters": d, "f": args.f, "threads": args.threads, "reps": args.reps,
        "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
        "seconds_per_round": per_rule, "flatten_s": t_flat, "loop_clients": k, "krum_scores_vectorised_s": t_vec, "torch_cdist_s": t_cdist,
        "krum_scores_python_loop_s": t_naive, "speedup_scores": t_naive / t_vec,
        "krum_under_1s": per_rule["krum"] < 1.0,
        "load_average": list(os.getloadavg()),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"Krum scores of {k} clients: vectorised {t_vec:.3f} s (torch.cdist {t_cdist:.3f} s) vs Python loop {t_naive:.2f} s -> "
          f"{t_naive / t_vec:.0f}x; a whole {args.clients}-client Krum round {per_rule['krum']:.3f} s")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
