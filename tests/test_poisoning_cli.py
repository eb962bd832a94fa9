"""`bastion poison`, `bastion train --data poisoned.npz`, `bastion scan` and the
`backdoor` / `poisoning` audit sections, with --json; bad input exits 2 naming the constraint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bastion.cli.main import run
from bastion.models import save_classifier
from poisoning_helpers import TARGET, backdoored_model


def _json(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return save_classifier(tmp_path_factory.mktemp("bd") / "bd.st", backdoored_model(), dataset="mnist-5k")


def test_poison_then_train_on_it(tmp_path: Path, capsys) -> None:
    out = tmp_path / "poisoned.npz"
    assert run(["poison", "--data", "mnist-5k", "--attack", "badnets", "--fraction", "0.05", "--target", "0",
                "--out", str(out), "--json"]) == 0
    rep = _json(capsys)
    assert rep["n_poisoned"] == 200 and rep["n"] == 4000 and rep["trigger"]["kind"] == "pattern"
    with np.load(out, allow_pickle=False) as z:
        assert z["poisoned_index"].tolist() == rep["poisoned_index"]
        assert set(z["y"][z["poisoned_index"]].tolist()) == {0}
        assert json.loads(str(z["metadata"]))["attack"] == "badnets"
        assert z["x_test"].shape == (1000, 1, 28, 28)
    ck = tmp_path / "m.st"
    assert run(["train", "--model", "mlp", "--data", str(out), "--epochs", "1", "--out", str(ck), "--json"]) == 0
    rep = _json(capsys)
    assert rep["test_accuracy"] > 0.6          # evaluated on the clean test split stored in the file


def test_label_flip_cli(tmp_path: Path, capsys) -> None:
    out = tmp_path / "flip.npz"
    assert run(["poison", "--attack", "label-flip", "--source", "7", "--target", "1", "--fraction", "0.02",
                "--out", str(out), "--json"]) == 0
    rep = _json(capsys)
    with np.load(out, allow_pickle=False) as z:
        assert rep["n_poisoned"] == 80 and set(z["y"][z["poisoned_index"]].tolist()) == {1}


def test_scan_neural_cleanse_writes_trigger_pngs(ckpt: Path, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "trig"
    assert run(["scan", "--model", str(ckpt), "--method", "neural-cleanse", "--epochs", "2", "--n-clean", "64",
                "--out-dir", str(folder), "--json"]) == 0
    rep = _json(capsys)
    assert len(rep["per_class"]) == 10 and len(rep["anomaly"]) == 10
    assert int(np.argmin(rep["l1"])) == TARGET
    pngs = sorted(folder.glob("trigger-class-*.png"))
    assert len(pngs) == 10 and pngs[0].read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("rounds", [1, 5])
def test_scan_spectral_on_a_poisoned_file(ckpt: Path, tmp_path: Path, capsys, rounds: int) -> None:
    data = tmp_path / "p.npz"
    assert run(["poison", "--fraction", "0.05", "--target", "0", "--out", str(data)]) == 0
    capsys.readouterr()
    assert run(["scan", "--model", str(ckpt), "--data", str(data), "--method", "spectral", "--eps", "0.33",
                "--rounds", str(rounds), "--json"]) == 0
    rep = _json(capsys)
    assert rep["method"] == "spectral" and rep["n_analysed"] == 4000
    assert rep["config"]["rounds"] == rounds
    with np.load(data, allow_pickle=False) as z:
        truth = set(z["poisoned_index"].tolist())
    found = set(rep["flagged_index"]) & truth
    assert len(found) >= 0.5 * len(truth)


@pytest.mark.parametrize("argv,msg", [
    (["poison", "--fraction", "1.5"], "[0, 1]"),
    (["poison", "--fraction", "-0.1"], "[0, 1]"),
    (["poison", "--target", "12"], "[0, 9]"),
    (["poison", "--trigger", "square", "--trigger-size", "40"], "no larger than the image"),
    (["poison", "--attack", "clean-label"], "needs --model"),
    (["poison", "--attack", "gradient-matching"], "valid"),
    (["scan", "--model", "nope.st", "--method", "magic"], "valid"),
    (["scan", "--model", "nope.st", "--method", "spectral", "--rounds", "0"], "--rounds"),
])
def test_bad_input_exits_2(argv, msg, tmp_path: Path, capsys) -> None:
    if argv[0] == "poison":
        argv = [*argv, "--out", str(tmp_path / "x.npz")]
    assert run(argv) == 2
    err = capsys.readouterr()
    assert msg in (err.out + err.err).replace("\n", " ")


@pytest.mark.slow  # trains a model on the poisoned copy
def test_audit_backdoor_and_poisoning_sections(ckpt: Path, tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "a.yaml"
    cfg.write_text("sections:\n"
                   "  - kind: backdoor\n    methods: [spectral, activation-clustering]\n    n_train: 1500\n"
                   "  - kind: poisoning\n    fraction: 0.1\n    n_train: 1500\n    epochs: 2\n")
    assert run(["audit", "--model", str(ckpt), "--config", str(cfg), "--n", "300", "--out", str(tmp_path / "r"),
                "--json"]) == 0
    res = _json(capsys)
    rows = {r["threat"]: r for r in res["scorecard"]}
    assert rows["backdoor"]["verdict"] in ("pass", "warn", "fail")
    assert rows["poisoning"]["verdict"] in ("pass", "warn", "fail")
    poison = res["sections"]["poisoning"]["summary"]
    assert poison["n_poisoned"] == 150 and 0 <= poison["attack_success_rate"] <= 1
    assert (tmp_path / "r" / "report.html").is_file()
