"""`bastion compare`: differences between two audit runs with 95% intervals and
significance (Newcombe intervals, McNemar on the same examples, two-proportion z
otherwise), from real small audits."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bastion.audit import parse_config, run_audit
from bastion.audit.compare import (
    compare_runs,
    hanley_mcneil_se,
    mcnemar_exact,
    mover,
    newcombe_independent,
    newcombe_paired,
    render_html,
    wilson,
)
from bastion.cli.main import run
from bastion.core import ConfigError, InputSpec
from bastion.models import build_classifier

CFG = {"data": {"n": 64}, "sections": [{"kind": "evasion", "attacks": [
    {"attack": "fgsm", "eps": [0.1, 0.3]},
    {"attack": "pgd", "eps": [0.1], "params": {"steps": 5, "alpha": 0.05}}]}]}


def _cfg(**data) -> dict:
    return {**CFG, "data": {**CFG["data"], **data}}


@pytest.fixture(scope="module")
def runs(small_model, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    torch.manual_seed(0)
    untrained = build_classifier("cnn-small", InputSpec((1, 28, 28)), 10, {}, device="cpu")
    out = {"a": root / "a", "weak": root / "weak", "seed1": root / "seed1", "n48": root / "n48",
           "close": root / "close"}
    run_audit(small_model, parse_config(CFG), out["a"], data="mnist-5k")
    run_audit(untrained, parse_config(CFG), out["weak"], data="mnist-5k")
    run_audit(small_model, parse_config({**CFG, "seed": 1}), out["seed1"], data="mnist-5k")
    run_audit(small_model, parse_config(_cfg(n=48)), out["n48"], data="mnist-5k")
    # a slightly stronger attack under FGSM's name: a small, non-zero difference
    close = {**CFG, "sections": [{"kind": "evasion", "attacks": [
        {"attack": "pgd", "label": "fgsm", "eps": [0.1], "params": {"steps": 5, "alpha": 0.05}}]}]}
    run_audit(small_model, parse_config(close), out["close"], data="mnist-5k")
    return out


def _row(cmp, metric: str):
    return next(d for d in cmp.rows if d.metric == metric)


def test_large_difference_is_significant_with_its_sign(runs) -> None:
    cmp = compare_runs(runs["a"], runs["weak"])
    assert cmp.paired
    d = _row(cmp, "robust accuracy, fgsm eps 0.1")
    res_a = json.loads((runs["a"] / "results.json").read_text())
    acc_a = next(r["robust_accuracy"] for r in res_a["sections"]["evasion"]["summary"]["runs"]
                 if r["attack"] == "fgsm" and r["eps"] == 0.1)
    assert d.a == pytest.approx(acc_a) and d.diff == pytest.approx(d.b - d.a)
    assert d.diff < -0.3                                # the untrained model is far less robust
    assert d.ci[0] <= d.diff <= d.ci[1] < 0 and d.p_value < 1e-3
    assert d.significant and d.change == "worse" and d.test.startswith("McNemar")
    # seen from the other side: the same gap, positive, "better"
    back = _row(compare_runs(runs["weak"], runs["a"]), "robust accuracy, fgsm eps 0.1")
    assert back.diff == pytest.approx(-d.diff) and back.ci[0] > 0 and back.change == "better"


def test_tiny_difference_is_not_significant(runs) -> None:
    cmp = compare_runs(runs["a"], runs["seed1"])     # same model; PGD's random start differs
    assert cmp.paired
    for d in cmp.rows:
        assert abs(d.diff) <= 0.1 and d.ci[0] <= 0 <= d.ci[1]
        assert not d.significant and d.change == "no significant change"
    fgsm = _row(cmp, "robust accuracy, fgsm eps 0.3")
    assert fgsm.diff == 0 and fgsm.p_value == 1.0       # FGSM is deterministic


def test_small_nonzero_difference_is_not_significant(runs) -> None:
    cmp = compare_runs(runs["a"], runs["close"])
    assert [d.metric for d in cmp.rows] == ["robust accuracy, fgsm eps 0.1"]
    assert "evasion: robust accuracy, pgd eps 0.1" in cmp.only_a
    d = cmp.rows[0]
    assert -0.1 <= d.diff < 0 and d.ci[0] < d.diff < d.ci[1] and d.ci[0] < 0 < d.ci[1]
    assert d.p_value > 0.05 and not d.significant and d.test.startswith("McNemar")


def test_different_examples_use_independent_samples(runs) -> None:
    cmp = compare_runs(runs["a"], runs["n48"])
    assert not cmp.paired
    d = _row(cmp, "robust accuracy, fgsm eps 0.1")
    assert d.test.startswith("two-proportion z") and d.n_a == 64 and d.n_b == 48
    assert d.ci[0] < d.diff < d.ci[1] and d.wald_ci is not None
    assert not d.significant


def test_cli_json_html_and_errors(runs, tmp_path: Path, capsys) -> None:
    html = tmp_path / "cmp.html"
    assert run(["compare", str(runs["a"]), str(runs["weak"]), "--json", "--out", str(html)]) == 0
    out = capsys.readouterr()
    rep = json.loads(out.out)
    assert rep["paired"] is True and rep["a"]["path"] == str(runs["a"])
    d = next(r for r in rep["differences"] if r["metric"] == "robust accuracy, fgsm eps 0.1")
    assert d["significant"] is True and d["diff"] < 0 and len(d["ci"]) == 2
    assert "B - A" in out.err and "worse" in out.err
    text = html.read_text()
    assert "id='comparison'" in text and "<script" not in text and "badge v-fail" in text
    assert not list(tmp_path.glob(".*tmp*"))          # written atomically, no temp left

    empty = tmp_path / "unfinished"
    empty.mkdir()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "results.json").write_text("{not json")
    cases = [([str(tmp_path / "nope"), str(runs["a"])], "no such run folder"),
             ([str(empty), str(runs["a"])], "no results.json"),
             ([str(tmp_path / "bad"), str(runs["a"])], "not valid JSON"),
             ([str(runs["a"]), str(runs["a"]), "--out", str(tmp_path / "x.txt")], "--out must end in .html")]
    for argv, msg in cases:
        assert run(["compare", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and msg in err and len(err.splitlines()) == 1


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(a=st.one_of(st.sampled_from(["A", "W"]), st.text(max_size=40)),
       b=st.one_of(st.sampled_from(["A", "W"]), st.text(max_size=40)),
       out=st.one_of(st.none(), st.sampled_from(["c.html", "c.txt", ""]), st.text(max_size=30)))
def test_any_arguments_give_a_result_or_one_line_error(runs, tmp_path, capsys, a, b, out) -> None:
    choices = {"A": str(runs["a"]), "W": str(runs["weak"])}
    outs = [] if out is None else ["--out", str(tmp_path / out.lstrip("/").replace("..", "_")) if out and "\x00" not in out else out]
    argv = ["compare", choices.get(a, a), choices.get(b, b), *outs]
    rc = run(argv)
    err = capsys.readouterr().err.strip()
    assert rc in (0, 2)
    if rc == 2:
        assert err.startswith("error:") and len(err.splitlines()) == 1 and "Traceback" not in err


def _write_run(folder: Path, scorecard: list[dict], dp_eps: float | None) -> Path:
    folder.mkdir()
    sections = {"dp": {"kind": "dp", "summary": {"private": dp_eps is not None,
                                                 "headline": {"epsilon": dp_eps} if dp_eps else None},
                       "tables": []}}
    (folder / "results.json").write_text(json.dumps({"finished": "2026-01-01T00:00:00+00:00", "sections": sections,
                                                     "scorecard": scorecard, "verdict": "warn"}))
    return folder


def test_scorecard_rows_and_epsilons(tmp_path: Path) -> None:
    row = {"threat": "membership", "metric": "TPR at 0.1% FPR (LiRA)", "verdict": "warn", "meaning": "",
           "higher_is_better": False, "unit": ""}
    a = _write_run(tmp_path / "a", [{**row, "value": 0.08, "ci": [0.06, 0.10]}], 8.0)
    b = _write_run(tmp_path / "b", [{**row, "value": 0.01, "ci": [0.005, 0.02]}], None)
    cmp = compare_runs(a, b)
    d = _row(cmp, "TPR at 0.1% FPR (LiRA)")
    assert d.diff == pytest.approx(-0.07) and d.test.startswith("MOVER")
    assert d.ci[1] < 0 and d.significant and d.change == "better"     # fewer members exposed
    eps = _row(cmp, "epsilon (dp)")
    assert eps.a == 8.0 and math.isinf(eps.b) and eps.ci is None and "worse" in eps.change
    assert "&infin;" in render_html(cmp)
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "results.json").write_text(json.dumps({"finished": "x", "sections": {}}))
    with pytest.raises(ConfigError, match="share no figure"):
        compare_runs(a, tmp_path / "e")


def test_interval_formulas_match_published_values() -> None:
    # Wilson (1927) for 81/263, and Newcombe's (1998) worked example 56/70 - 48/80, method 10
    assert wilson(81 / 263, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    assert newcombe_independent(56 / 70, 70, 48 / 80, 80) == pytest.approx((0.0524, 0.3339), abs=1e-4)
    # McNemar exact: 10 discordant pairs all one way -> p = 2 / 2^10
    x1, x2 = [1] * 10 + [0] * 5, [0] * 10 + [0] * 5
    assert mcnemar_exact(x1, x2) == pytest.approx(2 / 1024)
    assert mcnemar_exact(x1, x1) == 1.0
    lo, hi = newcombe_paired(x1, x2)
    assert 0 < lo < 10 / 15 < hi <= 1
    lo, hi = newcombe_paired(x1, x1)
    assert lo < 0 < hi
    assert mover(0.5, (0.2, 0.1, 0.3), (0.7, 0.6, 0.8)) == pytest.approx((0.5 - math.sqrt(0.02), 0.5 + math.sqrt(0.02)))
    assert hanley_mcneil_se(0.8, 1000, 1000) < hanley_mcneil_se(0.8, 50, 50) < 0.1
