"""The audit runner: report contents, resume, atomic outputs, config validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bastion.audit import parse_config, run_audit
from bastion.audit import runner as runner_mod
from bastion.core import ConfigError
from bastion.models import save_classifier

CFG = {"data": {"n": 40}, "sections": [{"kind": "evasion", "attacks": [
    {"attack": "fgsm", "eps": [0.1, 0.3]},
    {"attack": "pgd", "eps": [0.1, 0.3], "params": {"steps": 5, "alpha": 0.05}},
    {"attack": "pgd", "eps": 0.3, "targeted": "next", "params": {"steps": 5, "alpha": 0.05}},
]}]}


@pytest.fixture()
def ckpt(small_model, tmp_path: Path) -> Path:
    return save_classifier(tmp_path / "small.st", small_model, dataset="mnist-5k")


def test_audit_writes_results_and_report(ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    run = run_audit(ckpt, parse_config(CFG), out)
    res = json.loads((out / "results.json").read_text())
    assert res["data"] == {"name": "mnist-5k", "split": "test", "n": 40}
    assert res["seed"] == 0 and "torch" in res["versions"] and res["device"] == "cpu"
    runs = res["sections"]["evasion"]["summary"]["runs"]
    assert len(runs) == 5
    pgd = {r["eps"]: r["robust_accuracy"] for r in runs if r["attack"] == "pgd"}
    fgsm = {r["eps"]: r["robust_accuracy"] for r in runs if r["attack"] == "fgsm"}
    assert pgd[0.3] <= 0.1 < res["clean_accuracy"]      # the attack really works
    assert pgd[0.3] <= fgsm[0.3] and pgd[0.1] >= pgd[0.3]
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 2   # accuracy curve + image grid, inline
    assert "pgd (next)" in html and "<table" in html
    assert run.new_steps == 5 and run.cached_steps == 0


def test_audit_resumes_and_skips_finished_steps(ckpt: Path, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "run"
    calls = {"n": 0}
    real = runner_mod.get_section

    def flaky(kind: str):
        fn = real(kind)

        def wrapped(ctx, cfg):
            step = ctx.step

            def counting_step(key, work):
                def w():
                    calls["n"] += 1
                    if calls["n"] == 3:
                        raise KeyboardInterrupt  # simulated crash mid-run
                    return work()
                return step(key, w)
            ctx.step = counting_step
            return fn(ctx, cfg)
        return wrapped

    monkeypatch.setattr(runner_mod, "get_section", flaky)
    with pytest.raises(KeyboardInterrupt):
        run_audit(ckpt, parse_config(CFG), out)
    assert not (out / "report.html").exists() and not (out / "results.json").exists()
    assert not list(out.rglob("*.tmp"))
    monkeypatch.setattr(runner_mod, "get_section", real)
    run = run_audit(ckpt, parse_config(CFG), out)
    assert run.cached_steps == 2 and run.new_steps == 3
    again = run_audit(ckpt, parse_config(CFG), out)
    assert again.cached_steps == 5 and again.new_steps == 0


@pytest.mark.parametrize("bad,msg", [
    ({"sections": []}, "no sections"),
    ({"sections": [{"kind": "telepathy"}]}, "valid audit section kinds"),
    ({"sections": [{"kind": "evasion", "attacks": [{"attack": "nope", "eps": 0.1}]}]}, "valid attacks"),
    ({"sections": [{"kind": "evasion", "attacks": [{"attack": "pgd", "eps": -1}]}]}, "non-negative"),
    ({"sections": [{"kind": "evasion", "attacks": [{"attack": "pgd"}]}]}, "fixed-budget"),
    ({"sections": [{"kind": "evasion", "attacks": [{"attack": "pgd", "eps": 0.1,
                                                     "params": {"stepz": 3}}]}]}, "unknown parameter"),
    ({"data": {"n": 0}, "sections": [{"kind": "evasion", "attacks": []}]}, "data.n"),
    ({"bogus": 1, "sections": [{"kind": "evasion", "attacks": []}]}, "bogus"),
    ({"sections": [{"kind": "evasion", "attacks": [{"attack": "fgsm", "eps": 0.1}]},
                   {"kind": "membership", "attacks": ["telepathy"]}]}, "valid membership attacks"),
    ({"sections": [{"kind": "membership", "attacks": ["lira"], "shadows": 1}]}, "at least 2"),
])
def test_bad_configs_fail_before_any_work(ckpt: Path, tmp_path: Path, bad: dict, msg: str) -> None:
    with pytest.raises(ConfigError, match=msg):
        run_audit(ckpt, parse_config(bad), tmp_path / "bad")
    assert not (tmp_path / "bad" / "steps").exists()


def test_audit_rejects_mismatched_data(ckpt: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="shape"):
        run_audit(ckpt, parse_config(CFG), tmp_path / "r", data="digits")


@pytest.mark.parametrize("path", sorted(Path(__file__).parents[1].glob("configs/*.yaml")))
def test_shipped_audit_configs_validate(path: Path) -> None:
    """Every audit config we ship parses and passes its sections' validators."""
    import yaml

    from bastion.audit.config import load_config
    from bastion.audit.sections import validate_section

    if "sections" not in yaml.safe_load(path.read_text()):
        pytest.skip(f"{path.name} is not an audit config")
    cfg = load_config(path)
    for sec in cfg.section_dicts():
        validate_section(sec["kind"], sec)


def test_image_grid_uses_a_realistic_budget() -> None:
    """The grid shows the smallest budget at which the attack fools half the correct inputs."""
    import torch

    from bastion.audit.evasion_section import _grid_budget

    correct = torch.tensor([True, True, True, True, False])
    runs = [(0.3, "k3", torch.tensor([1, 1, 1, 1, 0]).bool()), (0.05, "k1", torch.tensor([1, 0, 0, 0, 1]).bool()),
            (0.1, "k2", torch.tensor([1, 1, 0, 0, 0]).bool())]
    assert _grid_budget(runs, correct) == (0.1, "k2")
    weak = [(e, k, torch.zeros(5, dtype=torch.bool)) for e, k, _ in runs]
    assert _grid_budget(weak, correct) == (0.3, "k3")  # never fools half: the largest budget
    assert _grid_budget([(None, "m", torch.ones(5, dtype=torch.bool))], correct) == (None, "m")
