"""Hardening sweep: run the `bastion` CLI for real on several hundred bad inputs and faults.

Every case is one `python -m bastion.cli.main ...` subprocess under `timeout` (60 s by
default). For each case the sweep records the exit code, whether stderr holds a traceback,
whether an error was one line, whether the case left a half-written output (a run folder
without its results.json + report.html pair that is not a resumable steps cache, a stray
temporary file, or an output written by a failed command), and the wall time.

A case passes when it exits 0, or exits 2 with one error line and no traceback, leaving
nothing half-written. Exit code 1, any traceback, a timeout ("unbounded"), a half-written
output or an error of more than one line (`multiline`) is a failure.

Run (about 16 minutes with --jobs 2):
    PYTHONPATH=$PWD/src OMP_NUM_THREADS=1 .venv/bin/python experiments/hardening_sweep.py
Writes docs/results/hardening_sweep.json and prints a summary table.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import loader_files as lf  # noqa: E402  (tiny data files and bombs shared with the tests)

PY = sys.executable
TIMEOUT = 60


@dataclass
class Case:
    """One CLI invocation; `out` is the path whose state is checked afterwards."""
    command: str
    category: str
    args: list[str]
    out: Path | None = None
    kind: str = "file"            # file | runfolder | folder
    preexisting: bool = False     # the out path existed before (a failed run may leave it)
    env: dict[str, str] = field(default_factory=dict)
    custom: Callable[[Case], dict[str, Any]] | None = None


def _cli(args: list[str], env: dict[str, str] | None = None, timeout: int = TIMEOUT,
         cwd: Path | None = None) -> tuple[int, str, str, float]:
    full = ["timeout", "-s", "KILL", str(timeout), PY, "-m", "bastion.cli.main", *args]
    e = {**os.environ, "BASTION_QUIET": "1", **(env or {})}
    t0 = time.perf_counter()
    p = subprocess.run(full, capture_output=True, env=e, cwd=cwd, stdin=subprocess.DEVNULL)
    return (p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace"),
            time.perf_counter() - t0)


def _tmp_leftovers(root: Path) -> list[str]:
    if not root.is_dir():
        return []
    return [str(p) for p in root.rglob("*") if p.name.endswith(".tmp") and p.is_file()]


def half_written(case: Case, rc: int, allow_temps: bool = False) -> str:
    """Why the output of `case` is half-written, or '' when it is not. `allow_temps`: a
    killed writer's temporary files are expected (the next run removes them)."""
    out = case.out
    if out is None:
        return ""
    try:
        exists = out.exists()
    except OSError:
        return ""
    if case.kind == "runfolder":
        if not exists or not out.is_dir():
            return ""
        names = {p.name for p in out.iterdir()}
        has_pair = {"results.json", "report.html"} <= names
        if ("results.json" in names) != ("report.html" in names):
            return "results.json without report.html (or the reverse)"
        left = [] if allow_temps else _tmp_leftovers(out)
        if left:
            return f"temporary files left: {left[:2]}"
        if has_pair:
            return ""
        steps = out / "steps"
        if steps.is_dir() and any(steps.iterdir()):
            return ""   # a resumable steps cache
        if case.preexisting:
            return ""
        return f"run folder without results: {sorted(names)}"
    if rc != 0 and exists and not case.preexisting:
        return "a failed command left its output"
    try:
        left = [str(p) for p in out.parent.glob(f".{out.name}.*tmp")] if out.parent.is_dir() else []
    except OSError:
        left = []
    return f"temporary files left: {left[:2]}" if left else ""


def run_case(case: Case) -> dict[str, Any]:
    if case.custom is not None:
        rec = case.custom(case)
    else:
        rc, _out, err, wall = _cli(case.args, case.env)
        rec = {"rc": rc, "stderr": err, "wall_s": wall}
        rec["half_written"] = half_written(case, rc)
    err = rec.pop("stderr")
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("warning")]
    rec.update(command=case.command, category=case.category, args=[a[:120] for a in case.args])
    rec["traceback"] = "Traceback" in err
    rec["timeout"] = rec["rc"] in (124, 137, -9)
    rec["one_line"] = rec["rc"] == 0 or len(lines) <= 1
    rec["stderr_tail"] = err.strip()[-300:]
    rec["ok"] = rec["rc"] in (0, 2) and not rec["traceback"] and not rec["half_written"] and rec["one_line"]
    return rec


# ----------------------------------------------------------------------------- fixtures

class Fixtures:
    def __init__(self, root: Path):
        self.root = root
        self.n = 0
        import torch

        from bastion.core import InputSpec
        from bastion.data import load
        from bastion.models import build_classifier, save_classifier

        torch.manual_seed(0)
        train = load("digits", "train")
        mlp = build_classifier("mlp", InputSpec(train.input_shape), train.num_classes,
                               {"hidden": (16,)}, device="cpu")
        self.model = save_classifier(root / "mlp.st", mlp, dataset="digits", test_accuracy=0.1, seed=0)
        cnn = build_classifier("cnn-small", InputSpec(train.input_shape), train.num_classes,
                               {"channels": (2, 4), "hidden": 8}, device="cpu")
        self.cnn = save_classifier(root / "cnn.st", cnn, dataset="digits", test_accuracy=0.1, seed=0)
        self.raw = self.model.read_bytes()
        self.config = self.write("ok.yaml", "seed: 0\ndata: {n: 8}\nsections:\n  - kind: evasion\n"
                                 "    attacks:\n      - {attack: fgsm, eps: [0.1, 0.2]}\n")

    def path(self, name: str) -> Path:
        self.n += 1
        p = self.root / f"{self.n:04d}-{name}"
        return p

    def write(self, name: str, data: str | bytes) -> Path:
        p = self.path(name)
        p.parent.mkdir(parents=True, exist_ok=True)
        (p.write_bytes if isinstance(data, bytes) else p.write_text)(data)
        return p

    def ckpt_with_meta(self, name: str, edit: Callable[[dict], Any], weights: Callable | None = None) -> Path:
        from safetensors import safe_open
        from safetensors.torch import load_file, save_file

        with safe_open(str(self.model), "pt") as f:
            meta = json.loads(f.metadata()["bastion"])
        state = load_file(str(self.model))
        new = edit(meta)
        if weights is not None:
            weights(state)
        p = self.path(name)
        md = {"bastion": new if isinstance(new, str) else json.dumps(new)}
        save_file(state, str(p), metadata=md)
        return p


