"""`bastion train --defense` and `bastion defend`: defended checkpoints that record their
defense and load back as the defended Classifier in every command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bastion.cli.main import run
from bastion.defenses.detect import Detected
from bastion.defenses.preprocess import Preprocessed
from bastion.models import load_classifier, save_classifier


def _json(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def ckpt(small_model, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("defend") / "base.st"
    save_classifier(path, small_model, dataset="mnist-5k")
    return path


def test_train_pgd_at_records_the_defense(tmp_path: Path, capsys) -> None:
    out = tmp_path / "at.st"
    rc = run(["train", "--model", "mlp", "--data", "digits", "--epochs", "1", "--defense", "pgd-at",
              "--eps", "0.1", "--defense-arg", "steps=2", "--out", str(out), "--json", "-q"])
    assert rc == 0
    rep = _json(capsys)
    assert rep["defense"]["name"] == "pgd-at" and rep["defense"]["eps"] == 0.1 and rep["defense"]["steps"] == 2
    assert rep["defense"]["random_start"] is True  # Madry et al.'s default kept
    assert run(["info", str(out), "--json"]) == 0
    meta = _json(capsys)
    assert meta["defense"]["name"] == "pgd-at" and meta["defense"]["eps"] == 0.1
    assert meta["training"]["epochs"] == 1


def test_train_distillation_records_temperature(tmp_path: Path, capsys) -> None:
    out = tmp_path / "distilled.st"
    rc = run(["train", "--model", "mlp", "--data", "digits", "--epochs", "1", "--lr", "0.01",
              "--defense", "distillation", "--defense-arg", "temperature=20", "--out", str(out), "--json", "-q"])
    assert rc == 0
    rep = _json(capsys)
    assert rep["defense"]["name"] == "distillation" and rep["defense"]["temperature"] == 20
    assert load_classifier(out).meta["defense"]["deploy_temperature"] == 1.0


@pytest.mark.parametrize("argv, msg", [
    (["--defense", "distillation", "--defense-arg", "temperature=0"], "temperature must be"),
    (["--defense", "distillation", "--eps", "0.3"], "distillation has no eps"),
    (["--defense", "madry"], "valid training defenses: distillation, fast-at, gaussian-aug, ibp, pgd-at, pixeldp, trades"),
    (["--defense", "trades", "--defense-arg", "steps=2.5"], "steps must be int"),
    (["--defense", "pgd-at", "--defense-arg", "gamma=1"], "has no parameter gamma"),
    (["--eps", "0.3"], "need --defense"),
])
def test_train_defense_bad_input(argv: list[str], msg: str, tmp_path: Path, capsys) -> None:
    out = tmp_path / "x.st"
    assert run(["train", "--model", "mlp", "--data", "digits", "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert msg in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_defend_median_loads_back_everywhere(ckpt: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "median.st"
    rc = run(["defend", "--model", str(ckpt), "--defense", "median", "--params", "k=3", "--out", str(out),
              "--n", "200", "--json", "-q"])
    assert rc == 0
    rep = _json(capsys)
    assert rep["defended"] == {"kind": "preprocess", "name": "median", "params": {"kernel": 3}, "eot_samples": 10,
                               "differentiable": True, "random": False}
    assert 0.8 < rep["defended_accuracy"] <= rep["clean_accuracy"] + 0.02
    clf = load_classifier(out)
    assert isinstance(clf, Preprocessed) and clf.transform.kernel == 3
    assert run(["info", str(out), "--json"]) == 0
    meta = _json(capsys)
    assert meta["loads_as"]["class"] == "Preprocessed" and meta["defended"]["name"] == "median"
    assert run(["attack", "--model", str(out), "--attack", "fgsm", "--eps", "0.1", "--n", "20", "--json", "-q"]) == 0
    res = _json(capsys)
    assert res["attack"] == "fgsm" and res["n"] == 20
    # the attack ran on the defended model: its clean accuracy is the defended one
    from bastion.data import load
    test = load("mnist-5k", "test").take(20)
    assert res["clean_accuracy"] == pytest.approx(clf.accuracy(test.x, test.y))


def test_defend_feature_squeezing_is_calibrated(ckpt: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "fs.st"
    rc = run(["defend", "--model", str(ckpt), "--defense", "feature-squeezing", "--params", "fpr=0.05",
              "--out", str(out), "--n", "500", "--json", "-q"])
    assert rc == 0
    rep = _json(capsys)
    assert rep["calibration"]["benign_flagged"] == pytest.approx(0.05, abs=0.002)
    assert 0.01 < rep["test_fpr"] < 0.10  # held-out benign inputs: near the calibrated rate
    clf = load_classifier(out)
    assert isinstance(clf, Detected) and clf.detector.threshold == pytest.approx(rep["threshold"])
    from bastion.data import load
    x = load("mnist-5k", "test").x[:500]
    assert float(clf.detect(x).float().mean()) == pytest.approx(rep["test_fpr"])
    # `bastion attack` on the detector checkpoint reports what the detector caught
    rc = run(["attack", "--model", str(out), "--attack", "pgd", "--eps", "0.3", "--arg", "steps=10", "--n", "40",
              "--json", "-q"])
    assert rc == 0
    det = _json(capsys)["detection"]
    assert det["detector"] == "feature-squeezing"
    assert det["false_positive_rate"]["n"] == 40 and det["detection_rate"]["value"] >= 0.5
    assert det["robust_accuracy_with_reject"]["value"] >= det["robust_accuracy"]["value"]


def test_defend_binary_detector_weights_round_trip(ckpt: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "binary.st"
    rc = run(["defend", "--model", str(ckpt), "--defense", "binary", "--params", "epochs=1", "--fit-n", "300",
              "--calib-n", "200", "--out", str(out), "--n", "100", "--json", "-q"])
    assert rc == 0
    rep = _json(capsys)
    clf = load_classifier(out)
    assert isinstance(clf, Detected) and clf.detector.name == "binary"
    from bastion.data import load
    x = load("mnist-5k", "test").x[:100]
    assert float(clf.detect(x).float().mean()) == pytest.approx(rep["test_fpr"])
    fresh = load_classifier(out)
    assert torch.equal(fresh.detector.score(x), clf.detector.score(x))


@pytest.mark.parametrize("defense, params, msg", [
    ("bit-depth", ["bits=9"], "bits must be an integer in 1..8"),
    ("median", ["k=4"], "must be odd"),
    ("jpeg", ["quality=0"], "quality"),
    ("feature-squeezing", ["fpr=1.5"], "fpr must lie strictly between 0 and 1"),
    ("median", ["radius=2"], "has no parameter radius"),
    ("sharpen", [], "valid defenses: "),
])
def test_defend_bad_input(defense: str, params: list[str], msg: str, ckpt: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "bad.st"
    argv = ["defend", "--model", str(ckpt), "--defense", defense, "--out", str(out)]
    for p in params:
        argv += ["--params", p]
    assert run(argv) == 2
    err = capsys.readouterr().err
    assert msg in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_defend_refuses_a_defended_model(ckpt: Path, tmp_path: Path, capsys) -> None:
    first = tmp_path / "once.st"
    assert run(["defend", "--model", str(ckpt), "--defense", "bit-depth", "--out", str(first), "-q"]) == 0
    capsys.readouterr()
    again = tmp_path / "twice.st"
    assert run(["defend", "--model", str(first), "--defense", "median", "--out", str(again)]) == 2
    assert "already a defended model" in capsys.readouterr().err
    assert not again.exists()


def test_python_api_l1_bound_and_chain_round_trip(small_model, mnist_train, tmp_path: Path) -> None:
    from bastion.defenses.saved import make_defense

    fixed = make_defense(small_model, "l1", {}, mnist_train)
    assert fixed.detector.threshold == 0.5  # the attack-independent bound of Wei et al. (2020)
    calibrated = make_defense(small_model, "l1", {"fpr": 0.1}, mnist_train, calib_n=200)
    assert calibrated.detector.threshold != 0.5 and calibrated.detector.calibration["n"] == 200
    chain = make_defense(small_model, "chain", {"transforms": ["bit-depth", {"name": "median", "kernel": 3}]})
    path = save_classifier(tmp_path / "chain.st", chain, dataset="mnist-5k")  # delegates to save_defended
    back = load_classifier(path)
    x = mnist_train.x[:16]
    assert isinstance(back, Preprocessed) and torch.equal(back.predict(x), chain.predict(x))
    assert [t.name for t in back.transform.transforms] == ["bit-depth", "median"]
