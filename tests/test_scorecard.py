"""The audit's scorecard: verdict rules, thresholds from the config, intervals,
not-estimable figures, per-example outputs, and `bastion audit --fail-on`."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from bastion.audit import parse_config, run_audit
from bastion.audit import scorecard as sc
from bastion.audit.config import Thresholds
from bastion.audit.sections import SectionOutput
from bastion.audit.store import RunStore
from bastion.cli.main import run as cli
from bastion.core import ConfigError
from bastion.metrics.stats import auc_interval, clopper_pearson, mean_interval, wilson_interval
from bastion.models import save_classifier

EVASION = {"kind": "evasion", "attacks": [
    {"attack": "fgsm", "eps": [0.05, 0.3]},
    {"attack": "bim", "eps": [0.05, 0.3]},
    {"attack": "deepfool", "eps": [0.05, 0.3], "params": {"norm": "linf", "max_iter": 20}},
]}


@pytest.fixture(autouse=True)
def no_plots(monkeypatch) -> None:
    from bastion.audit import evasion_section, membership_section
    monkeypatch.setattr(evasion_section, "_grid_png", lambda t, names: b"png")
    monkeypatch.setattr(evasion_section.plots, "robustness_figure", lambda *a, **k: None)
    monkeypatch.setattr(evasion_section, "fig_to_png", lambda fig: b"png")
    monkeypatch.setattr(membership_section, "fig_to_png", lambda fig: b"png")


@pytest.fixture(scope="module")
def ckpt(small_model, tmp_path_factory) -> Path:
    return save_classifier(tmp_path_factory.mktemp("ckpt") / "small.st", small_model, dataset="mnist-5k")


def _cfg(sections: list[dict[str, Any]], n: int = 32, **thresholds: Any) -> Any:
    raw: dict[str, Any] = {"data": {"n": n}, "sections": sections}
    if thresholds:
        raw["thresholds"] = thresholds
    return parse_config(raw)


@pytest.fixture(scope="module")
def evasion_run(ckpt: Path, tmp_path_factory) -> tuple[Path, Any]:
    out = tmp_path_factory.mktemp("ev") / "run"
    return out, run_audit(ckpt, _cfg([EVASION]), out)


# ------------------------------------------------------------------ rules and intervals

def test_intervals_match_known_values() -> None:
    # Wilson (1927) and Clopper-Pearson (1934) at 5 of 10 and 0 of 10 (textbook values)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert clopper_pearson(5, 10) == pytest.approx((0.1871, 0.8129), abs=1e-4)
    assert clopper_pearson(0, 10)[1] == pytest.approx(1 - 0.025 ** (1 / 10), abs=1e-9)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(0, 10)[1] == pytest.approx(0.2775, abs=1e-4)
    # Hanley and McNeil (1982) at A = 0.5, 100 + 100: SE^2 = (0.25 + 2 * 99 / 12) / 10^4
    half = 1.96 * math.sqrt((0.25 + 2 * 99 / 12) / 1e4)
    assert auc_interval(0.5, 100, 100) == pytest.approx((0.5 - half, 0.5 + half))
    assert mean_interval([1.0]) is None and mean_interval([0.2, 0.4]) == pytest.approx((0.3 - 0.196, 0.3 + 0.196),
                                                                                      abs=1e-3)
    with pytest.raises(ConfigError):
        wilson_interval(11, 10)


def test_verdict_rules() -> None:
    assert sc.at_least(0.6, 0.5, 0.1) == "pass"
    assert sc.at_least(0.45, 0.5, 0.1) == "warn"
    assert sc.at_least(0.3, 0.5, 0.1) == "fail"
    assert sc.above_chance(0.015, (0.005, 0.03), 0.02) == "pass"
    assert sc.above_chance(0.03, (0.01, 0.06), 0.02) == "warn"      # estimate above, CI not
    assert sc.above_chance(0.10, (0.05, 0.15), 0.02) == "fail"      # lower bound above
    assert sc.at_most(0.7, 0.5, 0.3) == "fail" and sc.at_most(0.4, 0.5, 0.3) == "warn"
    assert sc.at_most(0.1, 0.5, 0.3) == "pass"
    assert sc.at_most(8.0, 8.0, 1.0, inclusive=False) == "warn"
    assert sc.worst(["pass", "not measured", "warn"]) == "warn"
    assert sc.worst(["not measured"]) == "not measured" and sc.worst(["fail", "pass"]) == "fail"
    rows = [{"verdict": "warn"}, {"verdict": "fail"}, {"verdict": "not measured"}, {"verdict": "pass"}]
    assert len(sc.failing(rows, "warn")) == 2 and len(sc.failing(rows, "fail")) == 1
    assert sc.failing(rows, "never") == []


def test_missing_threats_are_not_measured() -> None:
    block = sc.scorecard_block([SectionOutput(name="x", kind="custom")])
    assert [r["threat"] for r in block["scorecard"]] == list(sc.STANDARD_THREATS)
    assert all(r["verdict"] == "not measured" and r["value"] is None for r in block["scorecard"])
    assert block["verdict"] == "not measured"
    assert "no DP guarantee claimed" in block["scorecard"][-1]["meaning"]


@pytest.mark.parametrize("bad,msg", [
    ({"evasion_robust_acc": 0.5}, "unknown threshold 'evasion_robust_acc'; valid thresholds: "),
    ({"evasion_budget": 0.2}, "not a configured evasion budget"),
    ({"evasion_robust_accuracy": 2}, "thresholds.evasion_robust_accuracy"),
])
def test_bad_thresholds_are_refused(bad: dict[str, Any], msg: str) -> None:
    with pytest.raises(ConfigError, match=msg) as e:
        _cfg([EVASION], **bad)
    if "unknown" in msg:
        assert "\n" not in str(e.value)


# ------------------------------------------------------------------ evasion

def test_evasion_scorecard_worst_case_and_interval(evasion_run) -> None:
    out, _run = evasion_run
    res = json.loads((out / "results.json").read_text())
    assert list(res)[:2] == ["scorecard", "verdict"]
    ev = [r for r in res["scorecard"] if r["threat"] == "evasion"]
    assert len(ev) == 1 and "Linf eps 0.3" in ev[0]["metric"]         # largest Linf budget <= 0.3
    summ = res["sections"]["evasion"]["summary"]
    worst = {r["eps"]: r for r in summ["worst_case"]}
    n = summ["n"]
    for eps, w in worst.items():
        per_attack = [r["robust_accuracy"] for r in summ["runs"] if r["eps"] == eps]
        assert len(per_attack) == 3 and w["robust_accuracy"] <= min(per_attack) + 1e-12
    w = worst[0.3]
    k = round(w["robust_accuracy"] * n)
    assert ev[0]["value"] == w["robust_accuracy"]
    assert ev[0]["ci"] == pytest.approx(list(wilson_interval(k, n)))
    assert ev[0]["verdict"] == "fail" and res["verdict"] == "fail"    # a plain CNN at eps 0.3
    # ASR is over initially correct inputs; clean error is its own column
    fgsm = next(r for r in summ["runs"] if r["attack"] == "fgsm" and r["eps"] == 0.05)
    assert fgsm["clean_error"] == pytest.approx(1 - summ["clean_accuracy"])
    correct = round(summ["clean_accuracy"] * n)
    assert fgsm["asr"] == pytest.approx((correct - round(fgsm["robust_accuracy"] * n)) / correct)
    # BIM's resolved schedule, minimum-norm rows at every configured budget
    bim = next(r for r in summ["runs"] if r["attack"] == "bim" and r["eps"] == 0.3)
    assert bim["params"]["steps"] == 76 and bim["params"]["alpha"] == pytest.approx(1 / 255)
    df = [r["eps"] for r in summ["runs"] if r["attack"] == "deepfool-linf"]
    assert df == [0.05, 0.3, None]
    cap = res["sections"]["evasion"]["tables"][0]["caption"]
    assert "initially correct" in cap and res["sections"]["evasion"]["threat_model"]
    assert "bastion.training.adversarial" in res["sections"]["evasion"]["advice"]


def test_thresholds_change_the_verdict_not_the_steps(ckpt: Path, evasion_run) -> None:
    out, first = evasion_run
    lenient = run_audit(ckpt, _cfg([EVASION], evasion_robust_accuracy=0.0, evasion_budget=0.05), out)
    assert lenient.new_steps == 0 and lenient.cached_steps == first.new_steps   # verdicts are not keyed
    ev = lenient.results["scorecard"][0]
    assert ev["verdict"] == "pass" and "eps 0.05" in ev["metric"] and ev["threshold"] == 0.0
    value = ev["value"]
    warn = run_audit(ckpt, _cfg([EVASION], evasion_robust_accuracy=value + 0.05, evasion_budget=0.05,
                                evasion_warn_band=0.1), out)
    assert warn.results["scorecard"][0]["verdict"] == "warn"


def test_evasion_per_example_outputs(evasion_run) -> None:
    out, run = evasion_run
    res = run.results
    store = RunStore(out, res["cache_context"])
    t = store.load_tensors(res["sections"]["evasion"]["summary"]["per_example_tensors"])
    assert t is not None and t["clean_correct"].numel() == res["data"]["n"]
    worst = {r["eps"]: r["robust_accuracy"] for r in res["sections"]["evasion"]["summary"]["worst_case"]}
    assert float(t["robust:linf:0.3"].float().mean()) == pytest.approx(worst[0.3])
    assert bool((t["robust:linf:0.3"] <= t["clean_correct"]).all())


# ------------------------------------------------------------------ membership

def test_membership_not_estimable_and_capped(ckpt: Path, small_model, mnist_train, tmp_path: Path) -> None:
    mem = {"kind": "membership", "attacks": ["yeom", "gap", "lira-offline"], "shadows": 2,
           "eval_size": 500, "pool_size": 64, "shadow_epochs": 1}
    run = run_audit(ckpt, _cfg([mem], n=48), tmp_path / "run")
    sec = run.results["sections"]["membership"]
    assert any("eval_size 500 was capped to 48" in n and "data.n" in n for n in sec["notes"])
    table = sec["tables"][0]
    cols = table["columns"]
    rows = {r[0]: dict(zip(cols, r, strict=True)) for r in table["rows"]}
    assert rows["yeom"]["tpr@0.1%fpr"] == "not estimable (needs >= 1,000 non-members)"
    assert rows["yeom"]["tpr@1%fpr"] == "not estimable (needs >= 100 non-members)"
    assert isinstance(rows["yeom"]["auc"], float)
    assert rows["lira-offline"]["auc"] == "not estimable (needs >= 16 shadow models)"
    assert any("lira-offline: not estimable with 2 shadow" in n for n in sec["notes"])
    score = {r["metric"].split(" (")[0]: r for r in sec["scorecard"]}
    tpr = score["TPR at 1% FPR"]
    assert tpr["value"] is None and tpr["verdict"] == "not measured" and "needs >= 100" in tpr["note"]
    auc = score["AUC"]
    assert auc["verdict"] in ("pass", "warn", "fail") and auc["ci"][0] <= auc["value"] <= auc["ci"][1]
    assert "lira" not in auc["metric"]                  # the not-estimable attack is never "best"
    # per-record scores and the most exposed training records (by train index)
    t = RunStore(tmp_path / "run", run.results["cache_context"]).load_tensors(sec["summary"]["per_example_tensors"])
    assert t is not None and t["index"].numel() == 96 and int(t["member"].sum()) == 48
    exposed = next(x for x in run.sections[0].tables if x.title.startswith("Most exposed"))
    assert len(exposed.rows) == 10
    top = exposed.rows[0][0]
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(small_model(mnist_train.x[top:top + 1]), mnist_train.y[top:top + 1])
    i = int(torch.nonzero(t["index"][:48] == top)[0])
    assert float(t["score:yeom"][i]) == pytest.approx(-float(loss), abs=1e-4)


# ------------------------------------------------------------------ dp

def test_dp_verdicts() -> None:
    from bastion.audit.dp_section import _score

    def verdict(eps: float | None, **th: Any) -> dict[str, Any]:
        out = SectionOutput(name="dp", kind="dp")
        _score(out, Thresholds(**th), {"delta": 1e-5},
               {"headline": {"epsilon": eps, "accountant": "rdp"}}, "dp")
        return sc.row_dict(out.scorecard[0])

    assert verdict(0.5)["verdict"] == "pass"
    assert verdict(3.0)["verdict"] == "warn" and verdict(3.0)["metric"] == "epsilon at delta 1e-05"
    assert verdict(12.0)["verdict"] == "fail"
    assert verdict(12.0, dp_epsilon=20)["verdict"] == "warn"
    assert verdict(None)["verdict"] == "not measured"


def test_dp_section_without_claim_is_not_measured(ckpt: Path, tmp_path: Path) -> None:
    run = run_audit(ckpt, _cfg([{"kind": "dp"}]), tmp_path / "run")
    dp = [r for r in run.results["scorecard"] if r["threat"] == "dp"]
    assert len(dp) == 1 and dp[0]["verdict"] == "not measured"
    assert "no DP guarantee claimed" in dp[0]["meaning"] and dp[0]["section"] == "dp"


# ------------------------------------------------------------------ CLI

def _write(tmp_path: Path, thresholds: dict[str, Any] | None = None) -> Path:
    import yaml

    raw: dict[str, Any] = {"data": {"n": 32}, "sections": [
        {"kind": "evasion", "attacks": [{"attack": "fgsm", "eps": [0.3]}]}]}
    if thresholds:
        raw["thresholds"] = thresholds
    p = tmp_path / f"audit-{len(thresholds or {})}.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


def test_fail_on_exit_codes(ckpt: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert cli(["audit", "-m", str(ckpt), "-c", str(_write(tmp_path)), "-o", str(out), "--fail-on", "fail",
                "--json"]) == 1
    cap = capsys.readouterr()
    res = json.loads(cap.out)
    assert list(res)[:2] == ["scorecard", "verdict"] and res["verdict"] == "fail"
    assert "scorecard: FAIL" in cap.err and cap.err.index("scorecard") < cap.err.index("Evasion attacks")
    assert next(ln for ln in cap.err.splitlines() if ln.startswith("--fail-on fail:")).count("evasion") == 1
    assert cli(["audit", "-m", str(ckpt), "-c", str(_write(tmp_path)), "-o", str(out)]) == 0   # default: never
    lenient = _write(tmp_path, {"evasion_robust_accuracy": 0.0})
    assert cli(["audit", "-m", str(ckpt), "-c", str(lenient), "-o", str(out), "--fail-on", "warn"]) == 0
    capsys.readouterr()
    assert cli(["audit", "-m", str(ckpt), "-o", str(out), "--fail-on", "sometimes"]) == 2
    assert "--fail-on must be one of never, warn, fail" in capsys.readouterr().err


# ------------------------------------------------------------------ leakage

def test_leakage_rows_per_defense_and_per_example(ckpt: Path, tmp_path: Path) -> None:
    leak = {"kind": "leakage", "n": 2, "max_iter": 10, "defenses": ["none", "noise:0.1"]}
    run = run_audit(ckpt, _cfg([leak], leakage_ssim=-1.0, leakage_warn_band=0.0), tmp_path / "run")
    rows = [r for r in run.results["scorecard"] if r["threat"] == "leakage"]
    assert [("defense none" in r["metric"], "defense noise:0.1" in r["metric"]) for r in rows] == [
        (True, False), (False, True)]
    assert all(r["verdict"] == "fail" and -1 <= r["value"] <= 1 and r["ci"] is not None for r in rows)
    sec = run.results["sections"]["leakage"]
    assert "bastion.defenses.gradient" in sec["advice"] and "per_example" not in sec["summary"]["runs"][0]
    t = RunStore(tmp_path / "run", run.results["cache_context"]).load_tensors(sec["summary"]["per_example_tensors"])
    assert t is not None and t["ssim:patterned:none"].numel() == 2
    assert float(t["ssim:patterned:none"].mean()) == pytest.approx(rows[0]["value"], abs=1e-6)


def test_membership_estimable_tpr_row(ckpt: Path, tmp_path: Path) -> None:
    """With >= 100 non-members the TPR at 1% FPR is judged, with a Wilson interval."""
    mem = {"kind": "membership", "attacks": ["gap"], "eval_size": 120}
    for th, expect in (({"membership_tpr_at_1fpr": 1.0}, "pass"), ({}, None)):
        run = run_audit(ckpt, _cfg([mem], n=120, **th), tmp_path / "run")
        sec = run.results["sections"]["membership"]
        row = next(r for r in sec["scorecard"] if r["metric"].startswith("TPR at 1% FPR"))
        k = 120
        assert row["value"] is not None and row["ci"] == pytest.approx(
            list(wilson_interval(round(row["value"] * k), k)))
        rule = sc.above_chance(row["value"], tuple(row["ci"]), row["threshold"])
        assert row["verdict"] == (expect or rule)
        assert sec["summary"]["gap_tpr@1%fpr"] == row["value"]
        assert sec["summary"]["not_estimable"]["gap"] == ["tpr@0.1%fpr"]
        assert not any("capped" in n for n in sec["notes"])


def test_gradient_masking_flags() -> None:
    from bastion.audit.evasion_section import _masking_flags, _worst_case

    correct = torch.ones(10, dtype=torch.bool)

    def mask(k: int) -> torch.Tensor:
        return torch.arange(10) < k

    at = {("linf", 0.1): [("pgd", False, False, mask(6)), ("fgsm", False, True, mask(4)),
                          ("square", True, False, mask(3))],
          ("linf", 0.3): [("pgd", False, False, mask(8)), ("fgsm", False, True, mask(8)),
                          ("square", True, False, mask(8))]}
    worst_rows, _ = _worst_case(at, correct)
    assert [r["robust_accuracy"] for r in worst_rows] == [0.3, 0.8]
    flags = _masking_flags(at, worst_rows)
    assert "black-box beats every white-box" in flags[("linf", 0.1)]["square"][0]
    assert "single-step beats iterative" in flags[("linf", 0.1)]["fgsm"][0]
    assert "rises from eps 0.1 to 0.3" in flags[("linf", 0.3)][worst_rows[1]["attack"]][0]
    assert ("linf", 0.3) not in flags or "pgd" not in flags[("linf", 0.3)]


def test_dp_checkpoint_gets_a_measured_row(tmp_path: Path, capsys) -> None:
    from bastion.audit.sections import get_section
    from bastion.models import load_classifier
    from bastion.models.checkpoint import read_metadata

    out = tmp_path / "dp.st"
    assert cli(["train", "-m", "mlp", "-d", "digits", "--arg", "hidden=[16]", "-o", str(out), "--dp",
                "--sigma", "1", "--clip", "1", "--steps", "6", "--delta", "1e-5"]) == 0
    capsys.readouterr()
    rec = read_metadata(out)["privacy"]

    class Ctx:
        meta = read_metadata(out)
        model = load_classifier(out, device="cpu")
        thresholds = Thresholds(dp_epsilon=1e6, dp_epsilon_warn=1e5)
    sec = get_section("dp")(Ctx(), {"kind": "dp"})  # type: ignore[arg-type]
    row = sc.row_dict(sec.scorecard[0])
    assert row["value"] == pytest.approx(rec["headline"]["epsilon"]) and row["verdict"] == "pass"
    assert row["metric"] == "epsilon at delta 1e-05" and row["unit"] == "eps"
    assert sec.threat_model and "--dp" in sec.advice