# ----------------------------------------------------------------------------- cases

BAD_DEVICES = ["", "cpu,cuda", "meta", "cuda:99", "gpu", "CPU", "cuda:-1", "xla", "mps", "cpu:0",
               "\u00e9", "auto auto", "cuda:1e9", "-"]
BAD_INTS = ["-1", "0", "99999999999999999999", str(2**64), str(2**63), "1e3", "nan", "inf", "abc", "", "0x10"]
BAD_FLOATS = ["nan", "inf", "-inf", "-1", "0", "1e309", "1e-320", "abc", "", "1,5"]
BAD_SEEDS = ["-1", str(2**64), str(2**64 + 1), str(2**63), "1e5", "abc", str(10**40)]


def device_cases(fx: Fixtures) -> list[Case]:
    cs: list[Case] = []
    m = str(fx.model)
    for d in BAD_DEVICES:
        cs.append(Case("attack", "device", ["attack", "-m", m, "-a", "fgsm", "--eps", "0.1", "--n", "8", "--device", d]))
        o = fx.path("dev-audit")
        cs.append(Case("audit", "device", ["audit", "-m", m, "-c", str(fx.config), "-o", str(o), "--device", d],
                       out=o, kind="runfolder"))
        o = fx.path("dev-train.st")
        cs.append(Case("train", "device", ["train", "-m", "mlp", "-d", "digits", "--epochs", "1", "-o", str(o),
                                           "--device", d], out=o))
        cs.append(Case("leak", "device", ["leak", "-m", m, "--n", "1", "--max-iter", "2", "-a", "dlg", "--device", d]))
        cs.append(Case("mia", "device", ["mia", "-m", m, "-d", "digits", "-a", "yeom", "--shadows", "0",
                                         "--eval-size", "8", "--device", d]))
    return cs


def number_cases(fx: Fixtures) -> list[Case]:
    cs: list[Case] = []
    m = str(fx.model)
    for v in BAD_INTS:
        o = fx.path("train-ep.st")
        cs.append(Case("train", "numbers", ["train", "-m", "mlp", "-d", "digits", "--epochs", v, "-o", str(o)], out=o))
        o = fx.path("train-bs.st")
        cs.append(Case("train", "numbers", ["train", "-m", "mlp", "-d", "digits", "--epochs", "1", "--batch-size", v,
                                            "-o", str(o)], out=o))
        cs.append(Case("attack", "numbers", ["attack", "-m", m, "-a", "fgsm", "--eps", "0.1", "--n", v]))
        o = fx.path("audit-n")
        cs.append(Case("audit", "numbers", ["audit", "-m", m, "-c", str(fx.config), "-o", str(o), "--n", v],
                       out=o, kind="runfolder"))
        cs.append(Case("leak", "numbers", ["leak", "-m", m, "-a", "dlg", "--max-iter", "2", "--n", v]))
        cs.append(Case("leak", "numbers", ["leak", "-m", m, "-a", "dlg", "--n", "1", "--max-iter", v]))
        cs.append(Case("leak", "numbers", ["leak", "-m", m, "-a", "dlg", "--n", "1", "--max-iter", "2", "--batch", v]))
        cs.append(Case("mia", "numbers", ["mia", "-m", m, "-d", "digits", "-a", "lira", "--shadows", v,
                                          "--eval-size", "8", "--shadow-epochs", "1"]))
        cs.append(Case("mia", "numbers", ["mia", "-m", m, "-d", "digits", "-a", "yeom", "--shadows", "0",
                                          "--eval-size", v]))
        cs.append(Case("privacy", "numbers", ["privacy", "epsilon", "--q", "0.01", "--sigma", "1", "--steps", v]))
    for v in BAD_FLOATS:
        o = fx.path("train-lr.st")
        cs.append(Case("train", "numbers", ["train", "-m", "mlp", "-d", "digits", "--epochs", "1", "--lr", v,
                                            "-o", str(o)], out=o))
        o = fx.path("train-sigma.st")
        cs.append(Case("train", "numbers", ["train", "-m", "mlp", "-d", "digits", "--epochs", "1", "--dp",
                                            "--sigma", v, "-o", str(o)], out=o))
        cs.append(Case("attack", "numbers", ["attack", "-m", m, "-a", "fgsm", "--n", "8", "--eps", v]))
        cs.append(Case("privacy", "numbers", ["privacy", "epsilon", "--q", v, "--sigma", "1", "--steps", "10"]))
        cs.append(Case("privacy", "numbers", ["privacy", "epsilon", "--q", "0.01", "--sigma", v, "--steps", "10"]))
        cs.append(Case("privacy", "numbers", ["privacy", "epsilon", "--q", "0.01", "--sigma", "1", "--steps", "10",
                                              "--delta", v]))
        cs.append(Case("privacy", "numbers", ["privacy", "sigma", "--target-eps", v, "--q", "0.01", "--steps", "10"]))
        cs.append(Case("privacy", "numbers", ["privacy", "sigma", "--target-eps", "1", "--q", v, "--steps", "10"]))
    for s in BAD_SEEDS:
        o = fx.path("train-seed.st")
        cs.append(Case("train", "seeds", ["train", "-m", "mlp", "-d", "digits", "--epochs", "1", "--seed", s,
                                          "-o", str(o)], out=o))
        cs.append(Case("attack", "seeds", ["attack", "-m", m, "-a", "fgsm", "--eps", "0.1", "--n", "8", "--seed", s]))
        o = fx.path("audit-seed")
        cs.append(Case("audit", "seeds", ["audit", "-m", m, "-c", str(fx.config), "-o", str(o), "--seed", s],
                       out=o, kind="runfolder"))
        cs.append(Case("leak", "seeds", ["leak", "-m", m, "-a", "dlg", "--n", "1", "--max-iter", "2", "--seed", s]))
        cs.append(Case("mia", "seeds", ["mia", "-m", m, "-d", "digits", "-a", "yeom", "--shadows", "0",
                                        "--eval-size", "8", "--seed", s]))
    # huge epochs/batch/steps for privacy sigma and eps: must be refused or bounded
    cs.append(Case("privacy", "numbers", ["privacy", "epsilon", "--q", "0.5", "--sigma", "0.1", "--steps", "1000000000"]))
    cs.append(Case("privacy", "numbers", ["privacy", "sigma", "--target-eps", "1e-9", "--q", "1", "--steps", "1000000000"]))
    cs.append(Case("privacy", "numbers", ["privacy", "sigma", "--target-eps", "1e9", "--q", "1e-9", "--steps", "1"]))
    cs.append(Case("privacy", "numbers", ["privacy", "sigma", "--target-eps", "1", "--q", "0.01", "--steps", "10",
                                          "--accountant", "zcdp"]))
    cs.append(Case("privacy", "numbers", ["privacy", "sigma", "--target-eps", "1", "--q", "0.01", "--steps", "10",
                                          "--accountant", ""]))
    return cs


