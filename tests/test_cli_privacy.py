"""`bastion privacy epsilon|sigma`, `bastion train --dp` and the `dp` audit section."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bastion.cli.main import run
from bastion.models import read_metadata

ALL = {"basic", "advanced", "optimal", "zcdp", "moments", "rdp", "prv", "pld"}


def test_privacy_epsilon_json(capsys: pytest.CaptureFixture[str]) -> None:
    rc = run(["privacy", "epsilon", "--q", "0.01", "--sigma", "6", "--steps", "10000",
              "--delta", "1e-5", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    eps = out["epsilon"]
    assert set(eps) == ALL
    assert round(eps["moments"], 3) == 0.823 and round(eps["rdp"], 3) == 0.659
    assert eps["zcdp"] is None       # q < 1: the dissertation's rho is no bound
    assert out["accountants"]["zcdp"]["note"].startswith("not valid")
    assert out["labels"]["rdp"].startswith("RDP")
    kinds = {k: v["kind"] for k, v in out["accountants"].items()}
    assert kinds == {**{k: "guarantee" for k in ("rdp", "moments", "prv", "pld")},
                     **{k: "reference formula" for k in ("basic", "advanced", "optimal", "zcdp")}}
    head = out["headline"]
    assert head["epsilon"] == min(v for k, v in eps.items() if kinds[k] == "guarantee")
    # the composition formulas hold at their real total delta, and say so
    assert out["accountants"]["basic"]["delta"] == pytest.approx(1e-3)
    assert out["accountants"]["advanced"]["delta"] == pytest.approx(1.01e-3)
    assert eps["advanced"] == pytest.approx(7.458, abs=1e-3)


def test_privacy_epsilon_table_hides_invalid_formulas(capsys: pytest.CaptureFixture[str]) -> None:
    """q=0.01, sigma=1, T=1000 printed basic 815.7, advanced 1152.2, optimal 439.2 unflagged."""
    assert run(["privacy", "epsilon", "--q", "0.01", "--sigma", "1", "--steps", "1000"]) == 0
    err = capsys.readouterr().err
    for bad in ("815.7", "1152.2", "439.2"):
        assert bad not in err
    assert err.count("not valid: per-step epsilon 4.84 > 1") == 3
    assert "reference formula" in err and "guarantee" in err
    assert "tightest guarantee" in err and "2.1014" in err


def test_privacy_sigma(capsys: pytest.CaptureFixture[str]) -> None:
    rc = run(["privacy", "sigma", "--target-eps", "0.659", "--q", "0.01", "--steps", "10000",
              "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["sigma"] == pytest.approx(6.0, rel=2e-3) and out["kind"] == "guarantee"
    assert out["epsilon"]["rdp"] <= 0.659


def test_privacy_sigma_refuses_zcdp(capsys: pytest.CaptureFixture[str]) -> None:
    """zCDP calibrated eps 1 at q=0.01, T=10 to sigma 0.22 (RDP epsilon 37.3)."""
    rc = run(["privacy", "sigma", "--target-eps", "1", "--q", "0.01", "--steps", "10",
              "--accountant", "zcdp", "--json"])
    cap = capsys.readouterr()
    assert rc == 2 and cap.out == ""
    msg = cap.err.strip()
    assert "reference formula" in msg and "Traceback" not in msg and msg.startswith("error:")


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
    assert rec["epsilon"] == report["privacy"]["epsilon"]
    assert set(rec["epsilon"]) == ALL and set(rec["accountants"]) == ALL
    assert rec["accountants"]["zcdp"]["kind"] == "reference formula"
    assert rec["headline"]["epsilon"] == min(v["epsilon"] for v in rec["accountants"].values()
                                             if v["kind"] == "guarantee" and v["epsilon"] is not None)
    assert rec["noise"] == "secure" and rec["adjacency"] == "add-or-remove-one example"
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
        assert (again[k] is None) if v is None else again[k] == pytest.approx(v, rel=1e-9)
    assert any("tightest guarantee" in line for line in sec.summary["statement"])
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
    assert dp["summary"]["epsilon"] == read_metadata(ckpt)["privacy"]["epsilon"]
    assert dp["summary"]["noise"] == "secure"
    html = (out / "report.html").read_text()
    assert "epsilon per accountant" in html and "reference formula" in html
    assert "Epsilon assuming Poisson sampling" in html and "every intermediate model" in html
    bad = tmp_path / "bad.yaml"
    bad.write_text("sections:\n  - kind: dp\n    delta: 2\n")
    assert run(["audit", "-m", str(ckpt), "-c", str(bad), "-o", str(tmp_path / "r2"), "--n", "8"]) == 2
    assert not (tmp_path / "r2" / "results.json").exists()


def test_info_prints_dp_statement(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = tmp_path / "dp.st"
    assert run(["train", "-m", "mlp", "-d", "digits", "--arg", "hidden=[16]", "-o", str(ckpt), "--dp",
                "--sigma", "1", "--clip", "1", "--batch-size", "92", "--steps", "31", "--noise-seed",
                "4"]) == 0
    assert "NOT private" in capsys.readouterr().err
    assert run(["info", str(ckpt)]) == 0
    err = capsys.readouterr().err
    assert "over 1438 examples, expected batch size 92" in err
    assert "31 steps (1.98 epochs)" in err and "every intermediate model and checkpoint" in err
    assert "add-or-remove-one example adjacency at delta = 1e-05" in err
    assert "Epsilon assuming Poisson sampling:" in err
    assert "Noise: seeded (reproducible, NOT private)." in err
    rec = read_metadata(ckpt)["privacy"]
    # sigma 1, q 0.064, T 31: zCDP's 2.55 (below RDP's 3.37) is never shown
    assert rec["accountants"]["zcdp"]["epsilon"] is None and "2.55" not in err
    assert rec["accountants"]["rdp"]["epsilon"] == pytest.approx(3.37, abs=0.01)
