"""Leakage type 0 versus 1 versus 2 in a federated simulation with 10 clients
(dissertation ch. 5: type 2 = per-example gradients inside local SGD, type 1 = a
client's update before upload, type 0 = the server's aggregate).

    .venv/bin/python experiments/leakage_types.py [--per-client 4] [--attacked 5]

FedAvg round 0 of the untrained sigmoid LeNet (U(-0.5, 0.5)) over 10 IID clients holding
`per-client` mnist-5k training images each, local SGD lr 0.01, one local epoch, in two
settings: local batch = all local data (1 local step) and local batch 2 (2 local steps).
CPL (patterned, L-BFGS) then attacks the payloads collected by a PayloadCollector hook:
type 2 with batch 1, type 1 with batch = the client's examples, type 0 with batch 8
(the aggregate mixes all 10 x per-client examples; a reconstruction counts when it
matches any of them). Success: nmse < 0.7. Writes docs/results/leakage_types.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from leakage_common import mean, save, victim

from bastion.attacks.privacy.leakage import CPLConfig, cpl_attack
from bastion.data import load
from bastion.federated import FedConfig, PayloadCollector, run_fedavg


def nmse_matrix(rec: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    r = ref.flatten(1)
    m = torch.cdist(rec.flatten(1), r).pow(2) / r.shape[1]
    return m / r.var(1, unbiased=False).clamp_min(1e-8)[None, :]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-client", type=int, default=4)
    ap.add_argument("--attacked", type=int, default=5, help="clients attacked for types 2 and 1")
    ap.add_argument("--max-iter", type=int, default=50)
    args = ap.parse_args()
    train = load("mnist-5k", "train").take(10 * args.per_client)
    out: dict = {"clients": 10, "per_client": args.per_client, "success": "nmse < 0.7",
                 "settings": []}
    for local_bs in (args.per_client, 2):
        clf = victim("lenet-sigmoid")
        col = PayloadCollector(types=(0, 1, 2), rounds=(0,), clients=range(args.attacked),
                               steps=(0,), limit=10 * args.per_client)
        cfg = FedConfig(num_clients=10, clients_per_round=10, rounds=1, local_lr=0.01,
                        local_batch_size=local_bs, seed=0)
        run_fedavg(clf, train, None, cfg, hooks=[col])
        setting: dict = {"local_batch_size": local_bs,
                         "local_steps": -(-args.per_client // local_bs), "types": {}}
        # type 2: one example's gradient at the first local step of each attacked client
        t2 = [e for e in col.events[2] if e.client is not None][: args.attacked]
        rows = []
        for i, ev in enumerate(t2):
            t = time.perf_counter()
            res = cpl_attack(clf, ev.payload, CPLConfig(max_iter=args.max_iter, seed=i),
                             reference=ev.victim_x, reference_labels=ev.victim_y)
            rows.append((float(res.success.float().mean()), float(res.nmse.mean()), float(res.psnr.mean()),
                         res.label_accuracy, time.perf_counter() - t))
        setting["types"]["2"] = {"payloads": len(rows), "batch": 1, "asr": mean([r[0] for r in rows]),
                                 "nmse": mean([r[1] for r in rows]), "psnr": mean([r[2] for r in rows]),
                                 "label_accuracy": mean([r[3] for r in rows]),
                                 "seconds": mean([r[4] for r in rows])}
        print(local_bs, "type2", setting["types"]["2"], flush=True)
        # type 1: the client's whole update
        rows = []
        for i, ev in enumerate(col.events[1][: args.attacked]):
            t = time.perf_counter()
            b = int(ev.victim_x.shape[0])
            res = cpl_attack(clf, ev.payload, CPLConfig(max_iter=args.max_iter, batch_size=b, seed=i),
                             reference=ev.victim_x, reference_labels=ev.victim_y)
            rows.append((float(res.success.float().mean()), float(res.nmse.mean()), float(res.psnr.mean()),
                         res.label_accuracy, time.perf_counter() - t))
        setting["types"]["1"] = {"payloads": len(rows), "batch": args.per_client,
                                 "asr": mean([r[0] for r in rows]), "nmse": mean([r[1] for r in rows]),
                                 "psnr": mean([r[2] for r in rows]),
                                 "label_accuracy": mean([r[3] for r in rows]),
                                 "seconds": mean([r[4] for r in rows])}
        print(local_bs, "type1", setting["types"]["1"], flush=True)
        # type 0: the server aggregate of all 10 clients
        ev = col.events[0][0]
        t = time.perf_counter()
        res = cpl_attack(clf, ev.payload, CPLConfig(max_iter=args.max_iter, batch_size=8))
        m = nmse_matrix(res.reconstruction.cpu(), ev.victim_x.cpu())
        setting["types"]["0"] = {"payloads": 1, "batch": 8, "examples_behind": int(ev.victim_x.shape[0]),
                                 "asr": float((m.amin(1) < 0.7).float().mean()),
                                 "examples_recovered": float((m.amin(0) < 0.7).float().mean()),
                                 "nmse": float(m.amin(1).mean()),
                                 "seconds": time.perf_counter() - t}
        print(local_bs, "type0", setting["types"]["0"], flush=True)
        out["settings"].append(setting)
        save("leakage_types", out)
    print(save("leakage_types", out))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