def path_cases(fx: Fixtures) -> list[Case]:
    cs: list[Case] = []
    m = str(fx.model)
    long = "x" * 300
    deep = "/".join(["d" * 200] * 30)
    a_dir = fx.path("a-dir")
    a_dir.mkdir()
    a_file = fx.write("a-file.txt", "x")
    outs: list[tuple[str, Path | str, bool]] = [
        ("empty", "", False), ("long-name", fx.root / long, False), ("long-path", fx.root / deep, False),
        ("unicode", fx.path("r\u00e9sultat-\u65e5\u672c-\U0001f600"), False), ("is-dir", a_dir, True),
        ("is-file", a_file, True), ("proc", "/proc/x/run", False), ("sys", "/sys/bastion/run", False),
        ("under-file", a_file / "sub", False), ("dev-null", "/dev/null", True), ("newline", fx.path("a\nb"), False),
        ("dot", ".", True), ("space", fx.path(" "), False), ("dash", "-", False)]
    for label, o, pre in outs:
        op = Path(o) if o not in ("", "-", ".") else None
        cs.append(Case("train", f"out-{label}", ["train", "-m", "mlp", "-d", "digits", "--epochs", "1", "-o", str(o)],
                       out=op if label not in ("is-dir", "dev-null") else None, preexisting=pre))
        cs.append(Case("audit", f"out-{label}", ["audit", "-m", m, "-c", str(fx.config), "-o", str(o)],
                       out=op if label not in ("is-file", "dev-null", "under-file") else None,
                       kind="runfolder", preexisting=pre))
        cs.append(Case("attack", f"out-{label}", ["attack", "-m", m, "-a", "fgsm", "--eps", "0.1", "--n", "8",
                                                  "-o", str(o)], out=None, preexisting=pre))
        cs.append(Case("leak", f"out-{label}", ["leak", "-m", m, "-a", "dlg", "--n", "1", "--max-iter", "2",
                                                "-o", str(o)], out=None, preexisting=pre))
        cs.append(Case("mia", f"out-{label}", ["mia", "-m", m, "-d", "digits", "-a", "yeom", "--shadows", "0",
                                               "--eval-size", "8", "--out", str(o)], out=None, preexisting=pre))
    # model / config / root paths that are wrong
    bad_inputs = ["", str(fx.root / long), str(fx.root / deep), "/proc/self/mem", "/dev/zero", str(a_dir),
                  str(fx.root / "missing.st"), "/dev/stdin", str(fx.path("\u00e9\u00e8.st")), "\x7f"]
    fifo = fx.path("fifo.st")
    os.mkfifo(fifo)
    bad_inputs.append(str(fifo))
    for b in bad_inputs:
        for cmd, args in (("info", ["info", b]), ("attack", ["attack", "-m", b, "--n", "8", "-a", "fgsm", "--eps", "0.1"]),
                          ("audit", ["audit", "-m", b, "-o", str(fx.path("in-audit"))]),
                          ("leak", ["leak", "-m", b, "--n", "1"]), ("mia", ["mia", "-m", b, "--shadows", "0", "-a", "yeom"])):
            cs.append(Case(cmd, "input-path", args))
        o = fx.path("cfgpath")
        cs.append(Case("audit", "config-path", ["audit", "-m", m, "-c", b, "-o", str(o)], out=o, kind="runfolder"))
        cs.append(Case("train", "root-path", ["train", "-m", "mlp", "-d", "npz", "--root", b, "--epochs", "1",
                                              "-o", str(fx.path("root.st"))]))
    return cs


