"""Characterize evasion attacks in the layout of the dissertation's Table 2.4.

Trains (once, cached) the seven-layer CNN on mnist-5k, takes the first N correctly
classified test images, runs every configured attack (untargeted, or with "most likely",
"next" and "least likely" targets), computes the ch. 2 metrics with
`bastion.metrics.evasion.evasion_metrics`, checks the orderings of REFERENCE.md section 1
and writes a markdown table and a JSON file.

    .venv/bin/python experiments/characterize.py --config experiments/configs/characterize-mnist.yaml \
        [--n 100] [--only FGSM,BIM,CW-L2:ll] [--merge] [--device auto]

`--only` takes labels, or `label:target` (target UA, most, next or ll) for a single row, so
a long table can be produced in pieces; `--merge` folds each piece into the outputs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from bastion.attacks import registry
from bastion.attacks.evasion.targets import select_targets
from bastion.core import ConfigError, seed_everything
from bastion.data import load
from bastion.metrics.evasion import evasion_metrics
from bastion.metrics.stats import compare_success
from bastion.models import load_classifier
from bastion.models.checkpoint import library_versions
from bastion.training.pipeline import train_and_save

ROOT = Path(__file__).resolve().parents[1]
TARGET_NAMES = {None: "UA", "most": "most", "next": "next", "ll": "LL"}


def load_config(path: Path) -> dict[str, Any]:
    cfg = yaml.safe_load(path.read_text())
    for key in ("model", "attacks", "n"):
        if key not in cfg:
            raise ConfigError(f"{path}: missing key {key!r}")
    for a in cfg["attacks"]:
        registry.get(a["attack"])  # unknown names fail before any work
        for t in a.get("targets") or []:
            if t not in ("most", "next", "ll", "random"):
                raise ConfigError(f"{a['label']}: unknown target mode {t!r}")
    return cfg


def get_model(mcfg: dict[str, Any], device: str):
    path = ROOT / mcfg["checkpoint"]
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        print(f"training {mcfg['arch']} on {mcfg['data']} -> {path}", file=sys.stderr)
        train_and_save(mcfg["arch"], mcfg["data"], path, epochs=mcfg.get("epochs", 5),
                       batch_size=mcfg.get("batch_size", 32), seed=mcfg.get("seed", 0),
                       device=device, progress=False)
    return load_classifier(path, device=device), path


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _merged(path: Path, rows: list[dict[str, Any]], order: list[tuple[str, Any]],
            part: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows of an earlier run at `path` plus those of parallel partial runs (side files
    `<name>.part-*.json`), with these rows replacing the same (label, target)."""
    if rows:
        _atomic_write(path.with_name(f"{path.stem}.part-{part}.json"), json.dumps(rows) + "\n")
    old = json.loads(path.read_text())["rows"] if path.exists() else []
    keyed = {(r["label"], r["target"]): r for r in old}
    # oldest first, so that the most recent run of a row wins
    for side in sorted(path.parent.glob(f"{path.stem}.part-*.json"), key=lambda q: q.stat().st_mtime):
        keyed.update({(r["label"], r["target"]): r for r in json.loads(side.read_text())})
    keyed.update({(r["label"], r["target"]): r for r in rows})
    merged = sorted(keyed.values(), key=lambda r: order.index((r["label"], r["target"]))
                    if (r["label"], r["target"]) in order else len(order))
    return merged, check_orderings(merged)


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def check_orderings(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The orderings REFERENCE.md section 1 requires, each with its evidence."""
    by = {(r["label"], r["target"]): r for r in rows}
    checks: list[dict[str, Any]] = []

    def asr(label: str, t: str | None) -> float | None:
        r = by.get((label, t))
        return None if r is None else r["asr"]

    if asr("BIM", None) is not None and asr("FGSM", None) is not None:
        ci = compare_success(torch.tensor(by[("BIM", None)]["success"], dtype=torch.bool),
                             torch.tensor(by[("FGSM", None)]["success"], dtype=torch.bool))
        checks.append({"check": "ASR BIM > FGSM at eps 0.3",
                       "holds": asr("BIM", None) > asr("FGSM", None),
                       "evidence": f"BIM {asr('BIM', None):.2f} vs FGSM {asr('FGSM', None):.2f}; "
                                   f"95% CI of the difference [{ci.low:.3f}, {ci.high:.3f}]"
                                   f"{' (significant)' if ci.differ else ' (not significant)'}"})
    for label in ("TFGSM", "TBIM"):
        m, nx, ll = asr(label, "most"), asr(label, "next"), asr(label, "ll")
        if None not in (m, nx, ll):
            checks.append({"check": f"{label} targeted ASR most > next > LL",
                           "holds": m > nx > ll,
                           "evidence": f"most {m:.2f}, next {nx:.2f}, LL {ll:.2f}"})
    for t in ("most", "ll"):
        cw = by.get(("CW-L2", t))
        if cw is None:
            continue
        others = [r for r in rows if r["target"] == t and r["label"] != "CW-L2" and r["l2_abs"] is not None]
        smallest = all(cw["l2_abs"] is not None and cw["l2_abs"] <= r["l2_abs"] for r in others)
        checks.append({"check": f"CW-L2 ({TARGET_NAMES[t]}) reaches 100% with the smallest L2 of the "
                                f"{TARGET_NAMES[t]}-targeted attacks",
                       "holds": cw["asr"] == 1.0 and smallest,
                       "evidence": f"CW-L2 ASR {cw['asr']:.2f}, L2 {_num(cw['l2_abs'])}; others: "
                                   + ", ".join(f"{r['label']} {r['l2_abs']:.3f}" for r in others)})
        l0 = [r for r in rows if r["target"] == t and r["l0_frac"] is not None]
        sparse = [r for r in l0 if r["label"] in ("JSMA", "CW-L0")]
        dense = [r for r in l0 if r["label"] not in ("JSMA", "CW-L0")]
        if sparse and dense:
            best_sparse = min(r["l0_frac"] for r in sparse)
            checks.append({"check": f"JSMA/CW-L0 ({TARGET_NAMES[t]}) have the smallest L0",
                           "holds": best_sparse < min(r["l0_frac"] for r in dense)
                           and max(r["l0_frac"] for r in sparse) < min(r["l0_frac"] for r in dense),
                           "evidence": ", ".join(f"{r['label']} {r['l0_frac']:.3f}" for r in l0)})
    return checks


def to_markdown(cfg: dict[str, Any], meta: dict[str, Any], rows: list[dict[str, Any]],
                checks: list[dict[str, Any]]) -> str:
    def f(v: Any, nd: int = 4) -> str:
        if v is None:
            return "-"
        return f"{v:.{nd}g}" if isinstance(v, float) else str(v)

    lines = [
        "# Characterization of evasion attacks (Table 2.4 layout)",
        "",
        f"Model: `{meta['arch']}` trained {meta['epochs']} epochs on `{meta['data']}` "
        f"(clean test accuracy {meta['clean_accuracy']:.4f}); the first {meta['n']} correctly "
        f"classified test images; seed {meta['seed']}; device {meta['device']}; "
        f"torch {meta['versions'].get('torch')}.",
        "",
        "Produced by `" + meta["command"] + "` (config `" + meta["config"] + "`)"
        + ("; the table was assembled from pieces, run one at a time: "
           + "; ".join(f"`{p}`" for p in meta["pieces"]) if meta.get("pieces") else "") + ".",
        "Metrics as in dissertation ch. 2: ASR and MR in percent over all attacked examples; "
        "MeanConf, DistAATB, DistAATA, DistACOC, perturbation and perception costs averaged "
        "over the successful adversarial examples. Linf and L2 are absolute; L0 is the "
        "fraction of changed pixels (as in the dissertation's table). Time is wall-clock "
        "seconds per example" + (f" on a 2-core CPU with {meta.get('threads', '?')} torch "
                                 "thread(s), each piece run one at a time "
                                 "(no other heavy job; short test runs may overlap)"
                                 if meta["device"] == "cpu" else "") + ".",
        "",
        "| attack | UA/TA | n | ASR | MR | MeanConf | DistAATB | DistAATA | DistACOC | Linf | L2 | L0 | "
        "SSIM | PSNR | time (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append("| " + " | ".join([
            r["label"], TARGET_NAMES[r["target"]], str(int(r["n"])), f(100 * r["asr"], 3), f(100 * r["mr"], 3),
            f(r["mean_conf"]), f(r["dist_aatb"]), f(r["dist_aata"]), f(r["dist_acoc"]),
            f(r["linf_abs"], 3), f(r["l2_abs"], 4), f(r["l0_frac"], 3), f(r["ssim"], 3),
            f(r["psnr"], 4), f(r["time_per_example_s"], 3)]) + " |")
    threads = {r.get("threads") for r in rows}
    if len(threads) > 1:
        lines += ["", "Torch threads per row (time column): " + ", ".join(
            f"{r['label']} {TARGET_NAMES[r['target']]}: {r.get('threads') or 'not recorded'}"
            for r in rows) + "."]
    if not meta.get("complete"):
        lines += ["", "*Run in progress or interrupted: rows above are the attacks finished so far.*"]
    ref = cfg.get("reference") or {}
    if ref:
        lines += ["", "## Side by side with the dissertation's Table 2.4 (MNIST)", "",
                  "Each cell: ours / dissertation. The dissertation's model, data size and "
                  "hardware differ (see the deviations below), so compare orderings, not "
                  "absolute values.", "",
                  "| attack | UA/TA | ASR | MR | Linf | L2 | L0 | time (s) |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            d = (ref.get(r["label"]) or {}).get(TARGET_NAMES[r["target"]])
            if d is None:
                continue
            ours = [100 * r["asr"], 100 * r["mr"], r["linf_abs"], r["l2_abs"], r["l0_frac"],
                    r["time_per_example_s"]]
            lines.append("| " + " | ".join([r["label"], TARGET_NAMES[r["target"]]] + [
                f"{f(o, 3)} / {f(float(v), 3)}" for o, v in zip(ours, d)]) + " |")
    if cfg.get("notes"):
        lines += ["", "## Deviations from the dissertation's setup", ""]
        lines += [f"- {note}" for note in cfg["notes"]]
    lines += ["", "## Orderings required by REFERENCE.md section 1", ""]
    for c in checks:
        lines.append(f"- {'holds' if c['holds'] else '**does not hold**'}: {c['check']} ({c['evidence']})")
    lines += ["", "## Attack parameters", ""]
    for r in rows:
        lines.append(f"- {r['label']} ({TARGET_NAMES[r['target']]}): `{json.dumps(r['params'])}`")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, default=ROOT / "experiments" / "configs" / "characterize-mnist.yaml")
    ap.add_argument("--n", type=int, default=None, help="override the number of images")
    ap.add_argument("--only", default=None,
                    help="comma-separated labels (or label:target, target UA/most/next/ll) to run")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch CPU threads (0: torch's default); recorded with the timings")
    ap.add_argument("--no-write", action="store_true", help="print only, write no files")
    ap.add_argument("--render", action="store_true",
                    help="rewrite the markdown (and the checks) from the JSON; run nothing")
    ap.add_argument("--merge", action="store_true",
                    help="with --only: merge the rows into the existing JSON/markdown outputs")
    args = ap.parse_args(argv)
    cfg = load_config(args.config)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.render:
        out_json = ROOT / cfg.get("outputs", {}).get("json", "docs/results/characterization.json")
        doc = json.loads(out_json.read_text())
        rows, meta = doc["rows"], doc["meta"]
        order = [(a["label"], t) for a in cfg["attacks"] for t in (a.get("targets") or [None])]
        meta["complete"] = {(r["label"], r["target"]) for r in rows} >= set(order)
        checks = check_orderings(rows)
        _atomic_write(out_json, json.dumps({"meta": meta, "rows": rows, "checks": checks},
                                           indent=2) + "\n")
        _atomic_write(ROOT / cfg.get("outputs", {}).get("markdown", "docs/characterization.md"),
                      to_markdown(cfg, meta, rows, checks))
        return 0 if all(c["holds"] for c in checks) else 1
    n = args.n or int(cfg["n"])
    seed = int(cfg.get("seed", 0))
    only = None if args.only is None else set(args.only.split(","))
    labels = {a["label"] for a in cfg["attacks"]}
    for item in only or ():
        lab, _, tgt = item.partition(":")
        if lab not in labels or (tgt and tgt.lower() not in ("ua", "most", "next", "ll")):
            raise ConfigError(f"--only: unknown row {item!r}; labels: {sorted(labels)}")

    def selected(label: str, target: str | None) -> bool:
        if only is None:
            return True
        return label in only or f"{label}:{TARGET_NAMES[target]}".lower() in \
            {o.lower() for o in only}
    model, ckpt = get_model(cfg["model"], args.device)
    test = load(cfg["model"]["data"], "test")
    clean_pred = model.predict(test.x).cpu()
    clean_acc = float((clean_pred == test.y).float().mean())
    idx = torch.nonzero(clean_pred == test.y).flatten()[:n]
    x, y = test.x[idx], test.y[idx]
    rel_cfg = args.config.resolve()
    meta = {"arch": cfg["model"]["arch"], "data": cfg["model"]["data"],
            "epochs": cfg["model"].get("epochs", 5), "checkpoint": str(ckpt), "n": len(y),
            "clean_accuracy": clean_acc, "seed": seed, "device": str(model.device),
            "versions": library_versions(), "platform": platform.platform(),
            "config": str(rel_cfg.relative_to(ROOT)) if rel_cfg.is_relative_to(ROOT) else str(rel_cfg),
            "command": "python experiments/characterize.py " + " ".join(argv or sys.argv[1:]),
            "threads": torch.get_num_threads(), "complete": False}
    write = not args.no_write and (only is None or args.merge)
    outs = cfg.get("outputs", {})
    order = [(a["label"], t) for a in cfg["attacks"] for t in (a.get("targets") or [None])]

    def save(rows: list[dict[str, Any]], checks: list[dict[str, Any]]) -> None:
        if not write:
            return
        if args.merge:
            out_json = ROOT / outs.get("json", "docs/results/characterization.json")
            if "pieces" not in meta:  # the commands of every merged piece, oldest first
                old = json.loads(out_json.read_text())["meta"] if out_json.exists() else {}
                meta["pieces"] = [p for p in old.get("pieces", []) if p != meta["command"]]
                meta["pieces"].append(meta["command"])
            rows, checks = _merged(out_json, rows, order,
                                   "-".join(sorted(only or ["all"])).replace(":", "_"))
        # complete once every configured row is present (a merged piece may finish it)
        meta["complete"] = {(r["label"], r["target"]) for r in rows} >= set(order)
        _atomic_write(ROOT / outs.get("json", "docs/results/characterization.json"),
                      json.dumps({"meta": meta, "rows": rows, "checks": checks}, indent=2) + "\n")
        _atomic_write(ROOT / outs.get("markdown", "docs/characterization.md"),
                      to_markdown(cfg, meta, rows, checks))

    rows: list[dict[str, Any]] = []
    for a in cfg["attacks"]:
        n_a = min(len(y), int(a.get("n", len(y))))
        xa, ya = x[:n_a], y[:n_a]
        for t in a.get("targets") or [None]:
            if not selected(a["label"], t):
                continue
            seed_everything(seed)
            attack = registry.create(a["attack"], **(a.get("params") or {}))
            target = None if t is None else select_targets(model, xa, ya, t, seed=seed)
            start = time.perf_counter()
            res = attack(model, xa, ya, target)
            m = evasion_metrics(model, res)
            row = {"label": a["label"], "attack": a["attack"], "target": t, **m,
                   "total_time_s": time.perf_counter() - start, "params": res.params,
                   "threads": torch.get_num_threads(),
                   "success": res.success.cpu().int().tolist()}
            rows.append(row)
            print(f"{a['label']:>9} {TARGET_NAMES[t]:>4}: ASR {100 * m['asr']:.1f}  MR {100 * m['mr']:.1f}"
                  f"  L2 {m['l2_abs']}  L0 {m['l0_frac']}  {m['time_per_example_s']:.3f} s/ex (n={n_a})",
                  file=sys.stderr, flush=True)
            save(rows, check_orderings(rows))
    checks = check_orderings(rows)
    for c in checks:
        print(f"[{'ok' if c['holds'] else 'FAIL'}] {c['check']}: {c['evidence']}", file=sys.stderr)
    save(rows, checks)
    return 0 if all(c["holds"] for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
