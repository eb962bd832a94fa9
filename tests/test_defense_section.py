"""The audit's `defense` section: undefended vs defended vs adaptive, gradient-masking and
benign-floor rules, detector metrics, defended checkpoints, resume."""

from __future__ import annotations

from pathlib import Path

import pytest

from bastion.audit.config import parse_config
from bastion.audit.runner import run_audit
from bastion.errors import ConfigError
from bastion.models import save_classifier

PGD = {"attack": "pgd", "eps": [0.3], "params": {"steps": 10}}


@pytest.fixture(scope="module")
def ckpt(small_model, tmp_path_factory) -> Path:
    return save_classifier(tmp_path_factory.mktemp("defsec") / "small.st", small_model, dataset="mnist-5k")


def _cfg(section: dict, n: int = 32) -> dict:
    return {"seed": 0, "data": {"n": n}, "sections": [{"kind": "defense", **section}]}


def _rows(run, name: str = "defense") -> list[dict]:
    return run.results["sections"][name]["summary"]["runs"]


def _figures(run) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "wall_time_s"} for r in _rows(run)]


def _score(run, word: str) -> dict:
    return next(r for r in run.results["scorecard"] if r["threat"] == "defense" and word in r["metric"])


def test_bpda_exposes_masking_and_resume_reuses_every_step(ckpt: Path, tmp_path: Path) -> None:
    cfg = parse_config(_cfg({"defense": {"name": "bit-depth", "params": {"bits": 3}}, "attacks": [PGD]}))
    run = run_audit(ckpt, cfg, tmp_path / "run")
    (row,) = _rows(run)
    # plain PGD sees zero gradients through the quantiser: the defense looks robust ...
    assert row["robust_defended"] >= row["clean_defended"] - 0.1
    assert row["robust_undefended"] < 0.5
    # ... and BPDA takes that robustness away
    assert row["adaptive_attack"] == "BPDA(pgd)"
    assert row["robust_adaptive"] < row["robust_defended"] - 0.3 and row["masking"]
    masking = _score(run, "lost to the adaptive attack")
    assert masking["verdict"] == "warn" and masking["value"] > 0.3
    head = _score(run, "robust accuracy with bit-depth")
    assert head["value"] == pytest.approx(row["robust_adaptive"]) and head["ci"][0] <= head["value"] <= head["ci"][1]
    notes = run.results["sections"]["defense"]["notes"]
    assert any("gradient masking" in n for n in notes)
    # the class-project comparison: undefended ASR - defended ASR with its 95% interval
    assert row["asr_diff"] == pytest.approx(row["asr_undefended"] - row["asr_defended"])
    lo, hi = row["asr_diff_ci"]
    assert lo < row["asr_diff"] < hi
    again = run_audit(ckpt, cfg, tmp_path / "run")
    assert again.new_steps == 0 and again.cached_steps == run.new_steps == 4
    assert _rows(again) == _rows(run)


def test_benign_floor_fails_an_over_aggressive_transform(ckpt: Path, tmp_path: Path) -> None:
    cfg = parse_config(_cfg({"defense": {"name": "gaussian-blur", "params": {"sigma": 3.0}},
                             "attacks": [{"attack": "fgsm", "eps": [0.1]}]}))
    run = run_audit(ckpt, cfg, tmp_path / "run")
    clean = _score(run, "clean accuracy with gaussian-blur")
    summ = run.results["sections"]["defense"]["summary"]["clean"]
    assert summ["undefended_accuracy"] - summ["defended_accuracy"] > 0.05
    assert clean["verdict"] == "fail" and "benign floor" in clean["meaning"]
    # differentiable and deterministic: no adaptive attack needed
    (row,) = _rows(run)
    assert row["adaptive_attack"] is None and row["robust_adaptive"] is None
    # a mild transform stays within the floor
    mild = parse_config(_cfg({"defense": {"name": "median", "params": {"kernel": 3}}, "benign_floor": 0.2,
                              "attacks": [{"attack": "fgsm", "eps": [0.1]}]}))
    assert _score(run_audit(ckpt, mild, tmp_path / "mild"), "clean accuracy")["verdict"] == "pass"