def arg_cases(fx: Fixtures) -> list[Case]:
    cs: list[Case] = []
    m = str(fx.model)
    vals = ["", "=", "hidden", "hidden=", "=16", "hidden=abc", "hidden=[16", "hidden=[-1]", "hidden=[1e12]",
            "hidden=[0]", "hidden=nan", "hidden={a: 1}", "activation=nope", "activation=[relu]", "nope=1",
            "hidden=[16]=x", "hidden=!!python/object/apply:os.system [echo pwned]", "hidden=*a", "hidden=&a [1]",
            "hidden=" + "[" * 200 + "]" * 200, "hidden=[" + ",".join(["99999"] * 10) + "]", "hidden=\u00e9",
            "channels=[1,2,3,4,5]"]
    for v in vals:
        o = fx.path("arg.st")
        cs.append(Case("train", "arg", ["train", "-m", "mlp", "-d", "digits", "--epochs", "1", "--arg", v, "-o", str(o)],
                       out=o))
    attack_args = ["steps=-1", "steps=1e12", "steps=abc", "alpha=nan", "alpha=inf", "nope=1", "steps=", "=",
                   "steps=[1]", "steps=!!python/name:os.system", "max_iter=99999999999", "restarts=1e9",
                   "batch_size=0", "batch_size=99999999", "eps=nan"]
    for v in attack_args:
        cs.append(Case("attack", "arg", ["attack", "-m", m, "-a", "pgd", "--eps", "0.1", "--n", "8", "--arg", v]))
        cs.append(Case("leak", "arg", ["leak", "-m", m, "-a", "dlg", "--n", "1", "--max-iter", "2", "--arg", v]))
    for name in ["nonexistent", "", "PGD", "pgd,fgsm", "../x", "\u00e9"]:
        cs.append(Case("attack", "names", ["attack", "-m", m, "-a", name, "--eps", "0.1", "--n", "8"]))
        cs.append(Case("leak", "names", ["leak", "-m", m, "-a", name, "--n", "1"]))
        cs.append(Case("mia", "names", ["mia", "-m", m, "-d", "digits", "-a", name, "--shadows", "0", "--eval-size", "8"]))
        cs.append(Case("mia", "names", ["mia", "-m", m, "-d", "digits", "-a", "lira", "--shadows", "2",
                                        "--eval-size", "8", "--method", name]))
        o = fx.path("train-model.st")
        cs.append(Case("train", "names", ["train", "-m", name, "-d", "digits", "--epochs", "1", "-o", str(o)], out=o))
        o = fx.path("train-data.st")
        cs.append(Case("train", "names", ["train", "-m", "mlp", "-d", name, "--epochs", "1", "-o", str(o)], out=o))
        cs.append(Case("attack", "names", ["attack", "-m", m, "-a", "fgsm", "--eps", "0.1", "--n", "8", "--norm", name]))
        cs.append(Case("attack", "names", ["attack", "-m", m, "-a", "fgsm", "--eps", "0.1", "--n", "8",
                                           "--targeted", name]))
        cs.append(Case("leak", "names", ["leak", "-m", m, "-a", "dlg", "--n", "1", "--max-iter", "2", "--defense", name]))
        cs.append(Case("leak", "names", ["leak", "-m", m, "-a", "dlg", "--n", "1", "--max-iter", "2", "--init", name]))
        o = fx.path("audit-data")
        cs.append(Case("audit", "names", ["audit", "-m", m, "-d", name, "-c", str(fx.config), "-o", str(o)],
                       out=o, kind="runfolder"))
    for d in ["noise:nan", "noise:-1", "prune:2", "quant:0", "quant:99", "clip:1", "clip:a,b", "noise:inf", "prune:"]:
        cs.append(Case("leak", "names", ["leak", "-m", m, "-a", "dlg", "--n", "1", "--max-iter", "2", "--defense", d]))
    cs.append(Case("misc", "unknown", ["nosuchcommand"]))
    cs.append(Case("misc", "unknown", ["attack", "--nosuchflag"]))
    cs.append(Case("misc", "unknown", ["models", "extra"]))
    cs.append(Case("misc", "unknown", ["datasets", "--json", "x"]))
    cs.append(Case("misc", "unknown", ["attacks", "--bogus"]))
    cs.append(Case("models", "ok", ["models"]))
    cs.append(Case("datasets", "ok", ["datasets"]))
    cs.append(Case("attacks", "ok", ["attacks"]))
    return cs


