"""The HTML report: verdict and scorecard first, human column names, threat models,
notes, advice, run details, glossary and references; self-contained; older runs without a
scorecard still render."""

from __future__ import annotations

import base64
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from bastion.audit import parse_config, run_audit
from bastion.audit.report import column_label, overall_verdict, render, scorecard_rows
from report_fixtures import synthetic_audit


class _Page(HTMLParser):
    """Collects tags, headings, table headers and image sources."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.h2: list[str] = []
        self.th: list[str] = []
        self._in: str | None = None
        self._buf = ""

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag in ("h2", "th"):
            self._in, self._buf = tag, ""

    def handle_endtag(self, tag):
        if tag == self._in:
            (self.h2 if tag == "h2" else self.th).append(self._buf.strip())
            self._in = None

    def handle_data(self, data):
        if self._in:
            self._buf += data


def _parse(html: str) -> _Page:
    p = _Page()
    p.feed(html)
    return p


def test_report_opens_with_verdict_and_scorecard() -> None:
    results, sections = synthetic_audit()
    html = render(results, sections)
    first_section = html.index("<h2")
    assert html.index("Overall verdict: fail") < html.index("id='scorecard'") < first_section
    card = html[html.index("id='scorecard'"):first_section]
    # every row, its value with the CI, the threshold direction and a coloured badge
    assert card.count("<tr>") == 1 + 5
    assert "31.0%" in card and "95% CI 25.0% &ndash; 38.0%" in card and "&ge; 70.0%" in card
    assert "&le; 1.0%" in card and "0.40%" in card
    assert card.count("badge v-fail") == 2 and "badge v-warn" in card and "badge v-pass" in card
    assert "badge v-nm" in card and "no privacy record in the checkpoint" in card
    # SSIM is a score, not a rate
    assert "0.91" in card and "91.0%" not in card


def test_sections_are_described_for_a_reader() -> None:
    results, sections = synthetic_audit()
    html = render(results, sections)
    page = _parse(html)
    assert page.h2[:4] == ["Evasion: adversarial examples", "Membership inference", "Gradient leakage",
                           "Differential privacy"]
    assert not any(re.search(r"(\w+) \(\1\)", h) for h in page.h2)   # no "evasion (evasion)"
    for raw in ("robust_accuracy", "success_rate", "mean_l2", "time_per_example_s", "tpr@0.1%fpr",
                "balanced_accuracy", "iterations_to_success", "seconds_per_attack"):
        assert raw not in page.th
    assert {"attack success rate (ASR)", "mean L2 distance", "s / example", "SSIM", "PSNR (dB)",
            "TPR at 0.1% FPR", "robust accuracy", "budget (eps)"} <= set(page.th)
    assert "White-box attacker with the model" in html                 # the section's threat model
    assert "honest-but-curious server" in html                          # default for older sections
    assert "<b>Note.</b> C&amp;W ran with 100 iterations" in html
    assert "Linf budgets on inputs in [0, 1]" in html                   # table caption
    assert "min-norm" in html and "55.0%" in html
    # each budget names its norm, in both parts of the wide table (key columns repeat)
    assert html.count("<td>0.1 Linf</td>") == 4 and "Evasion attacks (continued)" in html
    assert "Adversarial training with PGD" in html and "What this means, what to try." in html
    assert "trained without differential privacy" in html


def test_run_details_glossary_and_references() -> None:
    results, sections = synthetic_audit()
    html = render(results, sections)
    details = html[html.index("id='run'"):html.index("id='glossary'")]
    assert "split test, n = 200" in details and "only those classified correctly" in details
    assert "seed" in details and ">7<" in details and "torch 2.13.0" in details and "cpu" in details
    assert "budgets 0.05, 0.1, 0.3; steps=40; alpha=0.01" in details
    assert "defenses=none, noise:0.01, prune:0.9" in details
    gloss = html[html.index("id='glossary'"):html.index("id='references'")]
    for term in ("ASR", "Robust accuracy", "TPR at FPR", "AUC", "epsilon, delta", "SSIM", "PSNR", "Linf budget"):
        assert term in gloss
    refs = html[html.index("id='references'"):]
    for cite in ("Goodfellow, Shlens and Szegedy 2015", "Madry et al. 2018", "Carlini and Wagner 2017",
                 "Carlini et al. 2022", "Yeom et al. 2018", "Zhu, Liu and Han 2019", "Newcombe 1998"):
        assert cite in refs
    assert "Zarifzadeh" not in refs and "Geiping" not in refs      # not used by this run


def test_report_is_self_contained() -> None:
    results, sections = synthetic_audit()
    html = render(results, sections)
    page = _parse(html)
    names = {t for t, _ in page.tags}
    assert "script" not in names and "link" not in names and "iframe" not in names
    assert not re.search(r"(src|href)=['\"](https?:)?//", html)
    imgs = [a["src"] for t, a in page.tags if t == "img"]
    assert len(imgs) == 2
    for src in imgs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"


def test_scorecard_sources_for_older_runs() -> None:
    results, sections = synthetic_audit(in_results=False)     # rows only on the sections
    assert "scorecard" not in results
    rows = scorecard_rows(results, sections)
    assert len(rows) == 5 and overall_verdict(rows) == "fail"
    html = render(results, sections)
    assert "Overall verdict: fail" in html and html.count("badge v-fail") == 2
    results, sections = synthetic_audit(with_scorecard=False)
    html = render(results, sections)
    assert "Overall verdict: not measured" in html and "No verdicts recorded" in html
    assert "id='scorecard'" not in html


def test_empty_columns_are_left_out_and_named() -> None:
    results, sections = synthetic_audit()
    t = sections[0].tables[0]
    i = t.columns.index("mean_conf")
    for r in t.rows:
        r[i] = None
    html = render(results, sections)
    assert "mean confidence</th>" not in html and "Not measured here: mean confidence." in html


def test_scalar_and_odd_config_values_render() -> None:
    results, sections = synthetic_audit()
    ev = results["config"]["sections"][0]
    ev["attacks"] = [{"attack": "pgd", "eps": 0.3, "targeted": "next", "params": {"steps": 5}}, "fgsm"]
    results["config"]["sections"][1]["attacks"] = "lira"
    html = render(results, sections)
    assert "budgets 0.3; targeted (next); steps=5" in html and "attacks lira" in html


def test_untrusted_text_is_escaped() -> None:
    results, sections = synthetic_audit()
    sections[0].name = "<script>alert(1)</script>"
    sections[0].tables[0].rows[0][0] = "<img src=x onerror=alert(1)>"
    html = render(results, sections)
    assert "<script>" not in html and "<img src=x" not in html
    assert "&lt;script&gt;" in html


def test_unknown_columns_get_readable_names() -> None:
    assert column_label("mean_l2") == ("mean L2 distance", column_label("mean_l2")[1])
    assert column_label("some_new_metric")[0] == "some new metric"


def test_real_audit_report(small_model, tmp_path: Path) -> None:
    cfg = parse_config({"data": {"n": 32}, "sections": [{"kind": "evasion", "attacks": [
        {"attack": "fgsm", "eps": [0.1, 0.3]}, {"attack": "deepfool", "eps": [0.5, 1.0]}]}]})
    run = run_audit(small_model, cfg, tmp_path / "run")
    html = (tmp_path / "run" / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 2
    assert "attack success rate (ASR)" in html and "min-norm" in html
    assert "Overall verdict:" in html and f"n = {run.results['data']['n']}" in html
    assert "Goodfellow, Shlens and Szegedy 2015" in html and "Moosavi-Dezfooli" in html


@pytest.mark.parametrize("verdict", ["pass", "warn", "fail", "not measured"])
def test_recorded_overall_verdict_wins(verdict: str) -> None:
    results, sections = synthetic_audit()
    results["verdict"] = verdict
    assert f"Overall verdict: {verdict}" in render(results, sections)
