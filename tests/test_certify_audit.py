"""The audit's `certify` section: curves in the report, a scorecard row, resume, and bad
configs refused before work."""

from __future__ import annotations

from pathlib import Path

import pytest

from bastion.audit.config import parse_config
from bastion.audit.runner import run_audit
from bastion.errors import ConfigError
from bastion.models import save_classifier


@pytest.fixture(scope="module")
def ckpt(small_model, tmp_path_factory) -> Path:
    return save_classifier(tmp_path_factory.mktemp("certsec") / "small.st", small_model, dataset="mnist-5k")


def _cfg(*sections: dict, n: int = 12) -> dict:
    return {"seed": 0, "data": {"n": n}, "sections": [{"kind": "certify", **s} for s in sections]}


def test_certify_section_report_scorecard_and_resume(ckpt: Path, tmp_path: Path) -> None:
    cfg = parse_config(_cfg({"sigma": 0.25, "samples": 200, "n0": 20, "radii": [0, 0.1, 0.25], "headline": 0.1},
                            {"name": "bounds", "method": "crown-ibp", "eps": [0.0, 0.01]}))
    run = run_audit(ckpt, cfg, tmp_path / "run")
    sec = run.results["sections"]["certify"]
    acc = {c["radius"]: c["accuracy"] for c in sec["summary"]["certified_accuracy"]}
    assert acc[0.0] >= acc[0.1] >= acc[0.25] and acc[0.0] > 0.5
    rows = [r for r in run.results["scorecard"] if r["threat"] == "certified"]
    assert {r["section"] for r in rows} == {"certify", "bounds"}
    smooth = next(r for r in rows if r["section"] == "certify")
    assert smooth["value"] == pytest.approx(acc[0.1]) and smooth["verdict"] in ("pass", "warn", "fail")
    bounds = run.results["sections"]["bounds"]["summary"]
    assert bounds["certified_accuracy"][0]["accuracy"] == pytest.approx(bounds["clean_accuracy"])
    html = (tmp_path / "run" / "report.html").read_text()
    assert "Certified accuracy versus radius" in html and "Verified accuracy versus Linf eps" in html
    again = run_audit(ckpt, cfg, tmp_path / "run")
    assert again.new_steps == 0


@pytest.mark.parametrize("section, msg", [
    ({"alpha": 0.7}, "alpha"), ({"sigma": 0}, "sigma"), ({"samples": 0}, "samples"),
    ({"method": "lp"}, "certification method"), ({"radii": [-1]}, "radii"), ({"bogus": 1}, "bogus"),
])
def test_bad_certify_section(section: dict, msg: str) -> None:
    import bastion.audit.builtin_sections  # noqa: F401
    from bastion.audit.sections import validate_section

    with pytest.raises(ConfigError, match=msg):
        validate_section("certify", {"kind": "certify", **section})


def test_pixeldp_section_needs_a_pixeldp_model(ckpt: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="PixelDP network"):
        run_audit(ckpt, parse_config(_cfg({"method": "pixeldp"})), tmp_path / "r")
