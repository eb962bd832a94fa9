"""Poisoning in federated learning on mnist-5k: attack timing, robust aggregation and a
model-replacement backdoor.

    PYTHONPATH=src .venv/bin/python experiments/poisoning_federated.py [--seeds 0 1] [--rounds 20]
        [--attackers 2] [--only timing aggregator backdoor] [--out docs/results/fl_poisoning.json]

Setting: the zoo MLP (784-256-256-10; cnn7 is too slow for this grid on a shared 2-core
machine), mnist-5k train (4,000) split IID over 20 clients, all 20 sampled every round,
20 rounds, 2 local epochs of SGD (lr 0.1, batch 32). 10% of the clients (2 of 20) are
malicious (`--attackers 6` repeats the grid at 30%, where the differences are larger
than the test set's resolution of one source-class example = 0.01 recall).

- timing: label flipping 7 -> 1 (all of the attackers' 7s) in the early / middle / late
  third of the rounds or always, FedAvg; source-class (7) recall on the 100 test 7s.
- aggregators: the late label-flipping attack under FedAvg, median, trimmed mean
  (beta 0.1), Krum, Multi-Krum, Bulyan (f = 2), norm clipping (median norm), FLTrust
  (100 root examples withheld from the clients) and the statistical detector (with its
  flag precision / recall over the (round, client) updates).
- backdoor: one attacker (5%) stamping a 3x3 white corner patch on half of its non-target
  examples, relabelled 0, in the late third: plain data poisoning vs model replacement
  (update boosted by n = 20) under FedAvg, norm clipping, Krum and the detector, and
  constrain-and-scale (boosted, projected onto the median norm) under norm clipping.

Writes docs/results/fl_poisoning.json (every run's figures, the means over seeds) and
prints the markdown tables of docs/federated-poisoning.md. On the shared 2-core machine
the grid (23 runs per seed) takes about 10 minutes per seed.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from statistics import mean

import torch

from bastion.data import load
from bastion.federated import FedConfig
from bastion.federated.malicious_study import StudyConfig, poisoned_run
from bastion.fileio import atomic_write
from bastion.models import build_classifier

OUT = Path(__file__).resolve().parents[1] / "docs" / "results" / "fl_poisoning.json"

TIMING = [("no attack", dict(attackers=0)), ("early", dict(timing="early")), ("middle", dict(timing="middle")),
          ("late", dict(timing="late")), ("always", dict(timing="always"))]
AGGS = ["fedavg", "median", "trimmed-mean", "krum", "multi-krum", "bulyan", "norm-clip", "fltrust", "detector"]
BACKDOOR = [("fedavg", "backdoor"), ("fedavg", "model-replacement"), ("norm-clip", "model-replacement"),
            ("krum", "model-replacement"), ("detector", "model-replacement"), ("median", "model-replacement"),
            ("norm-clip", "constrain-scale")]


def run(study: StudyConfig, seed: int, rounds: int, train, test) -> dict:
    torch.manual_seed(seed)
    clf = build_classifier("mlp", train.input_spec(), 10, {}, device="cpu")
    fed = FedConfig(num_clients=20, clients_per_round=20, rounds=rounds, local_epochs=2, local_lr=0.1,
                    local_batch_size=32, seed=seed, progress=False)
    out = poisoned_run(clf, train, test, fed, study)
    out.pop("model")
    return out


def _save(runs: dict, args: argparse.Namespace) -> None:
    """Partial results after every run (a long grid on a shared machine may be cut short)."""
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out.with_suffix(".partial.json"), json.dumps({"seeds": args.seeds, "runs": runs}, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--attackers", type=int, default=2, help="label-flipping clients of the 20")
    ap.add_argument("--only", nargs="+", default=["timing", "aggregator", "backdoor"],
                    choices=["timing", "aggregator", "backdoor"])
    ap.add_argument("--aggs", nargs="+", default=AGGS, choices=AGGS, help="aggregators of the aggregator grid")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    torch.set_num_threads(1)
    train, test = load("mnist-5k", split="train"), load("mnist-5k", split="test")
    t0 = time.perf_counter()
    runs: dict[str, list[dict]] = {}

    def go(key: str, study: StudyConfig) -> None:
        for s in args.seeds:
            r = run(study, s, args.rounds, train, test)
            runs.setdefault(key, []).append(r)
            _save(runs, args)
            print(key, s, {k: r[k] for k in ("clean_accuracy", "source_recall", "backdoor_asr") if k in r},
                  r.get("detection", ""), f"{r['wall_time']:.0f}s", flush=True)

    m = args.attackers
    if "timing" in args.only:
        for name, kw in TIMING:
            go(f"timing/{name}", StudyConfig(attackers=kw.get("attackers", m), timing=kw.get("timing", "always")))
    if "aggregator" in args.only:
        for agg in args.aggs:
            # Bulyan needs n >= 4f + 3: with 20 clients it tolerates at most f = 4
            f = min(m, 4) if agg == "bulyan" else m
            go(f"aggregator/{agg}", StudyConfig(attackers=m, timing="late", aggregator=agg, f=f))
        go("aggregator/fedavg-clean", StudyConfig(attackers=0))
    if "backdoor" in args.only:
        for agg, attack in BACKDOOR:
            go(f"backdoor/{agg}/{attack}", StudyConfig(attackers=1, attack=attack, target=0, poison_fraction=0.5,
                                                       timing="late", aggregator=agg, f=1))
        go("backdoor/fedavg/none", StudyConfig(attackers=0, attack="backdoor", target=0))

    summary = {}
    for key, rs in runs.items():
        row = {"clean_accuracy": mean(r["clean_accuracy"] for r in rs)}
        for k in ("source_recall", "source_to_target", "backdoor_asr"):
            if k in rs[0]:
                row[k] = mean(r[k] for r in rs)
        if "detection" in rs[0]:
            for k in ("precision", "recall", "f1"):
                row[f"detector_{k}"] = mean(r["detection"][k] for r in rs)
        summary[key] = row
    doc = {"setting": {"data": "mnist-5k", "model": "mlp 784-256-256-10", "clients": 20, "per_round": 20,
                       "rounds": args.rounds, "local_epochs": 2, "local_lr": 0.1, "batch": 32,
                       "attackers_label_flip": m, "attackers_backdoor": 1, "source": 7, "target_flip": 1,
                       "target_backdoor": 0, "seeds": args.seeds},
           "summary": summary, "runs": runs, "wall_time_s": time.perf_counter() - t0}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out, json.dumps(doc, indent=1))
    print("\n| setting | clean acc | source recall (7) | 7 -> 1 | detector P / R |\n|---|---|---|---|---|")
    for key, row in summary.items():
        if "source_recall" in row:
            det = (f"{row['detector_precision']:.2f} / {row['detector_recall']:.2f}"
                   if "detector_precision" in row else "")
            print(f"| {key} | {row['clean_accuracy']:.3f} | {row['source_recall']:.3f} | "
                  f"{row['source_to_target']:.3f} | {det} |")
    print("\n| backdoor setting | clean acc | backdoor ASR |\n|---|---|---|")
    for key, row in summary.items():
        if "backdoor_asr" in row:
            print(f"| {key} | {row['clean_accuracy']:.3f} | {row['backdoor_asr']:.3f} |")
    print(f"wrote {args.out} in {doc['wall_time_s']:.0f}s")


if __name__ == "__main__":
    main()
