"""`bastion train --defense gaussian-aug | ibp | pixeldp` and `bastion certify`: JSON on
stdout, per-input certificates in a file, one-line errors before work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

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
    """A PixelDP network is attacked with its noise (EOT); a Gaussian-augmentation model's
    base network is attacked as it is, with a pointer to the smoothed classifier."""
    capsys.readouterr()
    assert run(["attack", "--model", str(ckpts["pixeldp"]), "--attack", "fgsm", "--eps", "0.1", "--n", "8",
                "--threads", "1", "--json"]) == 0
    out = _json(capsys)
    assert out["attacked_as"].startswith("pixeldp(") and "EOT over 16 noise draws" in out["attacked_as"]
    assert run(["attack", "--model", str(ckpts["gaussian-aug"]), "--attack", "fgsm", "--eps", "0.1", "--n", "8",
                "--threads", "1", "--json"]) == 0
    captured = capsys.readouterr()
    assert "attacked_as" not in json.loads(captured.out)
    err = " ".join(captured.err.split())
    assert "--defense smoothing" in err and "bastion certify" in err


def test_smoothed_checkpoint_is_the_certified_classifier(ckpts: dict[str, Path], tmp_path: Path, capsys) -> None:
    """`bastion defend --defense smoothing` writes a checkpoint that loads as the smoothed
    classifier (sigma from training), certifies exactly like its base, and is attacked
    through EOT, where a large L2 budget breaks it."""
    from bastion.defenses.certify.smoothing import SmoothedClassifier
    from bastion.models import load_classifier

    smoothed = tmp_path / "smoothed.st"
    assert run(["defend", "--model", str(ckpts["gaussian-aug"]), "--defense", "smoothing", "--out", str(smoothed),
                "--n", "200", "--threads", "1", "--json", "-q"]) == 0
    rep = _json(capsys)
    assert rep["kind"] == "certified" and rep["defended"]["params"] == {"sigma": 0.25, "eot_samples": 16}
    assert 0.5 < rep["defended_accuracy"] <= 1.0
    g = load_classifier(smoothed)
    assert isinstance(g, SmoothedClassifier) and g.sigma == 0.25
    certs = []
    for ckpt in (ckpts["gaussian-aug"], smoothed):
        out = tmp_path / f"{ckpt.stem}.json"
        assert run(["certify", "--model", str(ckpt), "--samples", "200", "--n0", "20", "--n", "6",
                    "--out", str(out), "--threads", "1", "--json", "-q"]) == 0
        summary = _json(capsys)
        assert summary["sigma"] == 0.25
        certs.append(json.loads(out.read_text())["certificates"])
    assert certs[0] == certs[1]  # the same certificates: no second layer of noise
    assert run(["attack", "--model", str(smoothed), "--attack", "pgd", "--norm", "l2", "--eps", "4",
                "--n", "20", "--threads", "1", "--json", "-q"]) == 0
    res = _json(capsys)
    assert "EOT over 16 noise draws" in res["attacked_as"]
    assert res["clean_accuracy"] >= 0.5 and res["robust_accuracy"] <= res["clean_accuracy"] - 0.3


@pytest.mark.parametrize("argv,msg", [
    (["--defense", "pixeldp"], "was not trained with `bastion train --defense pixeldp`"),
    (["--defense", "smoothing", "--params", "sigma=-1"], "sigma"),
    (["--defense", "smoothing", "--params", "noise=2"], "unknown parameter(s) noise"),
])
def test_certified_defense_errors(ckpts: dict[str, Path], tmp_path: Path, capsys, argv: list[str], msg: str) -> None:
    assert run(["defend", "--model", str(ckpts["ibp"]), *argv, "--out", str(tmp_path / "d.st"), "-q"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert msg in err, err
    assert not (tmp_path / "d.st").exists()


def test_pixeldp_checkpoint_round_trip(ckpts: dict[str, Path], tmp_path: Path, capsys) -> None:
    """`--defense pixeldp` stores the PixelDP network with its settings; it loads back with
    the same weights and noise scale, and `bastion certify --method pixeldp` accepts it."""
    from bastion.defenses.certify.pixeldp import PixelDPClassifier
    from bastion.models import load_classifier

    out = tmp_path / "pdp.st"
    assert run(["defend", "--model", str(ckpts["pixeldp"]), "--defense", "pixeldp", "--params", "eot_samples=4",
                "--out", str(out), "--n", "50", "-q", "--threads", "1"]) == 0
    a, b = load_classifier(ckpts["pixeldp"]), load_classifier(out)
    assert isinstance(b, PixelDPClassifier) and b.eot_samples == 4 and b.cfg.construction_bound == 0.3
    for (ka, va), (kb, vb) in zip(a.module.state_dict().items(), b._base.module.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    capsys.readouterr()
    assert run(["certify", "--model", str(out), "--method", "pixeldp", "--draws", "20", "--n", "4", "--json",
                "-q", "--threads", "1"]) == 0
    assert _json(capsys)["n"] == 4


def test_audit_evasion_attacks_a_pixeldp_network_with_its_noise(ckpts: dict[str, Path], tmp_path: Path) -> None:
    from bastion.audit.config import parse_config
    from bastion.audit.runner import run_audit

    cfg = parse_config({"seed": 0, "data": {"n": 16}, "sections": [
        {"kind": "evasion", "attacks": [{"attack": "fgsm", "eps": [0.1]}]}]})
    run = run_audit(ckpts["pixeldp"], cfg, tmp_path / "run")
    notes = run.results["sections"]["evasion"]["notes"]
    assert any(n.startswith("Attacked and scored: pixeldp(") and "EOT over 16 noise draws" in n for n in notes)
