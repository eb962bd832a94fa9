"""Gradient-leakage resilience of federated DP: CPL at the type-0, type-1 and type-2 points
against non-private FedAvg, Fed-SDP (client level) and Fed-CDP (instance level, fixed and
dyn[S,sigma]), with the accuracy and epsilon of each setting.

    .venv/bin/python experiments/fed_dp_leakage.py [--attacks 3] [--max-iter 50] [--only LABEL,...]

Leakage: round 0 of FedAvg on the untrained sigmoid LeNet of DLG/CPL (U(-0.5, 0.5)),
`--clients` clients holding `--per-client` mnist-5k images each, `--sampled` sampled,
one local step (local batch = the client's data, lr 0.01). A PayloadCollector takes the
type-2 payload (one example's gradient at local step 0, as the setting releases it), the
type-1 payload (the uploaded update) and the type-0 payload (the new global model); CPL
(patterned init, L-BFGS, `--max-iter` iterations) reconstructs from each. Success:
normalised MSE < 0.7 against the victim (for type 0: against any example behind the
aggregate).

Utility: the same setting trains the MNIST MLP (hidden 128) over 50 clients x 60
examples, 10 sampled per round, `--rounds` rounds, local batch 20, one local epoch,
lr 0.1; test accuracy on 1,000 mnist-5k test images and epsilon (delta 1e-5) from the
run's accountant: Fed-SDP client level at q = K/N per round; Fed-CDP the worst client's
instance-level epsilon. Writes docs/results/fed_dp_leakage.json (rows merged by label).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from leakage_common import RESULTS, mean, save, victim

from bastion.attacks.privacy.leakage import CPLConfig, cpl_attack
from bastion.core import InputSpec
from bastion.data import load
from bastion.federated import FedConfig, PayloadCollector, run_fedavg
from bastion.federated.dp import FedCDP, FedCDPConfig, FedSDP, FedSDPConfig
from bastion.models import build_classifier

#: label -> (kind, parameters); kind None = non-private
SETTINGS: dict[str, tuple[str | None, dict[str, Any]]] = {
    "non-private FedAvg": (None, {}),
    "Fed-SDP S=1 sigma=1 (server noise)": ("sdp", {"clip": 1.0, "sigma": 1.0, "noise": "server"}),
    "Fed-SDP S=1 sigma=1 (client noise)": ("sdp", {"clip": 1.0, "sigma": 1.0, "noise": "client"}),
    "Fed-CDP fixed C=1 sigma=1": ("cdp", {"clip": 1.0, "sigma": 1.0, "variant": "baseline"}),
    "Fed-CDP dyn[S,sigma] C0=1 sigma0=1 (exp)": ("cdp", {"clip": 1.0, "sigma": 1.0,
                                                          "variant": "dyn-s-sigma", "decay": "exp"}),
    "Fed-CDP fixed C=4 sigma=1": ("cdp", {"clip": 4.0, "sigma": 1.0, "variant": "baseline"}),
    "Fed-CDP dyn[S,sigma] C0=4 sigma0=1 (exp)": ("cdp", {"clip": 4.0, "sigma": 1.0,
                                                          "variant": "dyn-s-sigma", "decay": "exp"}),
}
OUT = RESULTS / "fed_dp_leakage.json"


def nmse_matrix(rec: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    r = ref.flatten(1)
    m = torch.cdist(rec.flatten(1), r).pow(2) / r.shape[1]
    return m / r.var(1, unbiased=False).clamp_min(1e-8)[None, :]


def private_parts(kind: str | None, params: dict[str, Any], fed: FedConfig, seed: int
                  ) -> tuple[dict[str, Any], Any]:
    """run_fedavg keyword arguments of a setting and the object that accounts it."""
    if kind == "sdp":
        sdp = FedSDP(FedSDPConfig(**params, noise_seed=seed), fed)
        return {"aggregator": sdp, "update_transforms": [sdp.clip_update]}, sdp
    if kind == "cdp":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            cdp = FedCDP(FedCDPConfig(**params, poisson=False, noise_seed=seed), fed)
        return {"local_trainer": cdp}, cdp
    return {}, None


def attack(clf: Any, ev: Any, batch: int, iters: int, seed: int, any_match: bool) -> dict[str, float]:
    t = time.perf_counter()
    if any_match:
        res = cpl_attack(clf, ev.payload, CPLConfig(max_iter=iters, batch_size=batch, seed=seed))
        m = nmse_matrix(res.reconstruction.cpu(), ev.victim_x.cpu())
        return {"asr": float((m.amin(1) < 0.7).float().mean()), "nmse": float(m.amin(1).mean()),
                "seconds": time.perf_counter() - t}
    res = cpl_attack(clf, ev.payload, CPLConfig(max_iter=iters, batch_size=batch, seed=seed),
                     reference=ev.victim_x, reference_labels=ev.victim_y)
    return {"asr": float(res.success.float().mean()), "nmse": float(res.nmse.mean()),
            "seconds": time.perf_counter() - t}


def leakage(kind: str | None, params: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    train = load("mnist-5k", "train").take(args.clients * args.per_client)
    clf = victim("lenet-sigmoid")
    fed = FedConfig(num_clients=args.clients, clients_per_round=args.sampled, rounds=1,
                    local_lr=0.01, local_batch_size=args.per_client, seed=0, progress=False)
    kw, _ = private_parts(kind, params, fed, seed=1)
    col = PayloadCollector(types=(0, 1, 2), rounds=(0,), steps=(0,), limit=args.attacks)
    run_fedavg(clf, train, None, fed, hooks=[col], **kw)
    out: dict[str, Any] = {}
    rows = [attack(clf, ev, 1, args.max_iter, i, False) for i, ev in enumerate(col.events[2])]
    out["2"] = {"payloads": len(rows), "batch": 1, **{k: mean([r[k] for r in rows])
                                                     for k in ("asr", "nmse", "seconds")}}
    rows = [attack(clf, ev, int(ev.victim_x.shape[0]), args.max_iter, i, False)
            for i, ev in enumerate(col.events[1])]
    out["1"] = {"payloads": len(rows), "batch": args.per_client,
                **{k: mean([r[k] for r in rows]) for k in ("asr", "nmse", "seconds")}}
    ev = col.events[0][0]
    b = int(ev.victim_x.shape[0])
    r = attack(clf, ev, b, args.max_iter, 0, True)
    out["0"] = {"payloads": 1, "batch": b, **r}
    return out


def utility(kind: str | None, params: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    train = load("mnist-5k", "train").take(3000)
    test = load("mnist-5k", "test").take(1000)
    torch.manual_seed(0)
    clf = build_classifier("mlp", InputSpec((1, 28, 28)), 10, {"hidden": [128]}, device="cpu")
    fed = FedConfig(num_clients=50, clients_per_round=10, rounds=args.rounds, local_lr=0.1,
                    local_batch_size=20, seed=0, progress=False)
    kw, acct = private_parts(kind, params, fed, seed=2)
    t = time.perf_counter()
    res = run_fedavg(clf, train, test, fed, **kw)
    priv = acct.privacy() if acct is not None else {"epsilon": math.inf}
    return {"test_accuracy": res.test_accuracy, "epsilon": priv["epsilon"],
            "level": priv.get("level"), "accountants": priv.get("accountants"),
            "seconds": time.perf_counter() - t}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--per-client", type=int, default=1)
    ap.add_argument("--sampled", type=int, default=4)
    ap.add_argument("--attacks", type=int, default=3, help="payloads attacked per type")
    ap.add_argument("--max-iter", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--only", default="")
    ap.add_argument("--skip-utility", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    out: dict[str, Any] = {"rows": []}
    if OUT.exists():
        out = json.loads(OUT.read_text())
    keep = {r["setting"]: r for r in out.get("rows", [])}
    only = [p.strip() for p in args.only.split(",") if p.strip()]
    for label, (kind, params) in SETTINGS.items():
        if only and not any(p in label for p in only):
            continue
        row: dict[str, Any] = {"setting": label, "kind": kind or "none", "params": params}
        row["leakage"] = leakage(kind, params, args)
        print(label, {t: round(v["asr"], 2) for t, v in row["leakage"].items()}, flush=True)
        if not args.skip_utility:
            row["utility"] = utility(kind, params, args)
            print("   accuracy", row["utility"]["test_accuracy"], "epsilon", row["utility"]["epsilon"],
                  flush=True)
        keep[label] = row
        order = list(SETTINGS)
        payload = {"command": "python experiments/fed_dp_leakage.py " + " ".join(sys.argv[1:]),
                   "leakage_setup": {"model": "lenet(dlg, sigmoid) U(-0.5,0.5)", "attack": "cpl",
                                     "clients": args.clients, "per_client": args.per_client,
                                     "sampled": args.sampled, "max_iter": args.max_iter,
                                     "success": "nmse < 0.7"},
                   "utility_setup": {"model": "mlp hidden 128", "clients": 50, "per_client": 60,
                                     "sampled": 10, "rounds": args.rounds, "local_batch": 20,
                                     "local_lr": 0.1, "delta": 1e-5},
                   "rows": sorted(keep.values(), key=lambda r: order.index(r["setting"])
                                  if r["setting"] in order else len(order))}
        save("fed_dp_leakage", payload)
    print(OUT)


if __name__ == "__main__":
    main()
