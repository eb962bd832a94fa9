"""The audit's `fl-privacy` section: CPL at the type-0/1/2 points of a federated study that
starts from the audited model, without and with Fed-CDP; a verdict, resume, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from bastion.audit.config import parse_config
from bastion.audit.runner import run_audit
from bastion.core import InputSpec
from bastion.errors import ConfigError
from bastion.models import build_classifier, save_classifier

SECTION = {"kind": "fl-privacy", "train_size": 100,
           "federated": {"num_clients": 50, "clients_per_round": 5, "rounds": 1, "local_batch_size": 2},
           "privacy": {"kind": "cdp", "clip": 1.0, "sigma": 1.0, "noise_seed": 3},
           "leakage": {"attacks": 1, "max_iter": 20}}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    import torch

    torch.manual_seed(0)
    clf = build_classifier("mlp", InputSpec((1, 28, 28)), 10, {"hidden": [64]}, device="cpu")
    return save_classifier(tmp_path_factory.mktemp("flp") / "mlp.st", clf, dataset="mnist-5k")


def test_fed_cdp_stops_the_reconstruction_fedavg_allows(ckpt: Path, tmp_path: Path) -> None:
    cfg = parse_config({"seed": 0, "data": {"n": 100}, "sections": [SECTION]})
    run = run_audit(ckpt, cfg, tmp_path / "run")
    summ = run.results["sections"]["fl-privacy"]["summary"]
    plain, private = summ["runs"]["plain"]["leakage"], summ["runs"]["private"]["leakage"]
    assert plain["2"]["asr"] >= 0.5 and summ["worst_asr_plain"] >= 0.5  # FedAvg leaks its inputs
    assert private["2"]["asr"] < plain["2"]["asr"] and summ["worst_asr_private"] <= 0.1
    row = next(r for r in run.results["scorecard"] if r["section"] == "fl-privacy")
    assert row["threat"] == "leakage" and row["verdict"] == "pass" and row["value"] == summ["worst_asr_private"]
    assert summ["runs"]["private"]["privacy"]["epsilon"] > 0
    again = run_audit(ckpt, cfg, tmp_path / "run")
    assert again.new_steps == 0


@pytest.mark.parametrize("section,msg", [
    ({"privacy": {"kind": "none"}}, "privacy.kind must be sdp or cdp"),
    ({"federated": {"num_clients": 5, "clients_per_round": 6}}, "clients_per_round"),
    ({"privacy": {"kind": "sdp", "clip": 0.0}}, r"clip \(S\) must be > 0"),
    ({"bogus": 1}, "unknown option"),
])
def test_bad_fl_privacy_section_fails_before_work(section: dict, msg: str, ckpt: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=msg):
        run_audit(ckpt, parse_config({"sections": [{**SECTION, **section}]}), tmp_path / "bad")
    assert not (tmp_path / "bad" / "results.json").exists()
