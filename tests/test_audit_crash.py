"""kill -9 during `bastion audit`, then resume: every finished step is reused untouched,
nothing finished is recomputed, and the figures equal those of an uninterrupted run."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from bastion.models import save_classifier

ROOT = Path(__file__).resolve().parents[1]
STEPS = 6
CONFIG = {"seed": 3, "data": {"n": 64}, "sections": [{"kind": "evasion", "attacks": [
    {"attack": "fgsm", "eps": [0.05, 0.1, 0.2]},
    {"attack": "pgd", "eps": [0.05, 0.1, 0.2], "params": {"steps": 5, "alpha": 0.05}},
]}]}
TIMES = ("time_per_example_s", "wall_time_s")


def _cmd(ckpt: Path, cfg: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "bastion.cli.main", "audit", "--model", str(ckpt), "--config", str(cfg),
            "--out", str(out), "--device", "cpu"]


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", BASTION_QUIET="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    return env


def _finished(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (out / "steps").glob("*.json")} if (out / "steps").is_dir() else {}


def _figures(out: Path) -> dict[str, Any]:
    res = json.loads((out / "results.json").read_text())
    ev = res["sections"]["evasion"]["summary"]
    runs = [{k: v for k, v in r.items() if k not in TIMES} for r in ev["runs"]]
    return {"clean": res["clean_accuracy"], "runs": runs, "curves": ev["curves"]}


@pytest.fixture(scope="module")
def setup(small_model, tmp_path_factory) -> tuple[Path, Path, dict[str, Any]]:
    base = tmp_path_factory.mktemp("crash")
    ckpt = save_classifier(base / "small.st", small_model, dataset="mnist-5k")
    cfg = base / "audit.yaml"
    cfg.write_text(yaml.safe_dump(CONFIG))
    ref = base / "reference"
    subprocess.run(_cmd(ckpt, cfg, ref), env=_env(), check=True, capture_output=True, timeout=120)
    return ckpt, cfg, _figures(ref)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 5])
def test_kill_and_resume_matches_an_uninterrupted_run(setup, tmp_path: Path, seed: int) -> None:
    ckpt, cfg, reference = setup
    rng = random.Random(seed)
    after, delay = rng.randrange(1, STEPS + 1), rng.uniform(0.0, 0.05)  # kill: k steps done + delay
    out = tmp_path / "run"
    proc = subprocess.Popen(_cmd(ckpt, cfg, out), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(_finished(out)) < after and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = _finished(out)
    left = len(list(out.rglob("*.tmp")))  # > 0: killed in the middle of a write
    rerun = subprocess.run(_cmd(ckpt, cfg, out), env=_env(), capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    res = json.loads((out / "results.json").read_text())
    print(f"seed {seed}: kill after {after} steps + {delay * 1000:.0f} ms: {len(done)} finished, "
          f"{res['steps']['cached']} reused, {res['steps']['new']} recomputed, {left} temp files left")
    assert res["steps"]["cached"] == len(done) and res["steps"]["new"] == STEPS - len(done)
    assert res["steps"]["corrupt_recomputed"] == 0
    after_rerun = _finished(out)
    assert all(after_rerun[name] == data for name, data in done.items())  # finished steps untouched
    assert _figures(out) == reference
    assert not list(out.rglob("*.tmp"))
