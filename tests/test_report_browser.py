"""The report in a real browser (headless Chromium over the DevTools protocol): no console
errors, every image decodes, the scorecard is above the fold of a 1280x800 window and no
table makes the page wider than the window.

Skipped when no Chromium-family browser is installed (.ci/run installs Debian's
`chromium`). Refresh the README screenshot with

    PYTHONPATH=src .venv/bin/python tests/test_report_browser.py docs/img/report.png
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from bastion.audit import parse_config, run_audit
from bastion.audit.compare import compare_runs, render_html
from bastion.audit.report import render
from browser_probe import find_chromium, load_page
from report_fixtures import synthetic_audit

WIDTH, HEIGHT = 1280, 800
CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium-family browser on PATH "
                                "(install Debian's chromium: apt-get install chromium)")


def _check_layout(probe, expect_images: int) -> None:
    r = probe.result
    assert probe.errors == []
    assert len(r["images"]) == expect_images
    assert all(i["naturalWidth"] > 0 and i["naturalHeight"] > 0 for i in r["images"]), r["images"]
    assert r["scrollWidth"] <= WIDTH, f"page is {r['scrollWidth']} px wide"
    for t in r["tables"]:
        assert t["right"] <= WIDTH and t["scrollWidth"] <= t["wrapper"], t


def test_synthetic_report_in_chromium(tmp_path: Path) -> None:
    results, sections = synthetic_audit()
    page = tmp_path / "report.html"
    page.write_text(render(results, sections))
    probe = load_page(CHROMIUM, page, WIDTH, HEIGHT)
    _check_layout(probe, expect_images=2)
    assert probe.result["overallBottom"] < probe.result["scorecardBottom"] <= HEIGHT
    assert probe.screenshot[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "report.png").write_bytes(probe.screenshot)


def test_real_audit_and_comparison_in_chromium(small_model, tmp_path: Path) -> None:
    cfg = parse_config({"data": {"n": 32}, "sections": [
        {"kind": "evasion", "attacks": [{"attack": "fgsm", "eps": [0.1, 0.3]},
                                        {"attack": "deepfool", "eps": [0.5, 1.0]}]},
        {"kind": "leakage", "attack": "dlg", "n": 1, "max_iter": 5, "defenses": ["none", "noise:0.01"]}]})
    run_audit(small_model, cfg, tmp_path / "a")
    probe = load_page(CHROMIUM, tmp_path / "a" / "report.html", WIDTH, HEIGHT)
    # accuracy curve, fgsm eps 0.3 and deepfool grids, leakage grid
    _check_layout(probe, expect_images=4)
    assert probe.result["scorecardBottom"] <= HEIGHT
    cmp = tmp_path / "cmp.html"
    cmp.write_text(render_html(compare_runs(tmp_path / "a", tmp_path / "a")))
    _check_layout(load_page(CHROMIUM, cmp, WIDTH, HEIGHT), expect_images=0)


def refresh_screenshot(out: Path, report: Path | None = None) -> None:
    """Write the README's screenshot: the first screen at 1280x800 of `report` (the docs use
    `make demo`'s runs/demo/report.html), else of the synthetic report."""
    import tempfile

    if CHROMIUM is None:
        raise SystemExit("no Chromium-family browser on PATH")
    with tempfile.TemporaryDirectory() as d:
        page = report
        if page is None:
            results, sections = synthetic_audit()
            page = Path(d) / "report.html"
            page.write_text(render(results, sections))
        probe = load_page(CHROMIUM, page, WIDTH, HEIGHT)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(probe.screenshot)
    print(f"wrote {out} ({len(probe.screenshot)} bytes)")


if __name__ == "__main__":
    # python tests/test_report_browser.py docs/img/report.png runs/demo/report.html
    refresh_screenshot(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/img/report.png"),
                       Path(sys.argv[2]) if len(sys.argv) > 2 else None)
