"""Poisoning and backdoors on mnist-5k with cnn7: BadNets and the clean-label backdoor at
p = 5%, Neural Cleanse detection and its two mitigations, fine-pruning, STRIP, and
activation clustering / spectral signatures recall of the poisoned indices at p = 10%.

    PYTHONPATH=src python experiments/poisoning_central.py [--epochs 5] [--out docs/results/poisoning_central.json]

Trained models are cached in .cache/poisoning-central/ (delete it to retrain)."""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from bastion.attacks.poisoning import Trigger, badnets, clean_label
from bastion.data import Dataset, load
from bastion.defenses.backdoor import (
    ActivationClusteringConfig,
    FinePruningConfig,
    NeuralCleanseConfig,
    Strip,
    UnlearnConfig,
    activation_clustering,
    fine_prune,
    neural_cleanse,
    prune_neurons,
    spectral_signatures,
    unlearn,
)
from bastion.fileio import atomic_write, strict_json
from bastion.metrics.poisoning import attack_success_rate, detection_scores
from bastion.models import build_classifier, load_classifier, save_classifier
from bastion.training import TrainConfig, fit

CACHE = Path(".cache/poisoning-central")
TARGET = 0


def log(*a: Any) -> None:
    print(time.strftime("%H:%M:%S"), *a, file=sys.stderr, flush=True)


def train(data: Dataset, test: Dataset, tag: str, epochs: int, seed: int = 0) -> tuple[Any, float]:
    key = hashlib.sha1(f"v2-{tag}-{epochs}-{seed}-{data.x.sum():.4f}-{data.y.sum()}".encode()).hexdigest()[:10]
    path = CACHE / f"cnn7-{tag}-{key}.st"
    if path.exists():
        clf = load_classifier(path, device="auto")
        return clf, float(clf.meta.get("train_time_s", float("nan")))
    torch.manual_seed(seed)
    clf = build_classifier("cnn7", data.input_spec(), data.num_classes, device="auto")
    t = time.perf_counter()
    fit(clf, data, None, TrainConfig(epochs=epochs, batch_size=64, seed=seed, progress=False))
    dt = time.perf_counter() - t
    CACHE.mkdir(parents=True, exist_ok=True)
    save_classifier(path, clf, dataset="mnist-5k", train_time_s=dt)
    log(f"trained {tag} in {dt:.0f} s")
    return clf, dt


def _f(v: Any, pct: bool = True) -> str:
    if v is None:
        return "-"
    return f"{100 * v:.1f}%" if pct else f"{v:.2f}"


