"""XEnsemble on mnist-5k (Wei et al. 2020, dissertation ch. 3): the shapes of Tables 3.2-3.3
(single denoisers), 3.6 (kappa on FGSM examples), 3.10-3.12 (PSR/TSR/DSR/FP of RandBase,
Rand-kappa and Best-kappa teams in the input-only, output-only and cross-layer modes,
against PGD adversarial training and defensive distillation), the OOD table, and an
adaptive white-box evaluation none of those tables has.

Target: the pool's cnn7 (.cache/pools/mnist-9, built by
`bastion pool build --config configs/pools/mnist-9.yaml`); the other 9 members form the
pool teams are drawn from. Adversarial examples are made on the target (the transfer
setting of the dissertation) from the first N correctly classified mnist-5k test images;
every defense is scored on the same examples. Baselines (cached under .cache/xens): cnn-small
trained with PGD adversarial training (eps 0.3, 5 steps, eps ramp) and by defensive
distillation (T = 50). Writes docs/results/xensemble.json and prints markdown tables.

    OMP_NUM_THREADS=1 python experiments/xensemble.py --n 100 --threads 1
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from bastion.attacks import registry
from bastion.attacks.evasion import FGSM
from bastion.attacks.evasion.targets import select_targets
from bastion.core import Classifier, seed_everything
from bastion.data import load
from bastion.defenses.ensemble import (
    TeamPolicy,
    load_pool,
    pairwise_matrix,
    team_diversity,
    team_score,
)
from bastion.defenses.ensemble.teams import accurate_members, choose_teams
from bastion.defenses.ood import XEnsembleFlag, build_ood_detector, ood_set
from bastion.defenses.preprocess import (
    BitDepth,
    Chain,
    GaussianBlur,
    MedianFilter,
    NonLocalMeans,
    Rotation,
)
from bastion.defenses.xensemble import XEnsemble, XEnsembleConfig, admit_denoisers
from bastion.metrics.xensemble import benign_rates, defense_rates, ood_metrics
from bastion.models import build_classifier, load_classifier, save_classifier

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "xens"
POOL = ROOT / ".cache" / "pools" / "mnist-9"

# label, registry name, target mode (None = untargeted), parameters (the characterization's)
ATTACKS: list[tuple[str, str, str | None, dict[str, Any]]] = [
    ("FGSM", "fgsm", None, {"eps": 0.3}),
    ("BIM", "bim", None, {"eps": 0.3}),
    ("PGD", "pgd", None, {"eps": 0.3, "steps": 40}),
    ("MI-FGSM", "mifgsm", None, {"eps": 0.3}),
    ("DeepFool", "deepfool", None, {}),
    ("TFGSM-most", "fgsm", "most", {"eps": 0.3}),
    ("TFGSM-ll", "fgsm", "ll", {"eps": 0.3}),
    ("TBIM-most", "bim", "most", {"eps": 0.3}),
    ("TBIM-ll", "bim", "ll", {"eps": 0.3}),
    ("CW-L2-most", "cw-l2", "most", {"binary_search_steps": 5, "max_iter": 100, "lr": 0.1, "initial_const": 1.0}),
    ("CW-L2-ll", "cw-l2", "ll", {"binary_search_steps": 5, "max_iter": 100, "lr": 0.1, "initial_const": 1.0}),
    ("CW-Linf-most", "cw-linf", "most", {"max_iter": 100, "lr": 0.1, "initial_const": 0.1}),
    ("CW-Linf-ll", "cw-linf", "ll", {"max_iter": 100, "lr": 0.1, "initial_const": 0.1}),
    ("CW-L0-most", "cw-l0", "most", {"max_iter": 100, "lr": 0.1, "initial_const": 1.0, "largest_const": 10000.0}),
    ("CW-L0-ll", "cw-l0", "ll", {"max_iter": 100, "lr": 0.1, "initial_const": 1.0, "largest_const": 10000.0}),
    ("JSMA-most", "jsma", "most", {}),
    ("JSMA-ll", "jsma", "ll", {}),
]
# the dissertation's MNIST denoisers, and 1-bit depth after a light blur or a small rotation
CANDIDATES = [BitDepth(1), MedianFilter(3), Rotation(-12.0), BitDepth(2), Rotation(12.0), NonLocalMeans(),
              Chain((GaussianBlur(sigma=0.5), BitDepth(1))), Chain((Rotation(3.0), BitDepth(1))),
              Chain((Rotation(-3.0), BitDepth(1))), Chain((MedianFilter(3), BitDepth(1)))]
MEMBER_TOLERANCE = 0.02
SEEDS = 5


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def adversarial(target: Classifier, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    CACHE.mkdir(parents=True, exist_ok=True)
    out = {}
    for label, name, mode, params in ATTACKS:
        path = CACHE / f"adv-{label}-{x.shape[0]}.pt"
        if path.is_file():
            out[label] = torch.load(path)
            continue
        t0 = time.perf_counter()
        tgt = None if mode is None else select_targets(target, x, y, mode)
        res = registry.create(name, **params)(target, x, y, tgt)
        torch.save(res.x_adv.cpu(), path)
        out[label] = res.x_adv.cpu()
        log(f"{label}: target accuracy {target.accuracy(res.x_adv, y):.3f} ({time.perf_counter() - t0:.0f} s)")
    return out


def baselines(train: Any, test: Any) -> dict[str, Classifier]:
    from bastion.training import PGDTraining, TrainConfig, adversarial_fit
    from bastion.training.distillation import DistillationConfig, defensive_distillation

    CACHE.mkdir(parents=True, exist_ok=True)
    out = {}
    spec = load_classifier(POOL / "cnn7.st", device="cpu").spec
    p_at = CACHE / "cnn-small-pgd-at.st"
    if not p_at.is_file():
        t0 = time.perf_counter()
        seed_everything(0)
        clf = build_classifier("cnn-small", spec, 10, device="cpu", name="pgd-at")
        adversarial_fit(clf, train, None, PGDTraining(eps=0.3, steps=5, eps_ramp_epochs=3),
                        TrainConfig(epochs=10, progress=False))
        save_classifier(p_at, clf, dataset="mnist-5k")
        log(f"PGD-AT trained ({time.perf_counter() - t0:.0f} s), clean {clf.accuracy(test.x, test.y):.3f}")
    out["PGD adversarial training"] = load_classifier(p_at, device="cpu")
    p_dd = CACHE / "cnn-small-distilled-t50.st"
    if not p_dd.is_file():
        t0 = time.perf_counter()
        seed_everything(0)
        teacher = build_classifier("cnn-small", spec, 10, device="cpu", name="teacher")
        student = build_classifier("cnn-small", spec, 10, device="cpu", name="distilled")
        defensive_distillation(teacher, student, train, None, DistillationConfig(temperature=50.0),
                               TrainConfig(epochs=6, lr=1e-2, progress=False))
        save_classifier(p_dd, student, dataset="mnist-5k")
        log(f"distillation trained ({time.perf_counter() - t0:.0f} s), clean {student.accuracy(test.x, test.y):.3f}")
    out["defensive distillation (T=50)"] = load_classifier(p_dd, device="cpu")
    return out


def rates(model: Any, advs: dict[str, torch.Tensor], y: torch.Tensor) -> dict[str, Any]:
    per = {}
    for label, xa in advs.items():
        if isinstance(model, XEnsemble):
            pred, flag = model.predict_with_reject(xa)
        else:
            pred, flag = model.predict(xa).cpu(), torch.zeros(len(y), dtype=torch.bool)
        per[label] = defense_rates(pred.cpu(), flag.cpu(), y)
    avg = {k: statistics.mean(r[k] for r in per.values()) for k in ("psr", "tsr", "dsr", "fp")}
    return {"per_attack": per, "average": avg}


def benign(model: Any, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    if isinstance(model, XEnsemble):
        pred, flag = model.predict_with_reject(x)
    else:
        pred, flag = model.predict(x).cpu(), torch.zeros(len(y), dtype=torch.bool)
    return benign_rates(pred.cpu(), flag.cpu(), y)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100, help="adversarial examples per attack")
    ap.add_argument("--benign", type=int, default=500, help="benign test images for accuracy / false flags")
    ap.add_argument("--ood", type=int, default=500, help="inputs per OOD set")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "docs" / "results" / "xensemble.json"))
    ap.add_argument("--tables", action="store_true", help="only print the markdown tables of --out")
    args = ap.parse_args()
    if args.tables:
        print(markdown(json.loads(Path(args.out).read_text())))
        return
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    pool = load_pool(POOL, device="cpu")
    ti = pool.names.index("cnn7")
    target = pool.members[ti]
    members = [m for i, m in enumerate(pool.members) if i != ti]
    names = [n for i, n in enumerate(pool.names) if i != ti]
    train, test = load("mnist-5k", "train"), load("mnist-5k", "test")
    xb, yb = test.x[:args.benign], test.y[:args.benign]
    ok = (target.predict(test.x).cpu() == test.y).nonzero().flatten()[:args.n]
    x, y = test.x[ok], test.y[ok]
    val_x, val_y = train.x[-500:], train.y[-500:]
    # members' accuracy for team eligibility: test images 500-999, outside the benign and
    # adversarial evaluation sets (the pool was trained on the whole training split)
    held_x, held_y = test.x[500:], test.y[500:]
    result: dict[str, Any] = {"meta": {"n": args.n, "benign_n": args.benign, "ood_n": args.ood, "threads": args.threads,
                                       "torch": torch.__version__, "cpu": platform.machine(),
                                       "target": "cnn7", "pool": names,
                                       "pool_accuracy": {n: m.accuracy(test.x, test.y) for n, m in zip(pool.names, pool.members)},
                                       "attacks": [{"label": a[0], "attack": a[1], "target": a[2], "params": a[3]} for a in ATTACKS]}}
    log(f"target cnn7 test accuracy {target.accuracy(test.x, test.y):.3f}; {len(members)} pool members")
    advs = adversarial(target, x, y)
    result["target_alone"] = rates(target, advs, y)
    result["target_alone"]["benign"] = benign(target, xb, yb)

    # -- Tables 3.2-3.3: single denoisers on the target
    # admission on held-out training images at 2 points; the k = 3 most effective on FGSM
    # examples of those images (not of the evaluation images) form the input layer
    val_adv = FGSM(eps=0.3)(target, val_x, val_y).x_adv
    dens, records = admit_denoisers(target, CANDIDATES, val_x, val_y, 0.02, k=3, x_adv=val_adv)
    admitted = [t for t, r in zip(CANDIDATES, records) if r["admitted"]]
    single = {}
    for t in CANDIDATES:
        single[t.describe()["name"] + str(t.params())] = {
            "label": label_of(t), "benign": target.accuracy(t(xb), yb),
            "per_attack": {k: target.accuracy(t(v), y) for k, v in advs.items()}}
        single[list(single)[-1]]["average"] = statistics.mean(single[list(single)[-1]]["per_attack"].values())
    result["single_denoisers"] = list(single.values())
    result["admission"] = records
    log("single denoisers: " + ", ".join(f"{s['label']} {s['average']:.3f}" for s in single.values()))
    log(f"admitted: {[label_of(d) for d in admitted]}; input layer: {[label_of(d) for d in dens]}")

    # -- Table 3.6: kappa on FGSM examples (target first)
    fg = advs["FGSM"]
    preds = torch.stack([m.predict(fg).cpu() for m in [target, *members]])
    kappa_all = pairwise_matrix(preds, num_classes=10)
    result["kappa_fgsm"] = {"models": ["cnn7 (target)", *names], "matrix": kappa_all.tolist()}
    kappa = kappa_all[1:, 1:]

    # -- teams, all policies drawing from the members within 2 points of the best member
    member_acc = [m.accuracy(held_x, held_y) for m in members]
    eligible = accurate_members(member_acc, MEMBER_TOLERANCE, 3)
    result["eligible"] = {"tolerance": MEMBER_TOLERANCE, "accuracy_on": "test images 500-999",
                          "accuracy": dict(zip(names, member_acc)), "members": [names[i] for i in eligible]}
    log("eligible members: " + ", ".join(f"{names[i]} {member_acc[i]:.3f}" for i in eligible))
    (best,) = choose_teams(kappa, TeamPolicy("best-kappa", n=3), eligible)
    tops = choose_teams(kappa, TeamPolicy("best-kappa", n=3), eligible, 5)
    teams = {"Best-kappa": [best],
             "Rand-kappa": [choose_teams(kappa, TeamPolicy("rand-kappa", n=3, top=5, seed=s), eligible)[0]
                            for s in range(SEEDS)],
             "RandBase": [choose_teams(kappa, TeamPolicy("randbase", n=3, seed=s), eligible)[0]
                          for s in range(SEEDS)]}
    result["teams"] = {k: [{"members": [names[i] for i in t], "mean_kappa": team_score(kappa, t)} for t in v]
                       for k, v in teams.items()}
    result["top_teams"] = [[names[i] for i in t] for t in tops]
    # the five diversity measures of each policy's teams on the FGSM examples (mean over draws)
    result["team_diversity"] = {k: {m: statistics.mean(team_diversity(preds[[1 + i for i in t]], y)[m] for t in v)
                                    for m in ("kappa", "q", "correlation", "disagreement", "generalized_diversity")}
                                for k, v in teams.items()}
    table: dict[str, Any] = {}
    # input layers: the three most effective admitted denoisers (k = 3), and 1-bit
    # quantization alone, the input layer of the dissertation's best MNIST configuration
    k3 = f"k=3: {', '.join(label_of(d) for d in dens)}"
    layers = {k3: dens, "quan-1-bit": [BitDepth(1)]}
    head = result["head"] = f"cross-layer [{k3}]"
    result["input_layers"] = list(layers)
    for lname, ld in layers.items():
        input_only = XEnsemble(target, ld, [], XEnsembleConfig(mode="input-only"))
        table[f"input-only [{lname}]"] = {**rates(input_only, advs, y), "benign": benign(input_only, xb, yb)}
    for policy, tl in teams.items():
        variants = [("output-only", "output-only", dens)] + [(f"cross-layer [{ln}]", "cross-layer", ld)
                                                              for ln, ld in layers.items()]
        for key, mode, ld in variants:
            runs = []
            for t in tl:
                xe = XEnsemble(target, ld, [[members[i] for i in t]], XEnsembleConfig(mode=mode))
                runs.append({**rates(xe, advs, y), "benign": benign(xe, xb, yb)})
            table[f"{key} {policy}"] = mean_runs(runs)
        log(f"{policy}: " + ", ".join(f"{key} DSR {table[f'{key} {policy}']['average']['dsr']:.3f}"
                                     for key, _, _ in variants))
    headline = dens  # XEnsemble as defined: k = 3 denoisers, then the team
    # the moving target: per-query draw among the top 5 teams
    mt = XEnsemble(target, headline, [[members[i] for i in t] for t in tops], XEnsembleConfig(top=5))
    table[f"{head} top-5 per-query draw"] = {**rates(mt, advs, y), "benign": benign(mt, xb, yb)}
    result["defenses"] = table
    result["team_member_benign"] = {names[i]: members[i].accuracy(xb, yb) for i in best}
    result["target_benign"] = target.accuracy(xb, yb)

    # -- comparison with training-time defenses (same transferred examples)
    comp = {}
    for label, clf in baselines(train, test).items():
        comp[label] = {**rates(clf, advs, y), "benign": benign(clf, xb, yb)}
    result["baselines"] = comp

    # -- adaptive white-box evaluation of the cross-layer Best-kappa XEnsemble
    xe = XEnsemble(target, headline, [[members[i] for i in best]], XEnsembleConfig(mode="cross-layer"))
    adaptive = {}
    for label, name, params in (("FGSM", "fgsm", {"eps": 0.3}), ("PGD", "pgd", {"eps": 0.3, "steps": 40}),
                                ("PGD eps 0.1", "pgd", {"eps": 0.1, "steps": 40}),
                                ("PGD-L2 eps 2", "pgd", {"eps": 2.0, "norm": "l2", "steps": 40}),
                                ("PGD-L2 eps 3", "pgd", {"eps": 3.0, "norm": "l2", "steps": 40})):
        t0 = time.perf_counter()
        res = registry.create(name, **params)(xe.adaptive(), x, y)
        pred, flag = xe.predict_with_reject(res.x_adv)
        adaptive[label] = {**defense_rates(pred.cpu(), flag.cpu(), y), "surrogate_accuracy": res.robust_accuracy,
                           "seconds": time.perf_counter() - t0}
        if label not in ("FGSM", "PGD"):
            xt = registry.create(name, **params)(target, x, y).x_adv
            pt, ft = xe.predict_with_reject(xt)
            adaptive[label]["transfer_dsr"] = defense_rates(pt.cpu(), ft.cpu(), y)["dsr"]
        else:
            adaptive[label]["transfer_dsr"] = table[f"{head} Best-kappa"]["per_attack"][label]["dsr"]
        log(f"adaptive {label}: DSR {adaptive[label]['dsr']:.3f} (transfer {adaptive[label]['transfer_dsr']:.3f})")
    # the moving target under the same white-box attack: the surrogate averages every team
    # the per-query draw can pick; each query is then answered by its drawn team
    for label, params in (("PGD, top-5 per-query draw", {"eps": 0.3, "steps": 40}),
                          ("PGD-L2 eps 2, top-5 per-query draw", {"eps": 2.0, "norm": "l2", "steps": 40})):
        t0 = time.perf_counter()
        res = registry.create("pgd", **params)(mt.adaptive(), x, y)
        pred, flag = mt.predict_with_reject(res.x_adv)
        xt = advs["PGD"] if "L2" not in label else registry.create("pgd", **params)(target, x, y).x_adv
        pt, ft = mt.predict_with_reject(xt)
        adaptive[label] = {**defense_rates(pred.cpu(), flag.cpu(), y), "surrogate_accuracy": res.robust_accuracy,
                           "seconds": time.perf_counter() - t0,
                           "transfer_dsr": defense_rates(pt.cpu(), ft.cpu(), y)["dsr"]}
        log(f"adaptive {label}: DSR {adaptive[label]['dsr']:.3f}")
    result["adaptive"] = adaptive

    # -- OOD
    x_in = test.x[:args.ood]
    sets = {s: ood_set(s, target.spec, args.ood, seed=1, x_in=x_in) for s in ("uniform", "gaussian", "inverted", "digits", "patches")}
    dets: dict[str, Any] = {"max-softmax": build_ood_detector("max-softmax", target),
                            "odin": build_ood_detector("odin", target),
                            "mahalanobis": build_ood_detector("mahalanobis", target).fit(train.x, train.y),  # type: ignore[attr-defined]
                            "xensemble": XEnsembleFlag(xe)}
    ood: dict[str, Any] = {}
    for dn, det in dets.items():
        s_in = det.score(x_in)
        f_in = xe.detect(x_in) if dn == "xensemble" else None
        for sn, xo in sets.items():
            s_out = det.score(xo)
            f_out = xe.detect(xo) if dn == "xensemble" else None
            ood[f"{dn} | {sn}"] = ood_metrics(s_in, s_out, f_in, f_out)
    result["ood"] = ood
    log("OOD done")
    result["checks"] = checks(result)
    result["meta"]["seconds"] = time.perf_counter() - t_start
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1, default=float))
    print(markdown(result))


def f3(v: float) -> str:
    return f"{v:.3f}"


def markdown(r: dict[str, Any]) -> str:
    labels = [a["label"] for a in r["meta"]["attacks"]]
    out = []
    head = "| | benign | " + " | ".join(labels) + " | average |"
    sep = "|---" * (len(labels) + 3) + "|"
    out += ["### Single denoisers on the target (accuracy)", "", head, sep]
    ta = r["target_alone"]
    out.append("| none (target alone) | " + f3(ta["benign"]["accuracy"]) + " | "
               + " | ".join(f3(ta["per_attack"][a]["psr"]) for a in labels) + f" | {f3(ta['average']['psr'])} |")
    for sd in r["single_denoisers"]:
        out.append(f"| {sd['label']} | {f3(sd['benign'])} | " + " | ".join(f3(sd["per_attack"][a]) for a in labels)
                   + f" | {f3(sd['average'])} |")
    out += ["", "### Kappa on FGSM examples (lower = more diverse)", ""]
    k = r["kappa_fgsm"]
    out.append("| | " + " | ".join(k["models"]) + " |")
    out.append("|---" * (len(k["models"]) + 1) + "|")
    for i, row in enumerate(k["matrix"]):
        out.append(f"| {k['models'][i]} | " + " | ".join("" if j < i else f"{v:.2f}" for j, v in enumerate(row)) + " |")
    if "team_diversity" in r:
        out += ["", "### Diversity of the teams on the FGSM examples (mean over the draws)", "",
                "| policy | teams | kappa | Q | correlation | disagreement | generalized diversity |",
                "|---|---|---|---|---|---|---|"]
        for pol, dv in r["team_diversity"].items():
            tl = "; ".join(", ".join(t["members"]) for t in r["teams"][pol][:2]) + ("; ..." if len(r["teams"][pol]) > 2 else "")
            out.append(f"| {pol} | {tl} | {dv['kappa']:.3f} | {dv['q']:.3f} | {dv['correlation']:.3f} | "
                       f"{dv['disagreement']:.3f} | {dv['generalized_diversity']:.3f} |")
    out += ["", "### Defense success (DSR = PSR + TSR) per attack", "", head.replace("benign", "benign acc. / false flags"), sep]
    rows = {"target alone": ta, **r["defenses"], **r["baselines"]}
    for name, d in rows.items():
        b = d["benign"]
        ben = f"{f3(b['accuracy'])} / {f3(b.get('false_flag_rate', 0.0))}"
        key = "dsr" if "dsr" in d["average"] else "psr"
        out.append(f"| {name} | {ben} | " + " | ".join(f3(d["per_attack"][a][key]) for a in labels)
                   + f" | {f3(d['average'][key])} |")
    out += ["", "### Averages over the attacks", "", "| defense | PSR | TSR | DSR | FP |", "|---|---|---|---|---|"]
    for name, d in rows.items():
        a = d["average"]
        out.append(f"| {name} | {f3(a['psr'])} | {f3(a['tsr'])} | {f3(a['dsr'])} | {f3(a['fp'])} |")
    out += ["", "### Adaptive white-box attacks on the cross-layer Best-kappa XEnsemble", "",
            "| attack | PSR | TSR | DSR | FP | DSR of the transferred attack | seconds |", "|---|---|---|---|---|---|---|"]
    for name, a in r["adaptive"].items():
        out.append(f"| {name} | {f3(a['psr'])} | {f3(a['tsr'])} | {f3(a['dsr'])} | {f3(a['fp'])} | "
                   f"{f3(a['transfer_dsr'])} | {a['seconds']:.0f} |")
    out += ["", "### OOD detection (in-distribution: mnist-5k test images)", "",
            "| detector | OOD set | AUROC | FPR at 95% TPR | DError | DError at the flag |", "|---|---|---|---|---|---|"]
    for key, m in r["ood"].items():
        det, st = key.split(" | ")
        flag = f3(m["flag_derror"]) if "flag_derror" in m else "-"
        out.append(f"| {det} | {st} | {f3(m['auroc'])} | {f3(m['fpr_at_95_tpr'])} | {f3(m['derror'])} | {flag} |")
    out += ["", "### Orderings", ""]
    for c in r["checks"]:
        out.append(f"- {'holds' if c['holds'] else 'does NOT hold'}: {c['claim']} ({c['detail']})")
    return "\n".join(out)


def label_of(t: Any) -> str:
    p = t.params()
    if t.name == "bit-depth":
        return f"quan-{p['bits']}-bit"
    if t.name == "median":
        return f"median {p['kernel']}x{p['kernel']}"
    if t.name == "rotation":
        return f"rotation {p['degrees']:+g}"
    if t.name == "nlm":
        return "non-local means"
    if t.name == "chain":
        return " + ".join(label_of(u) for u in t.transforms)
    return t.name


def mean_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    first = runs[0]
    out: dict[str, Any] = {"runs": len(runs)}
    out["per_attack"] = {a: {k: statistics.mean(r["per_attack"][a][k] for r in runs) for k in ("psr", "tsr", "dsr", "fp")}
                         for a in first["per_attack"]}
    out["average"] = {k: statistics.mean(r["average"][k] for r in runs) for k in ("psr", "tsr", "dsr", "fp")}
    out["average_sd"] = {k: statistics.pstdev(r["average"][k] for r in runs) for k in ("dsr",)}
    out["benign"] = {k: statistics.mean(r["benign"][k] for r in runs) for k in ("accuracy", "false_flag_rate")}
    return out


def checks(r: dict[str, Any]) -> list[dict[str, Any]]:
    d = r["defenses"]
    head = r["head"]
    cl = d[f"{head} Best-kappa"]
    one = d["cross-layer [quan-1-bit] Best-kappa"]
    singles = r["single_denoisers"]
    best_single = max(s["average"] for s in singles)
    out = []

    def add(claim: str, holds: bool, detail: str) -> None:
        out.append({"claim": claim, "holds": bool(holds), "detail": detail})

    dsr = cl["average"]["dsr"]
    add("cross-layer DSR (k = 3 denoisers) above every single denoiser", dsr > best_single,
        f"{dsr:.3f} ({head}) vs best single denoiser {best_single:.3f}")
    add("cross-layer DSR with 1-bit depth alone above every single denoiser", one["average"]["dsr"] > best_single,
        f"{one['average']['dsr']:.3f} vs {best_single:.3f}")
    ob = d["output-only Best-kappa"]["average"]["dsr"]
    add("cross-layer DSR above output-only (Best-kappa)", dsr > ob, f"{dsr:.3f} vs {ob:.3f}")
    for mode in (head, "cross-layer [quan-1-bit]", "output-only"):
        b, rb = d[f"{mode} Best-kappa"]["average"]["dsr"], d[f"{mode} RandBase"]["average"]["dsr"]
        add(f"Best-kappa above RandBase ({mode})", b > rb, f"{b:.3f} vs {rb:.3f} (RandBase mean of {SEEDS} teams)")
    for name, base in r["baselines"].items():
        v = base["average"]["psr"]
        add(f"cross-layer DSR above {name}", dsr > v, f"{dsr:.3f} vs {v:.3f}")
    acc = cl["benign"]["accuracy"]
    name, best_member = max(r["team_member_benign"].items(), key=lambda kv: kv[1])
    add("benign accuracy within 1 point of the best single member", acc >= best_member - 0.01,
        f"{acc:.3f} (answered and correct, {r['meta']['benign_n']} images) vs its best member {name} "
        f"{best_member:.3f} on the same images; the target cnn7: {r['target_benign']:.3f}")
    return out


if __name__ == "__main__":
    random.seed(0)
    main()