def config_cases(fx: Fixtures) -> list[Case]:
    m = str(fx.model)
    ev = "sections:\n  - kind: evasion\n    attacks:\n      - {attack: fgsm, eps: [0.1]}\n"
    texts: dict[str, str | bytes] = {
        "empty": "", "null": "null\n", "list": "- 1\n- 2\n", "scalar": "42\n", "str": "hello\n",
        "seed-str": "seed: abc\n" + ev, "seed-neg": "seed: -1\n" + ev, "seed-huge": f"seed: {2**64}\n" + ev,
        "seed-float": "seed: 1.5\n" + ev, "seed-bool": "seed: true\n" + ev,
        "bs-zero": "batch_size: 0\n" + ev, "bs-huge": "batch_size: 99999999999\n" + ev, "bs-str": "batch_size: x\n" + ev,
        "n-neg": "data: {n: -5}\n" + ev, "n-huge": "data: {n: 1e12}\n" + ev, "n-bool": "data: {n: true}\n" + ev,
        "n-str": "data: {n: many}\n" + ev, "data-list": "data: [1]\n" + ev, "split-bad": "data: {split: nope, n: 8}\n" + ev,
        "only-correct-str": "data: {n: 8, only_correct: maybe}\n" + ev, "data-name-bad": "data: {name: nope, n: 8}\n" + ev,
        "sections-none": "data: {n: 8}\nsections: null\n", "sections-str": "data: {n: 8}\nsections: abc\n",
        "sections-empty": "data: {n: 8}\nsections: []\n", "kind-bad": "data: {n: 8}\nsections:\n  - kind: nope\n",
        "kind-missing": "data: {n: 8}\nsections:\n  - {attacks: []}\n",
        "attacks-str": "data: {n: 8}\nsections:\n  - kind: evasion\n    attacks: fgsm\n",
        "attack-unknown": "data: {n: 8}\nsections:\n  - kind: evasion\n    attacks:\n      - {attack: nope, eps: 0.1}\n",
        "eps-missing": "data: {n: 8}\nsections:\n  - kind: evasion\n    attacks:\n      - {attack: fgsm}\n",
        "eps-nan-later": "data: {n: 8}\nsections:\n  - kind: evasion\n    attacks:\n      - {attack: fgsm, eps: [0.1, .nan]}\n",
        "eps-inf": "data: {n: 8}\nsections:\n  - kind: evasion\n    attacks:\n      - {attack: fgsm, eps: .inf}\n",
        "eps-neg": "data: {n: 8}\nsections:\n  - kind: evasion\n    attacks:\n      - {attack: fgsm, eps: -0.1}\n",
        "eps-str": "data: {n: 8}\nsections:\n  - kind: evasion\n    attacks:\n      - {attack: fgsm, eps: [x]}\n",
        "eps-big": "data: {n: 8}\nsections:\n  - kind: evasion\n    attacks:\n      - {attack: fgsm, eps: 5}\n",
        "targeted-bad": "data: {n: 8}\nsections:\n  - kind: evasion\n    attacks:\n      - {attack: fgsm, eps: 0.1, targeted: yes}\n",
        "params-bad": "data: {n: 8}\nsections:\n  - kind: evasion\n    attacks:\n      - {attack: pgd, eps: 0.1, params: {steps: abc}}\n",
        "params-huge": "data: {n: 8}\nsections:\n  - kind: evasion\n    attacks:\n      - {attack: pgd, eps: 0.1, params: {steps: 1e15}}\n",
        "params-unknown": "data: {n: 8}\nsections:\n  - kind: evasion\n    attacks:\n      - {attack: pgd, eps: 0.1, params: {zzz: 1}}\n",
        "params-list": "data: {n: 8}\nsections:\n  - kind: evasion\n    attacks:\n      - {attack: pgd, eps: 0.1, params: [1]}\n",
        "unknown-top": "bogus: 1\n" + ev, "unknown-section-key": "data: {n: 8}\nsections:\n  - kind: evasion\n    zzz: 1\n    attacks: []\n",
        "mem-shadows-neg": "data: {n: 8}\nsections:\n  - kind: membership\n    attacks: [lira]\n    shadows: -1\n",
        "mem-variance-bad": "data: {n: 8}\nsections:\n  - kind: membership\n    attacks: [lira]\n    shadows: 2\n    variance: nope\n",
        "mem-method-bad": "data: {n: 8}\nsections:\n  - kind: membership\n    attacks: [yeom]\n    method: nope\n",
        "mem-attack-bad": "data: {n: 8}\nsections:\n  - kind: membership\n    attacks: [nope]\n",
        "leak-bad": "data: {n: 8}\nsections:\n  - kind: leakage\n    attack: nope\n",
        "leak-batch-huge": "data: {n: 8}\nsections:\n  - kind: leakage\n    batch: 100000\n",
        "leak-iter-neg": "data: {n: 8}\nsections:\n  - kind: leakage\n    max_iter: -3\n",
        "dp-bad": "data: {n: 8}\nsections:\n  - kind: dp\n    sigma: abc\n",
        "billion-laughs": ("a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
                           "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n"
                           "f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\ng: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\n"
                           "h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]\ni: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]\n"),
        "laughs-in-extra": ("data: {n: 8}\nsections:\n  - kind: evasion\n    attacks: []\n    x: &a [1,1,1,1,1,1,1,1,1]\n"
                            "    y: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n    z: [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"),
        "python-tag": "seed: !!python/object/apply:os.system ['echo pwned']\n" + ev,
        "deep-nesting": "seed: " + "[" * 5000 + "]" * 5000 + "\n",
        "bad-yaml": "seed: [\n  : :\n", "tabs": "seed:\t0\n\tdata: 1\n", "dup-keys": "seed: 0\nseed: 1\n" + ev,
        "huge-int-key": f"{10**4000}: 1\n", "non-utf8": b"seed: 0\ndata: {n: 8}\n# \xff\xfe\x80\n" + ev.encode(),
        "utf16": "seed: 0\n".encode("utf-16"), "bom": "\ufeffseed: 0\n" + ev, "nul": "seed: 0\x00\n",
        "big": "seed: 0\n" + "# " + "x" * (2 << 20) + "\n", "binary": bytes(range(256)) * 8,
        "many-keys": "\n".join(f"k{i}: {i}" for i in range(20000)) + "\n",
        "nan-seed": "seed: .nan\n" + ev, "merge-key": "base: &b {n: 8}\ndata:\n  <<: *b\n" + ev,
        "batch_size-str-in-params": "data: {n: 8}\nsections:\n  - kind: evasion\n    attacks:\n      - {attack: pgd, eps: 0.1, params: {batch_size: abc}}\n",
    }
    cs: list[Case] = []
    for label, text in texts.items():
        p = fx.write(f"cfg-{label}.yaml", text)
        o = fx.path(f"audit-{label}")
        cs.append(Case("audit", "config", ["audit", "-m", m, "-c", str(p), "-o", str(o)], out=o, kind="runfolder"))
    return cs


