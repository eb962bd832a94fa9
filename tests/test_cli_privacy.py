"""`bastion privacy epsilon|sigma`, `bastion train --dp` and the `dp` audit section."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bastion.cli.main import run
from bastion.models import read_metadata


def test_privacy_epsilon_json(capsys: pytest.CaptureFixture[str]) -> None:
    rc = run(["privacy", "epsilon", "--q", "0.01", "--sigma", "6", "--steps", "10000",
              "--delta", "1e-5", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    eps = out["epsilon"]
    assert set(eps) == {"basic", "advanced", "optimal", "zcdp", "moments", "rdp"}
    assert round(eps["zcdp"], 3) == 1.159 and round(eps["moments"], 3) == 0.823
    assert round(eps["rdp"], 3) == 0.659
    assert out["labels"]["rdp"].startswith("RDP")


def test_privacy_sigma(capsys: pytest.CaptureFixture[str]) -> None:
    rc = run(["privacy", "sigma", "--target-eps", "1.159", "--q", "0.01", "--steps", "10000",
              "--accountant", "zcdp", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["sigma"] == pytest.approx(6.0, rel=2e-3)
    assert out["epsilon"]["zcdp"] <= 1.159


@pytest.mark.parametrize("argv", [["--delta", "1"], ["--sigma", "0"], ["--q", "1.5"], ["--q", "0"]])
def test_privacy_bad_input_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    base = {"--q": "0.01", "--sigma": "6", "--steps": "100", "--delta": "1e-5"}
    base[argv[0]] = argv[1]
    args = ["privacy", "epsilon"] + [t for kv in base.items() for t in kv]
    assert run(args) == 2


def test_train_dp_records_privacy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "dp.st"
    rc = run(["train", "-m", "mlp", "-d", "digits", "--arg", "hidden=[16]", "-o", str(out), "--dp",
              "--sigma", "4", "--clip", "2", "--dynamic", "dyn-s-sigma", "--decay", "exp",
              "--steps", "6", "--delta", "1e-5", "--json"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    rec = read_metadata(out)["privacy"]
    assert rec["variant"] == "dyn-s-sigma" and rec["steps"] == 6 and rec["sigma"] == 4.0
    assert rec["epsilon"] == pytest.approx(report["privacy"]["epsilon"])
    assert set(rec["epsilon"]) == {"basic", "advanced", "optimal", "zcdp", "moments", "rdp"}
    assert rec["sigma_range"][0] < rec["sigma_range"][1] == 4.0

    from bastion.audit.sections import get_section
    from bastion.models import load_classifier

    class Ctx:
        meta = read_metadata(out)
        model = load_classifier(out, device="cpu")
    sec = get_section("dp")(Ctx(), {"kind": "dp", "accountants": True})  # type: ignore[arg-type]
    assert sec.summary["private"] is True
    again = sec.summary["epsilon_recomputed"]
    for k, v in rec["epsilon"].items():
        assert again[k] == pytest.approx(v, rel=1e-9)
    plain = get_section("dp")(type("C", (), {"meta": {}})(), {"kind": "dp"})  # type: ignore[arg-type]
    assert plain.summary["private"] is False


def test_train_dp_bad_input(tmp_path: Path) -> None:
    assert run(["train", "-m", "mlp", "-d", "digits", "-o", str(tmp_path / "x.st"), "--dp",
                "--delta", "1.5"]) == 2
    assert run(["train", "-m", "resnet", "-d", "digits", "-o", str(tmp_path / "x.st"), "--dp",
                "--arg", "depth=8"]) == 2


def test_audit_shows_privacy_block(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`bastion audit` on a DP checkpoint reports its privacy block even when the config has
    no `dp` section; a bad dp option is refused before any work."""
    ckpt = tmp_path / "dp.st"
    assert run(["train", "-m", "mlp", "-d", "digits", "--arg", "hidden=[16]", "-o", str(ckpt), "--dp",
                "--sigma", "6", "--clip", "4", "--steps", "3", "--delta", "1e-5", "--json"]) == 0
    cfg = tmp_path / "audit.yaml"
    cfg.write_text("sections:\n  - kind: evasion\n    attacks:\n      - {attack: fgsm, eps: [0.1]}\n")
    capsys.readouterr()
    out = tmp_path / "run"
    assert run(["audit", "-m", str(ckpt), "-c", str(cfg), "-o", str(out), "--n", "8", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    dp = res["sections"]["dp"]
    assert dp["kind"] == "dp" and dp["summary"]["private"] is True
    assert dp["summary"]["sigma"] == 6.0 and dp["summary"]["clip"] == 4.0
    assert dp["summary"]["epsilon"] == pytest.approx(read_metadata(ckpt)["privacy"]["epsilon"])
    assert "epsilon per accountant" in (out / "report.html").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text("sections:\n  - kind: dp\n    delta: 2\n")
    assert run(["audit", "-m", str(ckpt), "-c", str(bad), "-o", str(tmp_path / "r2"), "--n", "8"]) == 2
    assert not (tmp_path / "r2" / "results.json").exists()
