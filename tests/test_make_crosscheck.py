"""`make crosscheck` installs the peer libraries without replacing the torch under test."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _recipe() -> list[list[str]]:
    """The commands `make crosscheck` would run (make -n), split into words."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    bin_dir = str(Path(sys.executable).parent)
    out = subprocess.run(["make", "-n", "-o", "Makefile", "crosscheck", f"BIN={bin_dir}",
                          "STAMP=Makefile"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [shlex.split(line) for line in out.splitlines() if line.strip()]


def _pip_installs(cmds: list[list[str]]) -> list[list[str]]:
    return [c for c in cmds if c[1:5] == ["-m", "pip", "install", "-q"]]


def test_crosscheck_pins_torch_and_installs_torchattacks_without_deps():
    cmds = _recipe()
    pin = [c for c in cmds if "torch.__version__" in " ".join(c)]
    assert pin and pin[0][-2] == ">"                      # the pin is the installed torch
    installs = _pip_installs(cmds)
    assert installs
    for c in installs:
        assert "-c" in c and c[c.index("-c") + 1] == pin[0][-1]
        assert not any("[crosscheck]" in w for w in c)     # the extra pulls torchvision
        assert not any(w.split(">")[0].split("=")[0] in ("torch", "torchvision") for w in c)
    ta = [c for c in installs if any(w.startswith("torchattacks") for w in c)]
    assert len(ta) == 1 and "--no-deps" in ta[0]
    assert all("--no-deps" not in c for c in installs if c is not ta[0])


@pytest.mark.crosscheck
def test_crosscheck_install_resolves_without_torch_or_cuda(tmp_path):
    """Dry-run the recipe's installs against the package index: nothing heavy is pulled."""
    import torch

    pin = tmp_path / "pin.txt"
    pin.write_text(f"torch=={torch.__version__}\n")
    for i, c in enumerate(_pip_installs(_recipe())):
        args = [w for w in c[5:] if w not in ("-c",) and not w.endswith("torch-pin.txt")]
        report = tmp_path / f"r{i}.json"
        done = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "-q",
                               "--report", str(report), "-c", str(pin), *args],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"package index unreachable: {done.stderr.strip().splitlines()[-1:]}")
        names = [p["metadata"]["name"].lower() for p in json.loads(report.read_text())["install"]]
        heavy = [n for n in names if n in ("torch", "torchvision", "triton")
                 or n.startswith(("nvidia", "cuda"))]
        assert not heavy, heavy
