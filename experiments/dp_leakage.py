"""Gradient-leakage resilience of DP-SGD variants (dissertation Table 4.3 in shape).

    python experiments/dp_leakage.py [--n 5] [--iters 100] [--only PATTERN[,PATTERN...]] [--fresh]

The victim releases the per-example gradient of one MNIST image as each setting would
(non-private: the raw gradient; DP settings: the clipped gradient plus N(0, sigma_t^2 S_t^2)
at the first training step, where leakage is worst). The CPL attack (Wei et al. 2020, from
`bastion.attacks.privacy.leakage`) reconstructs the image from that gradient and the
weights, on the DLG/CPL sigmoid LeNet with U(-0.5, 0.5) weights. Reports attack success
rate (normalised MSE below CPL's threshold), MSE, iterations, and the noise-to-signal ratio
||noise|| / ||clipped gradient|| = sigma_t S_t sqrt(P) / min(||g||, C_t) of the release.

Settings:
- ``non-private``;
- ``baseline sigma=... (C=||g||)``: the fixed baseline with the clipping bound set to the
  example's own gradient norm, so clipping is inactive and the noise is sigma ||g|| per
  coordinate: the sweep over sigma shows where the baseline starts to leak;
- the dissertation's parameters C = 4, sigma = 6 (Table 4.3): baseline, quantile clipping
  and AdaClip (C = 4 and sigma = 6 as their start values) and DP-dyn[S,sigma] (C0 = 4,
  sigma0 = 6, exponential decay).

Rows are merged into docs/results/dp_leakage.json by setting label, so the experiment can
be run in pieces (``--only``) of bounded length.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from bastion.attacks.privacy.leakage import CPLConfig, SharedGradient, cpl_attack, uniform_init_
from bastion.core import InputSpec
from bastion.data import load
from bastion.models import build_classifier
from bastion.training.dp import DPSGD, DPConfig

SWEEP = (1e-4, 1e-3, 1.5e-3, 2e-3, 3e-3, 1e-2, 3e-2, 1e-1, 1.0)
#: label -> DPConfig (None = non-private; clip None = the example's own gradient norm)
SETTINGS: dict[str, dict | None] = {
    "non-private": None,
    **{f"baseline sigma={s:g} (C=||g||)": {"variant": "baseline", "sigma": s, "clip": None}
       for s in SWEEP},
    "baseline C=4 sigma=6": {"variant": "baseline", "clip": 4.0, "sigma": 6.0},
    # count noise of a 600-example lot (batch_size / 20, the paper's choice; MNIST's lot in
    # dissertation Table 4.2)
    "quantile C0=4 sigma=6": {"variant": "quantile", "clip": 4.0, "sigma": 6.0, "count_noise": 30.0},
    "adaclip C=4 sigma=6": {"variant": "adaclip", "clip": 4.0, "sigma": 6.0},
    "dyn-s-sigma C0=4 sigma0=6 (exp)": {"variant": "dyn-s-sigma", "clip": 4.0, "sigma": 6.0,
                                        "decay": "exp"},
}
OUT = Path(__file__).resolve().parents[1] / "docs" / "results" / "dp_leakage.json"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=5)
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", default="", help="comma-separated substrings of setting labels "
                    "(spaces may be written as _)")
    ap.add_argument("--fresh", action="store_true", help="discard rows already in the JSON")
    ap.add_argument("--tag-iters", action="store_true", help="label rows '<setting> [N iters]', "
                    "to keep a longer attack run next to the default one")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    test = load("mnist-5k", "test")
    clf = build_classifier("lenet", InputSpec((1, 28, 28)), 10,
                           {"variant": "dlg", "activation": "sigmoid"}, device="cpu")
    uniform_init_(clf, seed=0)
    names = {id(p): n for n, p in clf.named_parameters()}
    weights = {n: p.detach().clone() for n, p in clf.named_parameters()}
    n_params = sum(p.numel() for p in clf.parameters())
    out = {"rows": []}
    if OUT.exists() and not args.fresh:
        out = json.loads(OUT.read_text())
    keep = {r["setting"]: r for r in out.get("rows", [])}
    only = [p.strip() for p in args.only.split(",") if p.strip()]
    suffix = f" [{args.iters} iters]" if args.tag_iters else ""
    start = time.time()
    # the headline rows first, so that a piece cut short by its time limit keeps them
    first = ["non-private", "dyn-s-sigma C0=4 sigma0=6 (exp)", "baseline C=4 sigma=6"]
    run_order = first + [k for k in SETTINGS if k not in first]
    for label in run_order:
        spec = SETTINGS[label]
        if only and not any(p in label or p in label.replace(" ", "_") for p in only):
            continue
        succ, mses, its, nsr, raw_norms = [], [], [], [], []
        for i in range(args.n):
            x, y = test.x[i:i + 1], test.y[i:i + 1]
            clf.zero_grad()
            torch.nn.functional.cross_entropy(clf(x), y).backward()
            raw = {n: p.grad.detach().clone() for n, p in clf.named_parameters()}
            raw_norm = math.sqrt(sum(float(g.pow(2).sum()) for g in raw.values()))
            raw_norms.append(raw_norm)
            if spec is None:
                grads = raw
                nsr.append(0.0)
            else:
                kw = dict(spec)
                if kw["clip"] is None:
                    kw["clip"] = raw_norm * (1 + 1e-6)
                cfg = DPConfig(**kw, batch_size=1, seed=i)
                dp = DPSGD(clf, cfg, n=len(test))
                released, info = dp.privatize(x, y)
                dp.close()
                # undo the division by the expected batch size: the per-example release
                grads = {names[id(p)]: g * dp.expected_batch for p, g in zip(dp.params, released)}
                nsr.append(info.noise_std * math.sqrt(n_params) / min(raw_norm, info.clip))
            payload = SharedGradient(weights=weights, gradients=grads, batch_size=1, labels=y)
            res = cpl_attack(clf, payload, CPLConfig(max_iter=args.iters, seed=i), reference=x,
                             reference_labels=y)
            succ.append(float(res.success.float().mean()))
            mses.append(float(res.mse.mean()))
            its.append(int(res.iterations_to_success[0]))
        ok = [it for it in its if it >= 0]
        row = {"setting": label, "config": spec, "asr": sum(succ) / len(succ),
               "mse": sum(mses) / len(mses), "iterations_to_success": its,
               "mean_iterations_successful": sum(ok) / len(ok) if ok else None,
               "noise_to_signal": sum(nsr) / len(nsr), "gradient_norm": sum(raw_norms) / len(raw_norms),
               "n": args.n, "max_iter": args.iters}
        row["setting"] = label + suffix
        keep[label + suffix] = row
        print(f"{label:34s} ASR {row['asr']:.2f}  MSE {row['mse']:.4f}  noise/signal "
              f"{row['noise_to_signal']:.3g}  iters {its}", flush=True)
        order = [k + sfx for k in SETTINGS for sfx in sorted({""} | {r["setting"][len(k):]
                 for r in keep.values() if r["setting"].startswith(k + " [")})]
        out = {"model": "lenet(dlg, sigmoid), U(-0.5,0.5) weights", "attack": "cpl",
               "params": n_params, "command": "python experiments/dp_leakage.py "
               f"--n {args.n} --iters {args.iters} [--only ...]",
               "rows": sorted(keep.values(), key=lambda r: order.index(r["setting"])
                              if r["setting"] in order else len(order))}
        OUT.write_text(json.dumps(out, indent=2))
    print(f"wrote {OUT} ({time.time() - start:.0f}s)")


if __name__ == "__main__":
    main()