def checkpoint_cases(fx: Fixtures) -> list[Case]:
    import torch

    raw = fx.raw
    files: dict[str, Path] = {
        "empty": fx.write("ck-empty.st", b""), "truncated-8": fx.write("ck-t8.st", raw[:8]),
        "truncated-half": fx.write("ck-half.st", raw[: len(raw) // 2]),
        "truncated-minus1": fx.write("ck-m1.st", raw[:-1]),
        "huge-header-len": fx.write("ck-hlen.st", struct.pack("<Q", 2**62) + raw[8:]),
        "garbage": fx.write("ck-garbage.st", os.urandom(4096)), "text": fx.write("ck-text.st", "hello"),
        "pickle": fx.write("ck-pickle.st", b"\x80\x04\x95" + os.urandom(64)),
        "header-not-json": fx.write("ck-hnj.st", struct.pack("<Q", 5) + b"{{{{{" + raw[8:]),
    }
    metas: dict[str, Callable[[dict], Any]] = {
        "meta-list": lambda m: [1, 2], "meta-str": lambda m: "not json", "meta-null": lambda m: None,
        "meta-json-string": lambda m: json.dumps("abc"), "arch-int": lambda m: {**m, "arch": 5},
        "arch-unknown": lambda m: {**m, "arch": "nope"}, "num-classes-str": lambda m: {**m, "num_classes": "ten"},
        "num-classes-huge": lambda m: {**m, "num_classes": 10**12}, "num-classes-neg": lambda m: {**m, "num_classes": -1},
        "input-spec-list": lambda m: {**m, "input_spec": [1]}, "input-spec-null": lambda m: {**m, "input_spec": None},
        "shape-huge": lambda m: {**m, "input_spec": {**m["input_spec"], "shape": [10**9, 10**9]}},
        "shape-str": lambda m: {**m, "input_spec": {**m["input_spec"], "shape": "abc"}},
        "mean-nan": lambda m: {**m, "input_spec": {**m["input_spec"], "mean": [float("nan")]}},
        "std-zero": lambda m: {**m, "input_spec": {**m["input_spec"], "std": [0.0]}},
        "arch-args-str": lambda m: {**m, "arch_args": "x"}, "arch-args-bad": lambda m: {**m, "arch_args": {"hidden": "x"}},
        "arch-args-huge": lambda m: {**m, "arch_args": {"hidden": [10**7, 10**7]}},
        "dataset-int": lambda m: {**m, "dataset": 7}, "dataset-unknown": lambda m: {**m, "dataset": "nope"},
        "versions-str": lambda m: {**m, "versions": "x"}, "accuracy-str": lambda m: {**m, "test_accuracy": "high"},
        "dp-bad": lambda m: {**m, "dp": {"sigma": "x", "q": -1}}, "dp-list": lambda m: {**m, "dp": [1]},
        "format-future": lambda m: {**m, "format": 999}, "name-dict": lambda m: {**m, "name": {"a": 1}},
        "deep-json": lambda m: "[" * 100000 + "]" * 100000,
    }
    for label, edit in metas.items():
        files[label] = fx.ckpt_with_meta(f"ck-{label}.st", edit)

    def nan_w(state: dict) -> None:
        k = next(iter(state))
        state[k] = torch.full_like(state[k], float("nan"))

    def drop_w(state: dict) -> None:
        state.pop(next(iter(state)))

    def shape_w(state: dict) -> None:
        k = next(iter(state))
        state[k] = torch.zeros(3, 3)

    def int_w(state: dict) -> None:
        k = next(iter(state))
        state[k] = state[k].to(torch.int64)

    for label, w in (("weights-nan", nan_w), ("weights-missing", drop_w), ("weights-shape", shape_w),
                     ("weights-int", int_w)):
        files[label] = fx.ckpt_with_meta(f"ck-{label}.st", lambda m: m, w)
    files["no-meta"] = fx.path("ck-nometa.st")
    from safetensors.torch import load_file, save_file
    save_file(load_file(str(fx.model)), str(files["no-meta"]))
    cs: list[Case] = []
    for label, p in files.items():
        s = str(p)
        cs.append(Case("info", "checkpoint", ["info", s]))
        cs.append(Case("attack", "checkpoint", ["attack", "-m", s, "-a", "fgsm", "--eps", "0.1", "--n", "8"]))
        o = fx.path(f"audit-ck-{label}")
        cs.append(Case("audit", "checkpoint", ["audit", "-m", s, "-c", str(fx.config), "-o", str(o)], out=o,
                       kind="runfolder"))
        if label in ("weights-nan", "meta-list", "truncated-half", "std-zero", "shape-huge", "arch-args-huge"):
            cs.append(Case("leak", "checkpoint", ["leak", "-m", s, "-a", "dlg", "--n", "1", "--max-iter", "2"]))
            cs.append(Case("mia", "checkpoint", ["mia", "-m", s, "-d", "digits", "-a", "yeom", "--shadows", "0",
                                                 "--eval-size", "8"]))
    return cs


def data_cases(fx: Fixtures) -> list[Case]:
    cs: list[Case] = []
    roots: dict[str, tuple[str, Path]] = {}

    def npz(label: str, data: bytes) -> None:
        roots[label] = ("npz", fx.write(f"{label}.npz", data))

    npz("npz-zip-bomb", lf.zip_bomb_npz(1 << 31))
    npz("npz-forged-huge", lf.forged_npz((10**6, 10**6)))
    npz("npz-labels-1e9", lf.npz_bytes(y=np.full(8, 10**9, dtype=np.int64)))
    npz("npz-labels-neg", lf.npz_bytes(y=np.full(8, -3, dtype=np.int64)))
    npz("npz-labels-float", lf.npz_bytes(y=np.linspace(0, 1, 8)))
    npz("npz-object", lf.npz_bytes(y=np.array([object()] * 8, dtype=object)) if False else
        lf.npz_bytes(x=np.array([{"a": 1}] * 8, dtype=object)))
    npz("npz-nan", lf.npz_bytes(x=np.full((8, 6, 6), np.nan, dtype=np.float32)))
    npz("npz-missing-y", lf.npz_bytes() .replace(b"y.npy", b"q.npy"))
    npz("npz-truncated", lf.npz_bytes()[:100])
    npz("npz-empty", b"")
    npz("npz-len-mismatch", lf.npz_bytes(y=np.arange(3) % 2))
    npz("npz-zero-examples", lf.npz_bytes(x=np.zeros((0, 6, 6), np.uint8), y=np.zeros(0, np.int64)))
    npz("npz-1d", lf.npz_bytes(x=np.zeros(8, np.uint8)))
    npz("npz-6d", lf.npz_bytes(x=np.zeros((8, 1, 1, 1, 1, 2), np.uint8)))
    # IDX (mnist) with huge dims, truncated gz, gzip bomb
    for label, mk in (
        ("idx-huge-dims", lambda r: (r / "train-images-idx3-ubyte").write_bytes(
            struct.pack(">BBBB", 0, 0, 8, 3) + struct.pack(">3I", 2**31, 2**31, 2**31))),
        ("idx-overflow-dims", lambda r: (r / "train-images-idx3-ubyte").write_bytes(
            struct.pack(">BBBB", 0, 0, 8, 4) + struct.pack(">4I", 2**32 - 1, 2**32 - 1, 2**32 - 1, 2**32 - 1))),
        ("idx-truncated-gz", lambda r: [(r / f).write_bytes((r / f).read_bytes()[:40]) for f in os.listdir(r)]),
        ("idx-gzip-bomb", lambda r: (r / "train-images-idx3-ubyte.gz").write_bytes(
            gzip.compress(lf.idx_bytes(np.zeros(1, np.uint8), dims=(20000, 28, 28)) + bytes(20000 * 784 - 1), 9))),
        ("idx-wrong-magic", lambda r: (r / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x01\x02\x03\x04" * 10))),
        ("idx-labels-oob", None),
    ):
        r = fx.path(label)
        r.mkdir()
        if label == "idx-labels-oob":
            lf.make_mnist(r, labels=np.full(12, 200))
        else:
            lf.make_mnist(r, gz=True)
            mk(r)
        roots[label] = ("mnist", r)
    # image folders
    for label, files in (("img-fifo", None), ("img-bomb", {"cat/big.png": lf.png_header_only(20000, 20000)}),
                         ("img-not-png", {"cat/x.png": b"not a png"}), ("img-empty-file", {"dog/e.png": b""})):
        r = fx.path(label)
        lf.make_image_folder(r, files)
        if label == "img-fifo":
            os.mkfifo(r / "cat" / "x.png")
        roots[label] = ("imagefolder", r)
    r = fx.path("img-empty-folder")
    r.mkdir()
    roots["img-empty-folder"] = ("imagefolder", r)
    # cifar: malicious pickle, truncated batch
    r = fx.path("cifar-evil")
    r.mkdir()
    lf.make_cifar10(r, test_batch=b"cos\nsystem\n(S'echo pwned > /tmp/bastion-pwned'\ntR.")
    roots["cifar-evil-pickle"] = ("cifar10", r)
    r = fx.path("cifar-trunc")
    r.mkdir()
    lf.make_cifar10(r, test_batch=lf.cifar_batch_bytes()[:50])
    roots["cifar-truncated"] = ("cifar10", r)
    r = fx.path("cifar-huge-len")
    r.mkdir()
    lf.make_cifar10(r, test_batch=b"\x80\x04\x95" + struct.pack("<Q", 2**40) + b"X" + struct.pack("<I", 2**31))
    roots["cifar-huge-length"] = ("cifar10", r)
    for label, (name, root) in roots.items():
        o = fx.path(f"tr-{label}.st")
        cs.append(Case("train", "data-file", ["train", "-m", "mlp", "-d", name, "--root", str(root), "--epochs", "1",
                                              "-o", str(o)], out=o))
        cs.append(Case("attack", "data-file", ["attack", "-m", str(fx.model), "-d", name, "--root", str(root),
                                               "-a", "fgsm", "--eps", "0.1", "--n", "8"]))
        o = fx.path(f"au-{label}")
        cs.append(Case("audit", "data-file", ["audit", "-m", str(fx.model), "-d", name, "--root", str(root),
                                              "-c", str(fx.config), "-o", str(o)], out=o, kind="runfolder"))
    return cs


# ----------------------------------------------------------------------------- faults

def _audit_args(fx: Fixtures, cfg: Path, out: Path) -> list[str]:
    return ["audit", "-m", str(fx.model), "-c", str(cfg), "-o", str(out)]


def slow_config(fx: Fixtures) -> Path:
    return fx.write("slow.yaml", "seed: 0\ndata: {n: 64}\nsections:\n  - kind: evasion\n    attacks:\n"
                    "      - {attack: pgd, eps: [0.05, 0.1, 0.15, 0.2, 0.25, 0.3], params: {steps: 300}}\n")


def _popen(args: list[str]) -> subprocess.Popen:
    full = ["timeout", "-s", "KILL", str(TIMEOUT), PY, "-m", "bastion.cli.main", *args]
    return subprocess.Popen(full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            env={**os.environ, "BASTION_QUIET": "1"}, start_new_session=True)


def concurrent_case(fx: Fixtures, cfg: Path, wait: bool) -> Case:
    def go(case: Case) -> dict[str, Any]:
        t0 = time.perf_counter()
        extra = ["--wait"] if wait else []
        a = _popen(_audit_args(fx, cfg, case.out))
        time.sleep(3.0)
        b = _popen(_audit_args(fx, cfg, case.out) + extra)
        _, ea = a.communicate()
        _, eb = b.communicate()
        rcs = (a.returncode, b.returncode)
        ok_rcs = {(0, 0)} if wait else {(0, 2), (0, 0)}
        rc = 0 if rcs in ok_rcs else (a.returncode if a.returncode != 0 else b.returncode or 1)
        err = eb.decode("utf-8", "replace") + ea.decode("utf-8", "replace")
        return {"rc": rc, "stderr": err, "wall_s": time.perf_counter() - t0, "detail": f"exit codes {rcs}",
                "half_written": half_written(case, rc)}
    return Case("audit", "concurrent" + ("-wait" if wait else ""), ["audit", "(two at once)"],
                out=fx.path("conc"), kind="runfolder", custom=go)


def kill_resume_case(fx: Fixtures, cfg: Path, delay: float) -> Case:
    def go(case: Case) -> dict[str, Any]:
        t0 = time.perf_counter()
        p = _popen(_audit_args(fx, cfg, case.out))
        steps = case.out / "steps"
        deadline = time.time() + 40
        while time.time() < deadline and p.poll() is None:
            if steps.is_dir() and len(list(steps.glob("*.json"))) >= 1:
                break
            time.sleep(0.05)
        time.sleep(delay)
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        mid = half_written(case, 1, allow_temps=True)
        rc, out, err, _ = _cli(_audit_args(fx, cfg, case.out))
        detail = next((ln for ln in out.splitlines() if "reused" in ln), "")
        hw = mid or half_written(case, rc)
        if rc == 0 and "reused" in detail and detail.split()[3] == "0":
            hw = hw or "nothing reused after kill -9"
        return {"rc": rc, "stderr": err, "wall_s": time.perf_counter() - t0, "detail": detail, "half_written": hw}
    return Case("audit", "kill-9-resume", ["audit", f"(kill -9 after first step + {delay}s, resume)"],
                out=fx.path("kill"), kind="runfolder", custom=go)


def corrupt_resume_case(fx: Fixtures, how: str) -> Case:
    def go(case: Case) -> dict[str, Any]:
        t0 = time.perf_counter()
        rc, _, err, _ = _cli(_audit_args(fx, fx.config, case.out))
        if rc != 0:
            return {"rc": rc, "stderr": err, "wall_s": time.perf_counter() - t0, "half_written": "first run failed"}
        step = sorted((case.out / "steps").glob("*.json"))[0]
        tensors = sorted((case.out / "tensors").glob("*")) if (case.out / "tensors").is_dir() else []
        if how == "truncate-step":
            step.write_bytes(step.read_bytes()[: len(step.read_bytes()) // 2])
        elif how == "empty-step":
            step.write_bytes(b"")
        elif how == "garbage-step":
            step.write_bytes(os.urandom(200))
        elif how == "step-wrong-type":
            step.write_text("[1, 2, 3]")
        elif how == "step-nan":
            step.write_text(step.read_text().replace("0.", "NaN0.", 1))
        elif how == "empty-tensor" and tensors:
            tensors[0].write_bytes(b"")
        elif how == "truncate-tensor" and tensors:
            tensors[0].write_bytes(tensors[0].read_bytes()[:30])
        elif how == "results-deleted":
            (case.out / "results.json").unlink()
        elif how == "report-deleted":
            (case.out / "report.html").unlink()
        elif how == "results-garbage":
            (case.out / "results.json").write_bytes(b"\xff" * 10)
        elif how == "steps-is-file":
            shutil.rmtree(case.out / "steps")
            (case.out / "steps").write_text("x")
        elif how == "stale-lock":
            (case.out / ".lock").write_text("99999999")
        rc, out, err, _ = _cli(_audit_args(fx, fx.config, case.out))
        return {"rc": rc, "stderr": err, "wall_s": time.perf_counter() - t0,
                "detail": next((ln for ln in out.splitlines() if "reused" in ln), ""),
                "half_written": half_written(case, rc)}
    return Case("audit", "corrupt-cache-resume", ["audit", f"({how}, resume)"], out=fx.path(f"cor-{how}"),
                kind="runfolder", custom=go)


def fault_cases(fx: Fixtures) -> list[Case]:
    cfg = slow_config(fx)
    cs = [concurrent_case(fx, cfg, False), concurrent_case(fx, cfg, True)]
    cs += [kill_resume_case(fx, cfg, d) for d in (0.0, 0.3, 1.0)]
    cs += [corrupt_resume_case(fx, h) for h in (
        "truncate-step", "empty-step", "garbage-step", "step-wrong-type", "step-nan", "empty-tensor",
        "truncate-tensor", "results-deleted", "report-deleted", "results-garbage", "steps-is-file", "stale-lock")]
    return cs


# ----------------------------------------------------------------------------- main

def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    by_cmd: dict[str, Counter] = defaultdict(Counter)
    by_cat: dict[str, Counter] = defaultdict(Counter)
    for r in records:
        for table, key in ((by_cmd, r["command"]), (by_cat, r["category"])):
            c = table[key]
            c["cases"] += 1
            c["traceback"] += r["traceback"]
            c["exit1"] += r["rc"] == 1
            c["timeout"] += r["timeout"]
            c["half_written"] += bool(r["half_written"])
            c["multiline"] += not r["one_line"]
            c["other_rc"] += r["rc"] not in (0, 1, 2) and not r["timeout"]
            c["failed"] += not r["ok"]
    tot = Counter()
    for c in by_cmd.values():
        tot.update(c)
    return {"total": dict(tot), "by_command": {k: dict(v) for k, v in sorted(by_cmd.items())},
            "by_category": {k: dict(v) for k, v in sorted(by_cat.items())}}


def print_table(title: str, rows: dict[str, dict[str, int]]) -> None:
    cols = ["cases", "failed", "traceback", "exit1", "timeout", "half_written", "multiline", "other_rc"]
    print(f"\n{title:<22}" + "".join(f"{c:>13}" for c in cols))
    for k, v in rows.items():
        print(f"{k:<22}" + "".join(f"{v.get(c, 0):>13}" for c in cols))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=2, help="cases run at once (default 2)")
    ap.add_argument("--only", default="", help="comma-separated command names to run")
    ap.add_argument("--out", default=str(REPO / "docs" / "results" / "hardening_sweep.json"))
    opts = ap.parse_args()
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="bastion-sweep-"))
    fx = Fixtures(work)
    cases = (device_cases(fx) + number_cases(fx) + path_cases(fx) + arg_cases(fx) + config_cases(fx)
             + checkpoint_cases(fx) + data_cases(fx))
    faults = fault_cases(fx)
    if opts.only:
        keep = set(opts.only.split(","))
        cases = [c for c in cases if c.command in keep]
        faults = [c for c in faults if c.command in keep]
    for c in cases:
        with contextlib.suppress(OSError):
            c.preexisting = c.preexisting or (c.out is not None and c.out.exists())
    print(f"{len(cases) + len(faults)} cases, {opts.jobs} at once, work folder {work}", flush=True)
    done = 0

    def one(c: Case) -> dict[str, Any]:
        nonlocal done
        r = run_case(c)
        done += 1
        if not r["ok"]:
            print(f"FAIL [{c.command}/{c.category}] rc={r['rc']} tb={r['traceback']} hw={r['half_written']!r} "
                  f"{' '.join(c.args)[:160]!r}\n    {r['stderr_tail'][-200:]!r}", flush=True)
        elif done % 50 == 0:
            print(f"  {done} done ({time.perf_counter() - t0:.0f} s)", flush=True)
        return r

    with ThreadPoolExecutor(opts.jobs) as pool:
        records = list(pool.map(one, cases))
    records += [one(c) for c in faults]   # faults one at a time: they time their own processes
    pwned = Path("/tmp/bastion-pwned").exists()
    summary = summarise(records)
    summary["code_executed"] = pwned
    summary["wall_s"] = round(time.perf_counter() - t0, 1)
    print_table("command", summary["by_command"])
    print_table("category", summary["by_category"])
    print_table("all", {"total": summary["total"]})
    print(f"\ncode executed by a malicious input: {pwned}; wall {summary['wall_s']} s")
    out = Path(opts.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"summary": summary, "failures": [r for r in records if not r["ok"]],
                               "cases": [{k: r[k] for k in ("command", "category", "args", "rc", "traceback",
                                                            "one_line", "half_written", "wall_s")}
                                         for r in records]}, indent=1, default=str))
    shutil.rmtree(work, ignore_errors=True)
    return 0 if summary["total"].get("failed", 0) == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
