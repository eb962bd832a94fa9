"""Measured effect and cost of the minimum-norm and black-box attacks (issue 3, part B).

Victim: cnn-small trained 3 epochs on mnist-5k (the test suite's cached model); inputs:
the first N correctly classified mnist-5k test images. For every attack: success rate,
mean L0 / L2 / Linf over the successful examples, mean queries and seconds per example.
Writes docs/results/evasion_partb.json and prints a markdown table.

    python experiments/evasion_partb.py --n 100 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--only", default="")
    ap.add_argument("--out", default=str(ROOT / "docs" / "results" / "evasion_partb.json"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("BASTION_QUIET", "1")
    from bastion.attacks.evasion import (
        JSMA,
        CarliniWagnerL0,
        CarliniWagnerL2,
        CarliniWagnerLinf,
        DeepFool,
        DynamicDeepFool,
        HopSkipJump,
        OnePixel,
        Square,
        Universal,
        select_targets,
    )
    from bastion.core import seed_everything
    from bastion.data import load
    from conftest import _train_cached

    seed_everything(0)
    model = _train_cached("cnn-small", epochs=3)
    test = load("mnist-5k", "test")
    idx = torch.nonzero(model.predict(test.x) == test.y).flatten()[: args.n]
    x, y = test.x[idx], test.y[idx]
    most = select_targets(model, x, y, "most")
    ll = select_targets(model, x, y, "ll")
    runs: list[tuple[str, Any, torch.Tensor | None]] = [
        ("deepfool (l2)", DeepFool(), None),
        ("deepfool (linf)", DeepFool(norm="linf"), None),
        ("deepfool-dynamic (l2)", DynamicDeepFool(), None),
        ("cw-l2 fast, untargeted", CarliniWagnerL2.fast(), None),
        ("cw-l2 fast, most", CarliniWagnerL2.fast(), most),
        ("cw-l2 fast, ll", CarliniWagnerL2.fast(), ll),
        ("cw-linf fast, most", CarliniWagnerLinf.fast(), most),
        ("cw-l0 fast, most", CarliniWagnerL0.fast(), most),
        ("jsma, most", JSMA(), most),
        ("jsma, ll", JSMA(), ll),
        ("square linf eps 0.3 (5000 q)", Square(), None),
        ("square l2 eps 2.0 (5000 q)", Square(norm="l2", eps=2.0), None),
        ("hopskipjump l2 (20 it)", HopSkipJump(max_iter=20), None),
        ("hopskipjump linf (20 it)", HopSkipJump(norm="linf", max_iter=20), None),
        ("one-pixel (pop 100, 30 gen)", OnePixel(population=100, max_iter=30), None),
        ("one-pixel, 3 px (pop 100, 30 gen)", OnePixel(pixels=3, population=100, max_iter=30), None),
        ("universal linf eps 0.3", Universal(), None),
        ("universal l2 eps 4.0", Universal(norm="l2"), None),
    ]
    rows: list[dict[str, Any]] = []
    out = Path(args.out)
    for label, attack, target in runs:
        if args.only and args.only not in label:
            continue
        t = time.perf_counter()
        r = attack(model, x, y, target)
        dt = time.perf_counter() - t
        s = r.summary()
        row = {"attack": label, "n": r.n, "success_rate": s["success_rate"],
               "mean_l0": s["mean_l0"], "mean_l2": s["mean_l2"], "mean_linf": s["mean_linf"],
               "queries_mean": s["queries_mean"], "seconds_per_example": dt / r.n,
               "params": s["params"]}
        if "fooling_rate" in r.extras:
            row["fooling_rate"] = r.extras["fooling_rate"]
        if "iterations" in r.extras:
            row["iterations_mean"] = float(r.extras["iterations"].float().mean())
        rows.append(row)
        print(f"{label:36s} ASR {row['success_rate']:.2f}  L0 {_f(row['mean_l0'], 1)}  "
              f"L2 {_f(row['mean_l2'])}  Linf {_f(row['mean_linf'])}  "
              f"q {_f(row['queries_mean'], 0)}  {row['seconds_per_example']:.3f} s/ex", flush=True)
        _save(out, x, rows, complete=False)  # rows survive an interrupted run
    _save(out, x, rows, complete=True)
    print("\n| attack | ASR | mean L0 | mean L2 | mean Linf | queries | s / example |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['attack']} | {r['success_rate']:.2f} | {_f(r['mean_l0'], 1)} | "
              f"{_f(r['mean_l2'])} | {_f(r['mean_linf'])} | {_f(r['queries_mean'], 0)} | "
              f"{r['seconds_per_example']:.3f} |")
    print(f"wrote {out}")


def _save(out: Path, x: torch.Tensor, rows: list[dict[str, Any]], complete: bool) -> None:
    meta = {"model": "cnn-small (3 epochs, mnist-5k)", "n": int(x.shape[0]),
            "threads": torch.get_num_threads(), "load_average": os.getloadavg()[0],
            "complete": complete,
            "command": " ".join(["python", "experiments/evasion_partb.py", *sys.argv[1:]])}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    tmp.replace(out)


def _f(v: float | None, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


if __name__ == "__main__":
    main()
