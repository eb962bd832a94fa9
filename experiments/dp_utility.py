"""DP-SGD with dynamic privacy parameters: utility and privacy spending (dissertation
Tables 4.4-4.6 in shape), small and CPU-friendly.

    python experiments/dp_utility.py [--data digits|mnist-5k] [--steps 200] [--clips 1,2,4,8,16,32]
                                     [--phase all|accuracy|target]

For each clipping bound C and each variant (baseline, cdecay, l2-max, dyn-s) at sigma = 6:
final test accuracy after a fixed number of steps (Table 4.4), epsilon under every
accountant (Table 4.5), and the steps / epsilon each variant needs to reach the baseline's
accuracy at C = 4 (Table 4.6). Writes docs/results/dp_utility_<data>.json (200 steps) or
docs/results/dp_utility_<data>_<steps>.json. Runs can be split into pieces of bounded
length: rows already in the JSON (same data, steps, lr, batch, sigma) are kept and replaced
by (variant, C); `--phase accuracy --clips 1,2,4` then `--phase accuracy --clips 8,16,32`
then `--phase target` builds the same file as one `--phase all` run.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from bastion.core import InputSpec
from bastion.data import load
from bastion.models import build_classifier
from bastion.training.dp import DPConfig, train_dp

VARIANTS = ("baseline", "cdecay", "l2-max", "dyn-s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="digits")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--sigma", type=float, default=6.0)
    ap.add_argument("--clips", default="1,2,4,8,16,32")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--phase", default="all", choices=("all", "accuracy", "target"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    kw = {"size": 8} if args.data == "digits" else {}
    train, test = load(args.data, "train", **kw), load(args.data, "test", **kw)
    arch_args = {"hidden": [64]} if args.data == "digits" else {"hidden": [128]}
    clips = [float(c) for c in args.clips.split(",")]

    def run(variant: str, clip: float, **extra) -> dict:
        torch.manual_seed(args.seed)
        clf = build_classifier("mlp", InputSpec(train.input_shape), train.num_classes, arch_args,
                               device="cpu")
        cfg = DPConfig(variant=variant, clip=clip, sigma=args.sigma, batch_size=args.batch,
                       steps=args.steps, lr=args.lr, momentum=0.0, seed=args.seed, progress=False,
                       **extra)
        r = train_dp(clf, train, test, cfg)
        return {"variant": variant, "clip": clip, "test_accuracy": r.test_accuracy, "steps": r.steps,
                "stop_reason": r.stop_reason, "epsilon": r.epsilon, "wall_s": r.wall_time,
                "sensitivity_first_last": [r.trace["sensitivity"][0], r.trace["sensitivity"][-1]]}

    out: dict = {"data": args.data, "model": "mlp", "arch_args": arch_args, "n_train": len(train),
                 "batch": args.batch, "q": args.batch / len(train), "sigma": args.sigma,
                 "steps": args.steps, "lr": args.lr, "delta": 1e-5, "seed": args.seed,
                 "accuracy": [], "to_target": []}
    suffix = "" if args.steps == 200 else f"_{args.steps}"
    path = Path(__file__).resolve().parents[1] / "docs" / "results" / f"dp_utility_{args.data}{suffix}.json"
    same = ("data", "batch", "sigma", "steps", "lr", "seed")
    if path.exists():
        old = json.loads(path.read_text())
        if all(old.get(k, out[k] if k == "seed" else None) == out[k] for k in same):
            out["accuracy"] = old.get("accuracy", [])
            out["to_target"] = old.get("to_target", [])
            if "target_accuracy" in old:
                out["target_accuracy"] = old["target_accuracy"]
            out["wall_s"] = old.get("wall_s", 0.0)
    start = time.time()

    def put(key: str, row: dict) -> None:
        rows = [r for r in out[key] if (r["variant"], r["clip"]) != (row["variant"], row["clip"])]
        out[key] = sorted([*rows, row], key=lambda r: (r["clip"], VARIANTS.index(r["variant"])))
        save()

    def save() -> None:   # after every row, so an interrupted piece keeps what it finished
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**out, "wall_s": out.get("wall_s", 0.0) + time.time() - start},
                                   indent=2))

    if args.phase in ("all", "accuracy"):
        for c in clips:
            for v in VARIANTS:
                row = run(v, c)
                put("accuracy", row)
                print(f"C={c:g} {v:9s} acc {row['test_accuracy']:.3f}  eps(rdp) {row['epsilon']['rdp']:.3f} "
                      f"S {row['sensitivity_first_last']}  {row['wall_s']:.0f}s", flush=True)
    base = next((r for r in out["accuracy"] if r["variant"] == "baseline" and r["clip"] == 4.0), None)
    if base is not None and args.phase in ("all", "target"):
        target = base["test_accuracy"]
        out["target_accuracy"] = target
        for v in VARIANTS:
            row = run(v, 4.0, target_accuracy=target, eval_every=5)
            put("to_target", row)
            print(f"to {target:.3f}: {v:9s} steps {row['steps']} ({row['stop_reason']}) "
                  f"eps {({k: (None if e is None else round(e, 3)) for k, e in row['epsilon'].items()})}", flush=True)
    save()
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
