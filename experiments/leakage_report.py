"""Render docs/results/leakage_*.json as the markdown tables of docs/leakage.md (between
the `<!-- results:start -->` and `<!-- results:end -->` markers).

    .venv/bin/python experiments/leakage_report.py
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RES = ROOT / "docs" / "results"
DOC = ROOT / "docs" / "leakage.md"


def f(v, nd=3):
    if v is None:
        return "-"
    if isinstance(v, float):
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e4):
            return f"{v:.2e}"
        return f"{v:.{nd}f}"
    return str(v)


def init_tables(d: dict) -> list[str]:
    out = []
    for run in d["runs"]:
        caps = list(next(iter(run["inits"].values()))["asr_at_cap"])
        conv = ("one L-BFGS step of up to 20 evaluations per iteration (DLG/CPL code)"
                if run["lbfgs_inner"] == 20 else "one gradient evaluation per iteration")
        out.append(f"**{run['model']}**, {conv}, cap {run['max_iter']}, "
                   f"n = {next(iter(run['inits'].values()))['n']}\n")
        out.append("| init | " + " | ".join(f"ASR@{c}" for c in caps)
                   + " | mean iters to success | MSE (successes) | PSNR dB | SSIM | label acc | s/attack |")
        out.append("|---" * (len(caps) + 7) + "|")
        for init, r in run["inits"].items():
            out.append(f"| {init} | " + " | ".join(f(r["asr_at_cap"][c], 2) for c in caps)
                       + f" | {f(r['mean_iterations_to_success'], 1)} | {f(r['mean_mse_success'])}"
                       f" | {f(r['mean_psnr'], 1)} | {f(r['mean_ssim'], 3)} | {f(r['label_accuracy'], 2)}"
                       f" | {f(r['mean_seconds'], 2)} |")
        out.append("")
    return out


def defense_table(d: dict) -> list[str]:
    out = ["| defense | LeNet-sigmoid ASR | nmse | PSNR dB | cnn-small ASR | nmse | PSNR dB "
           "| FedAvg cnn-small accuracy |", "|---|---|---|---|---|---|---|---|"]
    for r in d["rows"]:
        a, b = r["lenet-sigmoid"], r["cnn-small"]
        out.append(f"| {r['defense']} | {f(a['asr'], 2)} | {f(a['nmse'])} | {f(a['psnr'], 1)} | "
                   f"{f(b['asr'], 2)} | {f(b['nmse'])} | {f(b['psnr'], 1)} | {f(r['fedavg_accuracy'], 3)} |")
    return out


def types_table(d: dict) -> list[str]:
    out = ["| local batch (steps) | type | payload | attack batch | examples behind | ASR | "
           "mean nmse | label acc |", "|---|---|---|---|---|---|---|---|"]
    names = {"2": "per-example gradient in local SGD", "1": "client update before upload",
             "0": "server aggregate"}
    for s in d["settings"]:
        for t in ("2", "1", "0"):
            r = s["types"][t]
            behind = {"2": 1, "1": d["per_client"], "0": r.get("examples_behind")}[t]
            out.append(f"| {s['local_batch_size']} ({s['local_steps']}) | {t} | {names[t]} | {r['batch']} | "
                       f"{behind} | {f(r['asr'], 2)} | {f(r['nmse'])} | {f(r.get('label_accuracy'), 2)} |")
    return out


def main() -> None:
    parts = ["<!-- results:start -->"]
    p = RES / "leakage_init.json"
    if p.exists():
        d = json.loads(p.read_text())
        parts += ["### ASR versus iteration cap, by initialisation (Table 5.1 / Table 4.3)", "",
                  f"Command: `.venv/bin/python experiments/leakage_init.py` ({d['env']['date']}, "
                  f"{d['env']['threads']} thread). Success: {d['success']}.", ""]
        parts += init_tables(d)
    p = RES / "leakage_defenses.json"
    if p.exists():
        d = json.loads(p.read_text())
        parts += ["### Defenses at increasing strength", "",
                  f"Command: `.venv/bin/python experiments/leakage_defenses.py` ({d['env']['date']}). "
                  f"Attack: {d['attack']}; accuracy: {d['accuracy']}.", ""]
        parts += [*defense_table(d), ""]
    p = RES / "leakage_types.json"
    if p.exists():
        d = json.loads(p.read_text())
        parts += ["### Leakage type 0 versus 1 versus 2 (FedAvg, 10 clients)", "",
                  f"Command: `.venv/bin/python experiments/leakage_types.py` ({d['env']['date']}). "
                  f"{d['clients']} clients x {d['per_client']} examples; success {d['success']}.", ""]
        parts += [*types_table(d), ""]
    parts.append("<!-- results:end -->")
    text = DOC.read_text()
    a, b = text.index("<!-- results:start -->"), text.index("<!-- results:end -->") + len("<!-- results:end -->")
    DOC.write_text(text[:a] + "\n".join(parts) + text[b:])
    print(f"updated {DOC}")


if __name__ == "__main__":
    main()
