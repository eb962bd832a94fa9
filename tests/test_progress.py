"""Progress reporting: plain lines with a time-left estimate off a terminal, nothing when
quiet, nested bars on a terminal, and audit steps reported one line each."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bastion import progress
from bastion.audit.runner import planned_steps, step_label


@pytest.fixture(autouse=True)
def _reset(monkeypatch):
    monkeypatch.delenv("BASTION_QUIET", raising=False)
    yield
    progress.configure(None)


def test_plain_lines_one_per_step_with_time_left(capsys) -> None:
    progress.configure(True)
    with progress.task("audit", 3) as t:
        for name in ("a", "b", "c"):
            t.advance(1, info=f"step {name}")
    cap = capsys.readouterr()
    lines = cap.err.strip().splitlines()
    assert cap.out == ""
    assert [ln.split(" ")[0] for ln in lines] == ["[1/3]", "[2/3]", "[3/3]"]
    assert lines[0].startswith("[1/3] audit: step a: ") and "left" in lines[0]
    assert "left" not in lines[-1]


def test_cached_steps_do_not_shrink_the_estimate() -> None:
    progress.configure(False)
    with progress.task("x", 4) as t:
        t._last -= 2.0            # the first step took 2 s
        t.advance(1)
        t.advance(1, cached=True)  # reused instantly
        left = t.remaining()
    assert left is not None and left == pytest.approx(4.0, rel=0.05)  # 2 steps x 2 s


def test_long_tasks_are_throttled(capsys) -> None:
    progress.configure(True)
    with progress.task("train", 1000) as t:
        for _ in range(1000):
            t.advance(1)
    lines = capsys.readouterr().err.strip().splitlines()
    assert 1 <= len(lines) <= 3 and lines[-1].startswith("[1000/1000] train")


def test_unknown_length_prints_start_and_end(capsys) -> None:
    progress.configure(True)
    with progress.task("pgd on 5 examples", None):
        pass
    err = capsys.readouterr().err
    assert "pgd on 5 examples ..." in err and "done in" in err


@pytest.mark.parametrize("how", ["quiet", "env", "library-default"])
def test_silent(how: str, capsys, monkeypatch) -> None:
    if how == "quiet":
        progress.configure(False)
    elif how == "env":
        progress.configure(True)
        monkeypatch.setenv("BASTION_QUIET", "1")
    with progress.task("work", 2) as t:
        t.advance(2)
    assert list(progress.track(range(3), "it")) == [0, 1, 2]
    assert capsys.readouterr().err == ""


def test_nested_bars_on_a_terminal_share_one_display(capsys, monkeypatch) -> None:
    monkeypatch.setattr(progress, "_tty", lambda: True)
    progress.configure(True)
    with progress.task("outer", 2) as outer:
        for _ in range(2):
            for _ in progress.track(range(3), "inner"):
                pass
            outer.advance(1)
    assert progress._live is None
    assert capsys.readouterr().out == ""  # bars go to stderr only


def test_duration_format() -> None:
    assert progress.duration(0.84) == "0.8 s"
    assert progress.duration(42.2) == "42 s"
    assert progress.duration(185) == "3 min 5 s"
    assert progress.duration(4320) == "1 h 12 min"


def test_audit_plan_and_labels() -> None:
    sections = [{"kind": "evasion", "attacks": [{"attack": "fgsm", "eps": [0.1, 0.2]},
                                                {"attack": "deepfool"}]},
                {"kind": "membership", "attacks": ["yeom"]}]
    assert planned_steps(sections) == 2 + 1 + 1   # deepfool is minimum-norm: one run
    assert step_label('evasion/pgd/eps=0.1/{"attack":"pgd"}/n=200/seed=0') == "evasion pgd eps=0.1"
    assert step_label("leakage/cpl/patterned/none/n=8/b=1") == "leakage cpl patterned none"


def test_audit_cli_reports_each_step_on_stderr(small_model, tmp_path: Path, capsys) -> None:
    from bastion.cli.main import run
    from bastion.models import save_classifier

    ckpt = save_classifier(tmp_path / "s.st", small_model, dataset="mnist-5k")
    cfg = tmp_path / "a.yaml"
    cfg.write_text("sections:\n  - kind: evasion\n    attacks:\n      - {attack: fgsm, eps: [0.1, 0.2]}\n")
    args = ["audit", "--model", str(ckpt), "--config", str(cfg), "--n", "16", "--out", str(tmp_path / "r"),
            "--json", "--threads", "1"]
    assert run(args) == 0
    cap = capsys.readouterr()
    res = json.loads(cap.out)   # stdout holds the JSON only
    assert res["threads"] == 1 and res["threads_policy"] == "requested"
    assert "[1/2] audit: evasion fgsm eps=0.1:" in cap.err and "[2/2] audit: evasion fgsm eps=0.2:" in cap.err
    assert run([*args, "--quiet"]) == 0          # resumed: both steps reused, nothing reported
    cap = capsys.readouterr()
    assert "[1/2]" not in cap.err and json.loads(cap.out)["steps"]["cached"] == 2