def render(res: dict[str, Any]) -> str:
    """Markdown tables of a results file (for docs/poisoning.md)."""
    out = ["| run | poisons | clean accuracy | accuracy lost | ASR |", "|---|---|---|---|---|"]
    c = res.get("clean", {})
    out.append(f"| clean | 0 | {_f(c.get('clean_accuracy'))} | - | {_f(c.get('asr_of_trigger'))} |")
    for key, name in (("badnets_p5", "BadNets p = 5%"), ("clean_label_p5", "clean-label p = 5%, eps 0.3"),
                      ("clean_label_p5_eps0", "clean-label p = 5%, eps 0")):
        r = res.get(key)
        if r:
            out.append(f"| {name} | {r['n_poisoned']} | {_f(r['clean_accuracy'])} | "
                       f"{_f(r.get('clean_accuracy_lost'))} | {_f(r['asr'])} |")
    out += ["", "| repair of the BadNets model | clean accuracy | ASR | notes |", "|---|---|---|---|"]
    for key, name in (("unlearning", "NC unlearning"), ("neuron_pruning", "NC neuron pruning"),
                      ("fine_pruning", "fine-pruning")):
        r = res.get(key)
        if r:
            note = (f"{r.get('stamped', '')} stamped of {r.get('defender_clean_examples', '')}" if key == "unlearning"
                    else f"{r.get('pruned')} of {r.get('neurons', r.get('channels'))} pruned")
            out.append(f"| {name} | {_f(r['clean_accuracy'])} | {_f(r['asr'])} | {note} |")
    for key in ("neural_cleanse_badnets_p5", "neural_cleanse_clean"):
        r = res.get(key)
        if r:
            out += ["", f"Neural Cleanse on the {'BadNets' if 'badnets' in key else 'clean'} model "
                        f"({r['epochs_run']} epochs, {r['wall_time_s']:.0f} s): flagged {r['flagged']}, "
                        f"smallest trigger class {r.get('smallest_trigger_class')}",
                    "", "| class | " + " | ".join(str(k) for k in r["classes"]) + " |",
                    "|---|" + "---|" * len(r["classes"]),
                    "| L1 | " + " | ".join(f"{v:.1f}" for v in r["l1"]) + " |",
                    "| anomaly | " + " | ".join(f"{v:.2f}" for v in r["anomaly"]) + " |"]
    for key in [k for k in res if k.startswith("detection_")]:
        r = res[key]
        out += ["", f"Detection, {key[len('detection_'):]} ({r['n_poisoned']} poisons, "
                    f"{_f(r['share_of_target_class'])} of the target class, ASR {_f(r['asr'])}):", "",
                "| method | precision | recall | F1 |", "|---|---|---|---|"]
        for m, v in r.items():
            if isinstance(v, dict) and "recall" in v:
                tc = v.get("target_class_only")
                tgt = f" (target class: {_f(tc['precision'])} / {_f(tc['recall'])})" if tc else ""
                out.append(f"| {m} | {_f(v['precision'])}{tgt} | {_f(v['recall'])} | {_f(v['f1'])} |")
    s = res.get("strip")
    if s:
        out += ["", f"STRIP on the BadNets model: {_f(s['detection_rate_triggered'])} of triggered inputs flagged, "
                    f"{_f(s['false_rejection_clean'])} of clean inputs rejected (threshold at 1% FRR)."]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--nc-epochs", type=int, default=20)
    ap.add_argument("--out", default="docs/results/poisoning_central.json")
    ap.add_argument("--baseline", action="store_true", help="also train the eps = 0 clean-label baseline")
    ap.add_argument("--trigger", default="square")
    ap.add_argument("--trigger-size", type=int, default=4)
    ap.add_argument("--only", default=None, help="train one model (clean | badnets5 | cleanlabel5) and stop")
    ap.add_argument("--p10", action="store_true", help="also train and scan BadNets models at p = 10%%")
    ap.add_argument("--nc-clean", action="store_true", help="also run Neural Cleanse on the clean model")
    ap.add_argument("--render", action="store_true", help="print the tables of --out and stop")
    ap.add_argument("--reuse", action="store_true",
                    help="keep --out's clean-label entry when its surrogate model is not cached")
    args = ap.parse_args()
    if args.render:
        print(render(json.loads(Path(args.out).read_text())))
        return
    tr, te = load("mnist-5k", "train"), load("mnist-5k", "test")
    trig = Trigger(kind=args.trigger, size=args.trigger_size)
    prev = json.loads(Path(args.out).read_text()) if args.reuse and Path(args.out).exists() else {}
    res: dict[str, Any] = {k: v for k, v in prev.items() if k == "clean_label_p5"}
    res["setup"] = {"data": "mnist-5k", "model": "cnn7", "epochs": args.epochs, "target": TARGET,
                                     "trigger": trig.to_dict(), "n_train": len(tr), "n_test": len(te),
                                     "device": str(torch.device("cuda" if torch.cuda.is_available() else "cpu")),
                                     "threads": torch.get_num_threads()}

    def save() -> None:
        atomic_write(args.out, strict_json(res))

    def asr(m: Any) -> float:
        return attack_success_rate(m, te.x, te.y, trig, TARGET)

    if args.only == "cleanlabel5":     # the attacker's surrogate: the first run's clean model (no normalisation)
        sur = load_classifier(sorted(CACHE.glob("cnn7-clean-f7*.st"))[0], device="auto")
        cl = clean_label(tr, sur, 0.05, target=TARGET, trigger=trig, eps=0.3, steps=20, seed=0)
        train(cl.data, te, "cleanlabel5", args.epochs)
        return
    if args.only == "badnets5":
        train(badnets(tr, 0.05, target=TARGET, trigger=trig, seed=0).data, te, "badnets5", args.epochs)
        return
    clean, t_clean = train(tr, te, "clean", args.epochs)
    if args.only == "clean":
        return
    acc0 = clean.accuracy(te.x, te.y)
    res["clean"] = {"clean_accuracy": acc0, "asr_of_trigger": asr(clean), "train_time_s": t_clean}
    log("clean", res["clean"])
    save()

    # --- BadNets at p = 5%
    bd = badnets(tr, 0.05, target=TARGET, trigger=trig, seed=0)
    m_bd, _ = train(bd.data, te, "badnets5", args.epochs)
    res["badnets_p5"] = {"n_poisoned": bd.record.n_poisoned, "clean_accuracy": m_bd.accuracy(te.x, te.y),
                         "asr": asr(m_bd)}
    res["badnets_p5"]["clean_accuracy_lost"] = acc0 - res["badnets_p5"]["clean_accuracy"]
    log("badnets5", res["badnets_p5"])
    save()

    def detect(tag: str, pz: Any, m: Any) -> None:
        share = pz.record.n_poisoned / int((pz.data.y == TARGET).sum())
        row: dict[str, Any] = {"fraction_of_training_set": pz.fraction, "share_of_target_class": share,
                               "n_poisoned": pz.record.n_poisoned, "clean_accuracy": m.accuracy(te.x, te.y),
                               "asr": asr(m)}
        for red in ("ica", "pca"):
            for decide in ("persistence", "size"):
                t = time.perf_counter()
                ac = activation_clustering(m, pz.data.x, pz.data.y,
                                           ActivationClusteringConfig(reducer=red, decide=decide))
                key = f"ac_{red}" if decide == "persistence" else f"ac_{red}_size"
                row[key] = {**detection_scores(ac["flagged_index"], pz.record.index, len(tr)),
                            "flagged_classes": ac["flagged_classes"], "time_s": time.perf_counter() - t,
                            "per_class": ac["per_class"]}
        for eps in sorted({0.1, round(share, 3)}):
            for rounds in (1, 10):
                t = time.perf_counter()
                sp = spectral_signatures(m, pz.data.x, pz.data.y, eps=eps, rounds=rounds)
                key = f"spectral_eps{eps}" + ("" if rounds == 1 else f"_rounds{rounds}")
                row[key] = {**detection_scores(sp["flagged_index"], pz.record.index, len(tr)),
                            "time_s": time.perf_counter() - t}
                tgt = [i for i in sp["flagged_index"] if int(pz.data.y[i]) == TARGET]
                row[key]["target_class_only"] = detection_scores(tgt, pz.record.index, len(tr))
        res[f"detection_{tag}"] = row
        log("detect", tag, {k: (v if not isinstance(v, dict) else {a: v.get(a) for a in ("precision", "recall")})
                            for k, v in row.items()})
        save()

    detect("badnets_p5", bd, m_bd)

    # --- Neural Cleanse on the BadNets model, its mitigations, fine-pruning, STRIP
    x_nc = te.x[:300]
    ncfg = NeuralCleanseConfig(epochs=args.nc_epochs)
    nc_bd = neural_cleanse(m_bd, x_nc, ncfg, progress=False)
    res["neural_cleanse_badnets_p5"] = nc_bd.summary()
    log("NC badnets", nc_bd.flagged, [round(a, 2) for a in nc_bd.anomaly.tolist()], f"{nc_bd.wall_time:.0f}s")
    save()
    sus = nc_bd.suspected if nc_bd.suspected is not None else nc_bd.smallest   # none flagged: the smallest trigger
    mask, pattern = nc_bd.trigger(sus)
    held = te.subset(torch.arange(300, 1000))          # evaluation inputs the defender did not use
    defender = tr.subset(torch.randperm(len(tr), generator=torch.Generator().manual_seed(1))[:800])

    def eval_on(m: Any) -> dict[str, float]:
        return {"clean_accuracy": m.accuracy(te.x, te.y), "asr": asr(m)}

    m_un = copy.deepcopy(m_bd)
    info = unlearn(m_un, defender, mask, pattern, UnlearnConfig())
    res["unlearning"] = {**eval_on(m_un), **info, "defender_clean_examples": len(defender), "class_used": sus}
    res["unlearning"]["clean_accuracy_lost"] = res["badnets_p5"]["clean_accuracy"] - res["unlearning"]["clean_accuracy"]
    log("unlearn", res["unlearning"])
    m_pr = copy.deepcopy(m_bd)
    info = prune_neurons(m_pr, x_nc, mask, pattern, sus)
    info.pop("pruned_index")
    res["neuron_pruning"] = {**eval_on(m_pr), **info}
    log("prune", res["neuron_pruning"])
    m_fp = copy.deepcopy(m_bd)
    info = fine_prune(m_fp, defender, held, FinePruningConfig())
    res["fine_pruning"] = {**eval_on(m_fp), **info}
    log("fine-prune", res["fine_pruning"])
    save()
    strip = Strip(m_bd, te.x[600:], n_overlays=32, frr=0.01).fit(te.x[:300])
    nontarget = held.x[held.y != TARGET]
    res["strip"] = {"threshold": strip.threshold, "frr_target": 0.01,
                    "detection_rate_triggered": float(strip.flag(trig.apply(nontarget)).float().mean()),
                    "false_rejection_clean": float(strip.flag(held.x).float().mean())}
    log("strip", res["strip"])
    save()

    # --- clean-label at p = 5% (needs the attacker's surrogate; with --reuse and no cached
    # surrogate the previous run's clean_label_p5 entry is kept)
    surrogates = sorted(CACHE.glob("cnn7-clean-f7*.st"))
    if not surrogates and args.reuse and "clean_label_p5" in res:
        log("clean-label: no cached surrogate, keeping the previous entry")
        surrogates = []
    t = time.perf_counter()
    sur = load_classifier(surrogates[0], device="auto") if surrogates else None
    if sur is not None:
        cl = clean_label(tr, sur, 0.05, target=TARGET, trigger=trig, eps=0.3, steps=20, seed=0)
        t_cl = time.perf_counter() - t
        m_cl, _ = train(cl.data, te, "cleanlabel5", args.epochs)
        res["clean_label_p5"] = {"n_poisoned": cl.record.n_poisoned, "eps": 0.3, "craft_time_s": t_cl,
                                 "surrogate": "cnn7 trained on clean mnist-5k, 5 epochs, no input normalisation",
                                 "clean_accuracy": m_cl.accuracy(te.x, te.y), "asr": asr(m_cl)}
        res["clean_label_p5"]["clean_accuracy_lost"] = acc0 - res["clean_label_p5"]["clean_accuracy"]
        log("clean-label", res["clean_label_p5"])
        save()

    # --- Neural Cleanse on the clean model (false-alarm check)
    if args.nc_clean:
        r = neural_cleanse(clean, x_nc, ncfg, progress=False)
        res["neural_cleanse_clean"] = r.summary()
        log("NC clean", r.flagged, [round(a, 2) for a in r.anomaly.tolist()])
        save()
    if args.baseline:
        cl0 = clean_label(tr, clean, 0.05, target=TARGET, trigger=trig, eps=0.0, seed=0)
        m_cl0, _ = train(cl0.data, te, "cleanlabel5-eps0", args.epochs)
        res["clean_label_p5_eps0"] = {"n_poisoned": cl0.record.n_poisoned, "eps": 0.0,
                                      "clean_accuracy": m_cl0.accuracy(te.x, te.y), "asr": asr(m_cl0)}
        save()
    if args.p10:
        n_t = int((tr.y == TARGET).sum())
        for tag, frac in (("p10_of_target_class", round(0.1 / 0.9 * n_t) / len(tr)), ("p10_of_training_set", 0.10)):
            pz = badnets(tr, frac, target=TARGET, trigger=trig, seed=0)
            m, _ = train(pz.data, te, f"badnets-{tag}", args.epochs)
            detect(tag, pz, m)
    log("done")


if __name__ == "__main__":
    main()
