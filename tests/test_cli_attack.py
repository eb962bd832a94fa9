"""`bastion attack` and `bastion attacks`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bastion.cli.main import run
from bastion.models import save_classifier


@pytest.fixture(scope="module")
def ckpt(small_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "small.st"
    save_classifier(path, small_model, dataset="mnist-5k")
    return path


def test_attacks_lists_registry(capsys):
    assert run(["attacks", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    by_name = {r["name"]: r for r in rows}
    every = ("fgsm", "bim", "pgd", "mifgsm", "apgd", "apgd-t", "autoattack", "cw-l2", "cw-linf",
             "cw-l0", "deepfool", "deepfool-dynamic", "jsma", "square", "hopskipjump",
             "one-pixel", "universal")
    assert set(every) <= set(by_name)
    assert by_name["hopskipjump"]["black_box"] and by_name["cw-l0"]["kind"] == "minimum-norm"
    assert not by_name["universal"]["targeted"]
    assert set(by_name["pgd"]["norms"]) == {"linf", "l2", "l1"}
    assert by_name["pgd"]["defaults"]["steps"] == 40
    assert by_name["bim"]["kind"] == "fixed-budget"


def test_attack_writes_npz_and_json(ckpt, tmp_path, capsys):
    out = tmp_path / "adv.npz"
    rc = run(["attack", "--model", str(ckpt), "--data", "mnist-5k", "--attack", "pgd", "--norm", "linf",
              "--eps", "0.3", "--n", "8", "--arg", "steps=5", "--arg", "alpha=0.1", "--out", str(out),
              "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n"] == 8 and summary["params"]["steps"] == 5
    assert summary["asr"] >= 0.75 and summary["mean_conf"] is not None
    z = np.load(out)
    assert set(z.files) == {"x", "x_adv", "y", "pred_adv", "success"}
    assert z["x_adv"].shape == (8, 1, 28, 28)
    assert np.abs(z["x_adv"] - z["x"]).max() <= 0.3 + 1e-6
    assert (z["success"] == (z["pred_adv"] != z["y"])).all()
    assert not list(tmp_path.glob(".adv.npz.*"))  # no temp file left behind


def test_attack_targeted(ckpt, tmp_path, capsys):
    out = tmp_path / "t.npz"
    rc = run(["attack", "--model", str(ckpt), "--attack", "bim", "--eps", "0.3", "--targeted", "next",
              "--n", "6", "--correct-only", "--arg", "alpha=0.05", "--arg", "steps=8", "--out", str(out),
              "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["targeted"] is True
    z = np.load(out)
    assert (z["success"] == (z["pred_adv"] == z["target"])).all()
    assert z["success"].mean() >= 0.5


@pytest.mark.parametrize("argv,msg", [
    (["--attack", "nope"], "unknown attack"),
    (["--attack", "pgd", "--norm", "l0"], "supports norms"),
    (["--attack", "pgd", "--eps", "-1"], "non-negative"),
    (["--attack", "pgd", "--targeted", "worst"], "target mode"),
    (["--attack", "autoattack", "--targeted", "ll"], "untargeted"),
    (["--attack", "pgd", "--arg", "stepz=3"], "unknown parameter"),
    (["--attack", "pgd", "--out", "adv.txt"], ".npz"),
])
def test_attack_bad_input_exits_2(ckpt, capsys, argv, msg):
    rc = run(["attack", "--model", str(ckpt), "--n", "2", *argv])
    assert rc == 2
    assert msg in capsys.readouterr().err


def test_attack_missing_checkpoint(tmp_path, capsys):
    assert run(["attack", "--model", str(tmp_path / "none.st")]) == 2
    assert "not found" in capsys.readouterr().err
