"""`bastion fl`: a study from YAML with --json; vectorised local training equals the loop;
bad input refused before work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bastion.cli.main import run
from bastion.core import InputSpec
from bastion.data import load
from bastion.federated import FedConfig, run_fedavg
from bastion.models import build_classifier

STUDY = """
seed: 1
model: {arch: mlp, args: {hidden: [16]}}
data: {name: mnist-5k, train_size: 40, test_size: 100}
federated: {num_clients: 10, clients_per_round: 4, rounds: 2, local_batch_size: 4, local_lr: 0.1}
privacy: {kind: sdp, clip: 0.5, sigma: 0.8, noise_seed: 2}
leakage: {enabled: true, types: [2], attacks: 1, max_iter: 1}
"""


def test_fl_cli_json_runs_a_private_study(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "fl.yaml"
    cfg.write_text(STUDY)
    assert run(["fl", "--config", str(cfg), "--engine", "local", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["engine"] == "local" and len(rep["history"]) == 2
    assert all(len(h["clients"]) == 4 for h in rep["history"])
    assert 0 <= rep["test_accuracy"] <= 1
    priv = rep["privacy"]
    assert priv["level"] == "client" and priv["rounds"] == 2 and priv["sample_rate"] == 0.4
    assert 0 < priv["epsilon"] < float("inf")
    assert rep["leakage"]["2"]["payloads"] == 1
    assert rep["leakage"]["2"]["attacks"][0]["batch"] == 1
    assert 0 <= rep["leakage"]["2"]["asr"] <= 1
    # same config and seed: the same global model
    assert run(["fl", "--config", str(cfg), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["weights_digest"] == pytest.approx(rep["weights_digest"])
    assert again["leakage"] == rep["leakage"]


@pytest.mark.parametrize("body, match", [
    ("federated: {num_clients: 4, clients_per_round: 5}", "clients_per_round must be in"),
    ("privacy: {kind: sdp, clip: 0}", "S > 0"),
    ("privacy: {kind: cdp, sigma: -1}", "sigma must be >= 0"),
    ("federated: {rounds: 2, bogus: 1}", "bogus"),
])
def test_fl_cli_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str], body: str,
                          match: str) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(body)
    assert run(["fl", "--config", str(cfg), "--json"]) == 2
    assert match in capsys.readouterr().err


def test_fl_cli_unknown_engine(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "fl.yaml"
    cfg.write_text(STUDY)
    assert run(["fl", "--config", str(cfg), "--engine", "spark"]) == 2
    assert "local, flower" in capsys.readouterr().err


def test_fl_cli_flower_engine_without_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from importlib import metadata

    import bastion.federated.flower as fl

    def missing(name: str) -> str:
        raise metadata.PackageNotFoundError(name)
    monkeypatch.setattr(fl.metadata, "version", missing)
    cfg = tmp_path / "fl.yaml"
    cfg.write_text(STUDY)
    assert run(["fl", "--config", str(cfg), "--engine", "flower"]) == 2
    assert "pip install 'bastion[scale]'" in capsys.readouterr().err


def test_vectorised_clients_equal_the_one_at_a_time_loop() -> None:
    train = load("mnist-5k", "train").take(100)
    torch.manual_seed(0)
    clf = build_classifier("mlp", InputSpec((1, 28, 28)), 10, {"hidden": [32]}, device="cpu")
    w = {}
    for vec in (False, True):
        cfg = FedConfig(num_clients=10, clients_per_round=10, rounds=1, local_batch_size=5,
                        local_lr=0.1, vectorize=vec, progress=False)
        w[vec] = run_fedavg(clf, train, None, cfg).weights
    for k in w[False]:
        assert torch.allclose(w[True][k], w[False][k], atol=1e-5), k
    assert any(not torch.equal(w[True][k], clf.state_dict()[k]) for k in w[True])
