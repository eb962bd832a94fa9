"""Poisoning in federated learning on mnist-5k with cnn7: attack timing, robust aggregation
and a model-replacement backdoor.

    PYTHONPATH=src .venv/bin/python experiments/poisoning_federated.py [--seeds 0 1 2]
        [--only timing aggregator backdoor] [--aggs median krum ...] [--collect]

Setting (Tolpegin et al., 2020, scaled to a shared 2-core CPU):

- data: mnist-5k. The server holds the last 1,000 training images as public data: it
  initialises cnn7 on them (Adam, 2 epochs) and FLTrust takes its 100-image root set from
  them. The first 3,000 are split IID over 10 clients (300 each); the 1,000 test images
  (100 of each class) score the global model.
- federation: all 10 clients every round, 9 rounds, 1 local epoch of plain SGD
  (lr 0.05, batch 16), FedAvg unless stated.
- label flipping: 1 of the 10 clients (10%) relabels all of its 4s as 9 (the pair the
  clean model confuses most, as Tolpegin et al. flip confusable pairs) in every round of
  its timing window (early = rounds 0-2, middle = 3-5, late = 6-8, always). Metrics: the
  recall of class 4 on the 100 test 4s, the share of them predicted 9, and the mean
  probability the model gives 9 on them (finer than one test image).
- aggregators: the late attack under median, trimmed mean (beta 0.1, one value per end),
  Krum, Multi-Krum, Bulyan (f = 1), norm clipping (median norm), FLTrust and the
  statistical detector.
- backdoor: the same client stamps a 3 x 3 white corner patch on half of its non-target
  images, relabelled 0, in the late rounds: data poisoning alone, model replacement
  (update boosted by n = 10) under FedAvg and under norm clipping.

Runs that differ only from round t on share the clean FedAvg rounds before t (the
late-window runs resume from the clean run's weights after round 5). Every FedAvg run
also runs the statistical detector as a monitor (it flags, FedAvg still averages all), so
its precision / recall are known in every timing setting. Each run's result is cached
under .cache/fl_poisoning_cnn7/, so an interrupted grid resumes; `--collect` writes
docs/results/fl_poisoning_cnn7.json with means and spreads over the seeds.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from statistics import mean, pstdev
from typing import Any

import torch

from bastion.data import load
from bastion.federated import FedConfig, MaliciousConfig
from bastion.federated.detect import StatisticalDetector, detection_metrics
from bastion.federated.malicious_study import StudyConfig, poisoned_run
from bastion.fileio import atomic_write
from bastion.models import build_classifier
from bastion.training.fit import TrainConfig, fit

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "results" / "fl_poisoning_cnn7.json"
CACHE = ROOT / ".cache" / "fl_poisoning_cnn7"

CLIENTS, ROUNDS, PUBLIC = 10, 9, 1000
FLIP = MaliciousConfig("label-flip", source=4, target=9)
BACKDOOR = MaliciousConfig("backdoor", target=0, poison_fraction=0.5)
REPLACE = MaliciousConfig("model-replacement", target=0, poison_fraction=0.5)
AGGS = ["median", "trimmed-mean", "krum", "multi-krum", "bulyan", "norm-clip", "fltrust", "detector"]


def fed_config(seed: int, rounds: int = ROUNDS) -> FedConfig:
    return FedConfig(num_clients=CLIENTS, clients_per_round=CLIENTS, rounds=rounds, local_epochs=1,
                     local_lr=0.05, local_batch_size=16, seed=seed, eval_every=rounds, progress=False)


def data() -> tuple[Any, Any, Any]:
    train, test = load("mnist-5k", split="train"), load("mnist-5k", split="test")
    n = len(train)
    public = train.subset(torch.arange(n - PUBLIC, n))
    return train.take(n - PUBLIC), public, test


def model_with(weights: dict[str, torch.Tensor] | None, seed: int, spec: Any) -> Any:
    torch.manual_seed(seed)
    clf = build_classifier("cnn7", spec, 10, {}, device="cpu")
    if weights is not None:
        clf.load_state_dict(weights)
    return clf


def pretrained(seed: int, public: Any, spec: Any) -> dict[str, torch.Tensor]:
    """cnn7 initialised by the server on its public images (cached per seed)."""
    path = CACHE / f"init-seed{seed}.pt"
    if path.exists():
        return torch.load(path)
    clf = model_with(None, seed, spec)
    fit(clf, public, None, TrainConfig(epochs=2, batch_size=32, lr=1e-3, seed=seed, progress=False))
    state = {k: v.detach().clone() for k, v in clf.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


def clean_prefix(seed: int, upto: int, clients: Any, public: Any, test: Any, spec: Any) -> dict[str, torch.Tensor]:
    """Global weights after clean FedAvg rounds 0..upto-1 (cached): the same weights as the
    uninterrupted clean run's after those rounds."""
    if upto == 0:
        return pretrained(seed, public, spec)
    path = CACHE / f"clean-seed{seed}-upto{upto}.pt"
    if path.exists():
        return torch.load(path)
    prev = max([r for r in (0, 3, 6) if r < upto])
    start = clean_prefix(seed, prev, clients, public, test, spec)
    clf = model_with(start, seed, spec)
    res = poisoned_run(clf, clients, test, fed_config(seed, upto), StudyConfig(attackers=0), start_round=prev)
    state = {k: v.detach().clone() for k, v in res["model"].state_dict().items()}
    torch.save(state, path)
    return state