def test_detector_rows_and_detector_aware_attack(ckpt: Path, tmp_path: Path) -> None:
    cfg = parse_config(_cfg({"detector": {"name": "feature-squeezing"}, "adaptive": {"steps": 20},
                             "attacks": [PGD]}))
    run = run_audit(ckpt, cfg, tmp_path / "run")
    (row,) = _rows(run)
    assert row["adaptive_attack"] == "pgd-detector-aware"
    assert row["detection_rate"] > 0.8  # plain PGD ignores the detector and is caught
    assert row["detection_rate_adaptive"] < row["detection_rate"]
    assert row["robust_adaptive"] < row["robust_defended"]
    assert 0.0 <= row["false_positive_rate"] <= 0.2
    again = run_audit(ckpt, cfg, tmp_path / "run")  # the calibration is a cached step too
    assert again.new_steps == 0 and _rows(again) == _rows(run)


def test_a_defended_checkpoint_is_audited_as_such(ckpt: Path, tmp_path: Path, capsys) -> None:
    from bastion.cli.main import run as cli

    defended = tmp_path / "bits.st"
    assert cli(["defend", "--model", str(ckpt), "--defense", "bit-depth", "--params", "bits=3",
                "--out", str(defended), "-q"]) == 0
    capsys.readouterr()
    cfg = parse_config(_cfg({"attacks": [PGD]}, n=16))  # no defense key: the audited model's own
    run = run_audit(defended, cfg, tmp_path / "run")
    (row,) = _rows(run)
    assert run.results["sections"]["defense"]["summary"]["defense"]["name"] == "bit-depth"
    assert row["adaptive_attack"] == "BPDA(pgd)" and row["masking"]
    by_path = parse_config(_cfg({"checkpoint": str(defended), "attacks": [PGD]}, n=16))
    assert _figures(run_audit(ckpt, by_path, tmp_path / "run2")) == _figures(run)


@pytest.mark.parametrize("section, msg", [
    ({"defense": {"name": "median", "params": {"kernel": 4}}, "attacks": [PGD]}, "must be odd"),
    ({"defense": {"name": "feature-squeezing"}, "attacks": [PGD]}, "put it under detector:"),
    ({"detector": {"name": "feature-squeezing", "params": {"fpr": 0}}, "attacks": [PGD]}, "fpr must lie"),
    ({"defense": {"name": "median"}, "detector": {"name": "l1"}, "attacks": [PGD]}, "give one of"),
    ({"defense": {"name": "median"}, "attacks": [{"attack": "pgd"}]}, "fixed-budget"),
    ({"defense": {"name": "median"}, "attacks": [PGD], "benign_floor": 2}, "benign_floor"),
    ({"detector": {"name": "l1"}, "attacks": [PGD], "adaptive": {"lamda": 1}}, "has no parameter lamda"),
])
def test_bad_defense_section_fails_before_work(section: dict, msg: str, ckpt: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=msg):
        run_audit(ckpt, parse_config(_cfg(section)), tmp_path / "bad")
    assert not (tmp_path / "bad" / "results.json").exists()


def test_undefended_model_without_a_defense_is_refused(ckpt: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="give defense:, detector: or checkpoint:"):
        run_audit(ckpt, parse_config(_cfg({"attacks": [PGD]}, n=8)), tmp_path / "run")


def test_a_smoothed_model_is_attacked_and_scored_through_eot(ckpt: Path, tmp_path: Path) -> None:
    """A certified (random) classifier: its clean and robust accuracy are those of its
    expected prediction over the noise, and the adaptive attack is EOT over that noise."""
    cfg = parse_config(_cfg({"defense": {"name": "smoothing", "params": {"sigma": 0.25, "eot_samples": 8}},
                             "attacks": [{"attack": "pgd", "eps": [2.0], "params": {"norm": "l2", "steps": 10}}]}))
    run = run_audit(ckpt, cfg, tmp_path / "run")
    (row,) = _rows(run)
    assert row["adaptive_attack"] == "EOT over 8 noise draws(pgd-l2)"
    assert row["clean_defended"] > 0.7
    assert row["robust_adaptive"] < row["clean_defended"] - 0.3
    assert row["robust_adaptive"] <= row["robust_defended"] + 0.1
