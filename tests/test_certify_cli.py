"""`bastion train --defense gaussian-aug | ibp | pixeldp` and `bastion certify`: JSON on
stdout, per-input certificates in a file, one-line errors before work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bastion.cli.main import run


def _json(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("certify")
    out = {}
    for name, extra in (("gaussian-aug", ["--sigma", "0.25"]), ("ibp", ["--eps", "0.05"]),
                        ("pixeldp", ["--defense-arg", "construction_bound=0.3"])):
        out[name] = d / f"{name}.st"
        rc = run(["train", "--model", "mlp", "--arg", "hidden=[32]", "--epochs", "1", "--out", str(out[name]),
                  "--defense", name, *extra, "-q", "--threads", "1"])
        assert rc == 0
    return out


def test_train_records_certified_defenses(ckpts: dict[str, Path], capsys) -> None:
    capsys.readouterr()
    assert run(["info", str(ckpts["gaussian-aug"]), "--json"]) == 0
    meta = _json(capsys)
    assert meta["defense"]["name"] == "gaussian-aug" and meta["defense"]["sigma"] == 0.25
    assert run(["info", str(ckpts["pixeldp"]), "--json"]) == 0
    meta = _json(capsys)
    assert meta["defense"]["name"] == "pixeldp" and meta["defense"]["construction_bound"] == 0.3


def test_certify_smoothing_json_and_file(ckpts: dict[str, Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "certs.json"
    capsys.readouterr()
    rc = run(["certify", "-m", str(ckpts["gaussian-aug"]), "--samples", "200", "--n0", "20", "--n", "8",
              "--radii", "0,0.25", "--out", str(out), "--json", "-q", "--threads", "1"])
    assert rc == 0
    rep = _json(capsys)
    assert rep["sigma"] == 0.25                       # taken from the checkpoint's training
    assert [c["radius"] for c in rep["certified_accuracy"]] == [0.0, 0.25]
    assert 0 <= rep["abstain_rate"] <= 1 and rep["certified_accuracy"][0]["accuracy"] > 0.3
    saved = json.loads(out.read_text())
    assert len(saved["certificates"]) == 8 and {"radius", "abstain", "label"} <= set(saved["certificates"][0])
    # same seed, same certificates
    out2 = tmp_path / "again.json"
    run(["certify", "-m", str(ckpts["gaussian-aug"]), "--samples", "200", "--n0", "20", "--n", "8",
         "--radii", "0,0.25", "--out", str(out2), "-q", "--threads", "1"])
    assert json.loads(out2.read_text())["certificates"] == saved["certificates"]


@pytest.mark.parametrize("method, extra", [("pixeldp", ["--draws", "50"]), ("crown-ibp", ["--eps", "0,0.05"])])
def test_certify_other_methods(ckpts: dict[str, Path], capsys, method: str, extra: list[str]) -> None:
    ck = ckpts["pixeldp" if method == "pixeldp" else "ibp"]
    capsys.readouterr()
    assert run(["certify", "-m", str(ck), "--method", method, "--n", "20", "--json", "-q", "--threads", "1",
                *extra]) == 0
    rep = _json(capsys)
    assert rep["method"] == method and rep["certified_accuracy"]


@pytest.mark.parametrize("argv, msg", [
    (["--sigma", "0"], "--sigma"), (["--sigma", "-1"], "--sigma"), (["--alpha", "0.7"], "--alpha"),
    (["--alpha", "0"], "--alpha"), (["--n0", "0"], "--n0"), (["--samples", "0"], "--samples"),
    (["--method", "lp"], "valid certification methods"), (["--method", "pixeldp"], "PixelDP network"),
    (["--radii", "-1"], "radii"), (["--out", "x.txt"], ".json"),
    (["--method", "ibp", "--denoise-epochs", "1"], "denoiser only applies"),
    (["--denoise-epochs", "1", "--denoise-objective", "l1"], "denoiser objective"),
])
def test_certify_errors(ckpts: dict[str, Path], capsys, argv: list[str], msg: str) -> None:
    capsys.readouterr()
    rc = run(["certify", "-m", str(ckpts["gaussian-aug"]), *argv, "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and msg in err and err.startswith("error:") and len(err.strip().splitlines()) == 1


def test_train_sigma_refused_for_other_defenses(tmp_path: Path, capsys) -> None:
    rc = run(["train", "--model", "mlp", "--out", str(tmp_path / "m.st"), "--defense", "pgd-at", "--sigma", "0.3"])
    assert rc == 2 and "has none" in capsys.readouterr().err
    assert not (tmp_path / "m.st").exists()


def test_attack_on_a_certification_checkpoint_says_what_it_attacks(ckpts: dict[str, Path], capsys) -> None:
    capsys.readouterr()
    assert run(["attack", "--model", str(ckpts["pixeldp"]), "--attack", "fgsm", "--eps", "0.1", "--n", "8",
                "--threads", "1"]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "trained for certification (pixeldp)" in err and "bastion certify" in err