def one(key: str, seed: int, study: StudyConfig, start: int, ctx: tuple) -> dict[str, Any]:
    clients, public, test = ctx
    spec = clients.input_spec()
    path = CACHE / f"{key.replace('/', '_')}-seed{seed}.json"
    if path.exists():
        return json.loads(path.read_text())
    init = clean_prefix(seed, start, clients, public, test, spec)
    clf = model_with(init, seed, spec)
    t0 = time.perf_counter()
    root = public.take(100) if study.aggregator == "fltrust" else None
    r = poisoned_run(clf, clients, test, fed_config(seed), study, root=root, start_round=start,
                     monitor=study.aggregator == "fedavg")
    r.pop("model")
    r.update(key=key, seed=seed, start_round=start, run_seconds=time.perf_counter() - t0)
    atomic_write(path, json.dumps(r))
    print(key, seed, {k: round(r[k], 3) for k in ("clean_accuracy", "source_recall", "backdoor_asr") if k in r},
          {k: round(v, 2) for k, v in (r.get("detection") or r.get("monitor", {}).get("detection", {})).items()
           if k in ("precision", "recall")}, f"{r['run_seconds']:.0f}s", flush=True)
    return r


def grid(only: list[str], aggs: list[str]) -> list[tuple[str, StudyConfig, int]]:
    """(key, study, round the run starts at) for the chosen parts, cheapest first: the
    late-window runs resume from the clean run's weights after round 5."""
    g: list[tuple[str, StudyConfig, int]] = []
    late = ROUNDS - ROUNDS // 3
    if "timing" in only:
        g += [("timing/no attack", StudyConfig(attackers=0, malicious=FLIP), late),
              ("timing/late", StudyConfig(attackers=1, malicious=FLIP, timing="late"), late)]
    if "aggregator" in only:
        for agg in aggs:
            g.append((f"aggregator/{agg}", StudyConfig(attackers=1, malicious=FLIP, timing="late", aggregator=agg,
                                                       f=1), late))
    if "backdoor" in only:
        g += [("backdoor/fedavg/model-replacement", StudyConfig(attackers=1, malicious=REPLACE, timing="late"), late),
              ("backdoor/norm-clip/model-replacement",
               StudyConfig(attackers=1, malicious=REPLACE, timing="late", aggregator="norm-clip"), late),
              ("backdoor/fedavg/backdoor", StudyConfig(attackers=1, malicious=BACKDOOR, timing="late"), late),
              ("backdoor/fedavg/none", StudyConfig(attackers=0, malicious=BACKDOOR), late)]
    if "timing" in only:
        for timing, start in (("middle", ROUNDS // 3), ("early", 0), ("always", 0)):
            g.append((f"timing/{timing}", StudyConfig(attackers=1, malicious=FLIP, timing=timing), start))
    if "full" in only:  # robust rules over all the rounds, not only the attacked ones
        for agg in aggs:
            g.append((f"full/{agg}", StudyConfig(attackers=1, malicious=FLIP, timing="late", aggregator=agg, f=1), 0))
        g.append(("full/krum-clean", StudyConfig(attackers=0, malicious=FLIP, aggregator="krum", f=1), 0))
    return g


def spread(xs: list[float]) -> dict[str, Any]:
    return {"mean": mean(xs), "std": pstdev(xs) if len(xs) > 1 else 0.0, "min": min(xs), "max": max(xs),
            "values": xs}


def replay_monitor(r: dict[str, Any]) -> None:
    """Recompute the monitor's flags from its recorded statistics with today's detector
    defaults (the FedAvg trajectory does not depend on them)."""
    mon = r["monitor"]
    det = StatisticalDetector()
    for rec in mon["records"]:
        det.flag_statistics(rec["round"], rec["clients"],
                            {k: torch.tensor(v, dtype=torch.float64) for k, v in rec["stats"].items()})
    mon["detection"] = detection_metrics(det.flagged_pairs(), {tuple(x) for x in mon["malicious_pairs"]},
                                         det.seen_pairs())


def collect(out: Path) -> None:
    runs: dict[str, list[dict]] = {}
    for p in sorted(CACHE.glob("*.json")):
        r = json.loads(p.read_text())
        if "monitor" in r:
            replay_monitor(r)
        runs.setdefault(r["key"], []).append(r)
    summary = {}
    for key, rs in sorted(runs.items()):
        rs.sort(key=lambda r: r["seed"])
        row: dict[str, Any] = {"seeds": [r["seed"] for r in rs],
                               "clean_accuracy": spread([r["clean_accuracy"] for r in rs])}
        for k in ("source_recall", "source_to_target", "source_target_prob", "backdoor_asr"):
            if k in rs[0]:
                row[k] = spread([r[k] for r in rs])
        for name in ("detection", "monitor"):
            if name in rs[0]:
                det = [r[name]["detection"] if name == "monitor" else r[name] for r in rs]
                row[name] = {k: spread([d[k] for d in det]) for k in ("precision", "recall", "f1")}
        summary[key] = row
    slim = {k: [{kk: vv for kk, vv in r.items() if kk != "monitor"} | (
        {"monitor_detection": r["monitor"]["detection"]} if "monitor" in r else {}) for r in rs]
        for k, rs in runs.items()}
    doc = {"setting": {"data": "mnist-5k", "model": "cnn7", "public_server_images": PUBLIC,
                       "init": "Adam lr 1e-3, 2 epochs, batch 32 on the public images",
                       "clients": CLIENTS, "per_round": CLIENTS, "client_images": 300, "partition": "iid",
                       "rounds": ROUNDS, "local_epochs": 1, "local_lr": 0.05, "batch": 16,
                       "label_flip": "1 of 10 clients, all its 4s -> 9", "backdoor": "1 of 10 clients, 3x3 "
                       "patch on half its non-target images -> 0", "windows": {"early": [0, 3], "middle": [3, 6],
                                                                              "late": [6, 9]}},
           "summary": summary, "runs": slim}
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, json.dumps(doc, indent=1))

    def fmt(s: dict) -> str:
        return f"{s['mean']:.3f} +- {s['std']:.3f} ({', '.join(f'{v:.2f}' for v in s['values'])})"
    print("| setting | seeds | clean acc | source recall (4) | 4 -> 9 | P(9 given a 4) | detector P / R / F1 |\n"
          "|---|---|---|---|---|---|---|")
    for key, row in summary.items():
        if "source_recall" in row:
            d = row.get("detection") or row.get("monitor")
            det = " / ".join(f"{d[k]['mean']:.2f}" for k in ("precision", "recall", "f1")) if d else ""
            print(f"| {key} | {len(row['seeds'])} | {fmt(row['clean_accuracy'])} | {fmt(row['source_recall'])} | "
                  f"{fmt(row['source_to_target'])} | {fmt(row['source_target_prob'])} | {det} |")
    print("\n| backdoor setting | seeds | clean acc | backdoor ASR |\n|---|---|---|---|")
    for key, row in summary.items():
        if "backdoor_asr" in row:
            print(f"| {key} | {len(row['seeds'])} | {fmt(row['clean_accuracy'])} | {fmt(row['backdoor_asr'])} |")
    print(f"wrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--only", nargs="+", default=["timing", "aggregator", "backdoor"],
                    choices=["timing", "aggregator", "backdoor", "full"])
    ap.add_argument("--aggs", nargs="+", default=AGGS, choices=AGGS)
    ap.add_argument("--collect", action="store_true", help="only gather the cached runs into --out")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    if args.collect:
        collect(args.out)
        return
    torch.set_num_threads(1)
    ctx = data()
    for seed in args.seeds:
        for key, study, start in grid(args.only, args.aggs):
            one(key, seed, study, start, ctx)


if __name__ == "__main__":
    main()
