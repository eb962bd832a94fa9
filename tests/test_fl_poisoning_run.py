"""Federated poisoning on a small real run: label flipping hurts FedAvg, the median,
Krum and the statistical detector restore the source class; the timing hook; the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from bastion.cli.main import run
from bastion.core import ConfigError, InputSpec
from bastion.federated import FedConfig, MaliciousConfig, make_malicious, run_fedavg
from bastion.federated.malicious_study import StudyConfig, poisoned_run
from bastion.models import build_classifier

pytestmark = pytest.mark.usefixtures("one_thread")


def mlp(hidden=64):
    torch.manual_seed(0)
    return build_classifier("mlp", InputSpec((1, 28, 28)), 10, {"hidden": [hidden]}, device="cpu")


FED = FedConfig(num_clients=10, clients_per_round=10, rounds=8, local_lr=0.1, local_batch_size=32,
                progress=False)


@pytest.fixture(scope="module")
def flip_runs(mnist_train, mnist_test):
    train = mnist_train.take(3000)
    out = {"clean": poisoned_run(mlp(), train, mnist_test, FED, StudyConfig(attackers=0))}
    for agg in ("fedavg", "median", "krum", "detector"):
        out[agg] = poisoned_run(mlp(), train, mnist_test, FED, StudyConfig(attackers=3, aggregator=agg, f=3),
                                monitor=agg == "fedavg")
    return out


def test_label_flipping_hurts_fedavg_and_robust_rules_restore(flip_runs):
    clean, hit = flip_runs["clean"]["source_recall"], flip_runs["fedavg"]["source_recall"]
    assert hit < clean - 0.1                      # 3 of 10 clients flipping 7 -> 1
    assert flip_runs["fedavg"]["source_to_target"] > flip_runs["clean"]["source_to_target"]
    for agg in ("median", "krum", "detector"):
        assert flip_runs[agg]["source_recall"] > hit + 0.08, agg
    det = flip_runs["detector"]["detection"]
    # evidence accumulates over the rounds: few honest flags, and every attacker flagged by the end
    assert det["malicious"] == 24 and det["precision"] >= 0.75 and det["recall"] >= 0.4
    assert set(flip_runs["detector"]["malicious"]["attackers"]) <= set(flip_runs["detector"]["flags"][-1]["flagged"])
    watched = flip_runs["fedavg"]["monitor"]  # the detector watching FedAvg, flags not acted on
    assert watched["detection"]["malicious"] == 24 and watched["detection"]["true_positives"] >= 6
    assert watched["detection"]["precision"] >= 0.6  # 3 of 10 clients are attackers
    assert "detection" not in flip_runs["fedavg"] and flip_runs["fedavg"]["source_target_prob"] > \
        flip_runs["clean"]["source_target_prob"]


def test_timing_hook_respects_rounds(mnist_train):
    mal = make_malicious(6, [1, 4], MaliciousConfig("label-flip"), rounds=6, timing="middle")
    seen = []

    def spy(upd):
        seen.append((upd.round, upd.client, upd.meta.get("malicious")))
        return upd

    cfg = FedConfig(num_clients=6, clients_per_round=6, rounds=6, local_steps=1, progress=False)
    run_fedavg(mlp(8), mnist_train.take(300), None, cfg, update_transforms=[mal.update_transform, spy],
               client_data_transform=mal.data_transform)
    assert mal.malicious == {(r, c) for r in (2, 3) for c in (1, 4)}
    assert {(r, c) for r, c, m in seen if m} == mal.malicious and len(seen) == 36


def test_krum_constraint_fails_before_training(mnist_train, mnist_test):
    with pytest.raises(ConfigError, match=r"n > 2f \+ 2"):
        poisoned_run(mlp(), mnist_train.take(100), mnist_test, FedConfig(num_clients=5, clients_per_round=5),
                     StudyConfig(attackers=2, aggregator="krum"))
    with pytest.raises(ConfigError, match="more attackers"):
        poisoned_run(mlp(), mnist_train.take(100), mnist_test, FedConfig(num_clients=5, clients_per_round=5),
                     StudyConfig(attackers=6))


def test_cli_fl_poison_json(capsys):
    rc = run(["fl-poison", "--clients", "6", "--rounds", "2", "--attackers", "1", "--attack", "model-replacement",
              "--target", "0", "--poison-fraction", "0.5", "--aggregator", "norm-clip", "--train-size", "600",
              "--device", "cpu", "--quiet", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["attackers"] == 1 and out["aggregator"] == "norm-clip"
    assert 0 <= out["backdoor_asr"] <= 1 and out["clean_accuracy"] > 0.3
    assert out["runs"]["attacked"]["malicious"]["malicious_updates"] == 2
    assert run(["fl-poison", "--clients", "6", "--attackers", "7", "--json"]) == 2
    assert run(["fl-poison", "--clients", "6", "--attackers", "2", "--aggregator", "bulyan", "--json"]) == 2
    cap = capsys.readouterr()
    err = cap.out + cap.err
    assert "more attackers" in err and "n >= 4f + 3" in err


def test_audit_section_scores_robust_aggregation(trained_model, mnist_train, mnist_test, tmp_path):
    from bastion.audit.sections import AuditContext, get_section, validate_section

    steps: dict = {}
    ctx = AuditContext(model=trained_model("mlp", epochs=1, hidden=[32]), train=mnist_train, test=mnist_test,
                       out_dir=tmp_path, seed=0, checkpoint=None, meta={},
                       step=lambda k, f: steps.setdefault(k, f()), save_tensors=steps.__setitem__,
                       load_tensors=steps.get)
    cfg = {"kind": "fl-poisoning", "clients": 6, "attackers": 2, "rounds": 3, "train_size": 900,
           "aggregator": "median"}
    validate_section("fl-poisoning", cfg)
    out = get_section("fl-poisoning")(ctx, cfg)
    assert [r[0] for r in out.tables[0].rows] == ["no attackers, FedAvg", "attacked, FedAvg", "attacked, median"]
    row = out.scorecard[0]
    assert row.threat == "poisoning" and row.verdict in ("pass", "warn", "fail") and not row.higher_is_better
    assert row.value == pytest.approx(out.summary["recall_lost_robust"])
    assert out.summary["recall_lost_fedavg"] > 0  # 2 of 6 clients flipping 7 -> 1 cost FedAvg recall
    assert len(steps) == 3
    with pytest.raises(ConfigError, match="more attackers"):
        validate_section("fl-poisoning", {**cfg, "attackers": 7})
    with pytest.raises(ConfigError, match=r"n > 2f \+ 2"):
        validate_section("fl-poisoning", {**cfg, "aggregator": "krum"})
    with pytest.raises(ConfigError, match="unknown option"):
        validate_section("fl-poisoning", {**cfg, "rouds": 3})


def test_cli_fl_poison_starts_from_a_users_checkpoint(tmp_path, capsys):
    from bastion.models import save_classifier

    ckpt = save_classifier(tmp_path / "m.st", mlp(16))
    rc = run(["fl-poison", "--model", str(ckpt), "--clients", "4", "--rounds", "1", "--attackers", "0.25",
              "--aggregator", "multi-krum", "--f", "0", "--train-size", "200", "--device", "cpu", "--quiet", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["attackers"] == 1 and out["runs"]["attacked"]["selected"][0]["selected"]


def test_study_config_holds_one_malicious_config(mnist_train, mnist_test):
    cfg = StudyConfig(attackers=1, malicious=MaliciousConfig("label-flip", source=3, target=5), aggregator="median")
    assert cfg.attack == "label-flip" and cfg.without_attackers().attackers == 0
    assert cfg.without_attackers().aggregator == "fedavg" and cfg.without_attackers().malicious.source == 3
    with pytest.raises(ConfigError, match="MaliciousConfig"):
        StudyConfig(malicious="label-flip")
    with pytest.raises(ConfigError, match="outside the labels"):
        poisoned_run(mlp(), mnist_train.take(100), mnist_test, FedConfig(num_clients=4, clients_per_round=4),
                     StudyConfig(malicious=MaliciousConfig(target=12)))


def test_resumed_run_equals_the_uninterrupted_one(mnist_train):
    train = mnist_train.take(240)
    cfg = FedConfig(num_clients=6, clients_per_round=4, rounds=3, local_steps=2, progress=False, seed=3)
    full = run_fedavg(mlp(16), train, None, cfg)
    head = run_fedavg(mlp(16), train, None, FedConfig(**{**cfg.__dict__, "rounds": 2}))
    tail = run_fedavg(head.model, train, None, cfg, start_round=2)
    assert [h["clients"] for h in head.history + tail.history] == [h["clients"] for h in full.history]
    for k in full.weights:
        assert torch.allclose(full.weights[k], tail.weights[k], atol=1e-6)
    with pytest.raises(ConfigError, match="start_round"):
        run_fedavg(mlp(16), train, None, cfg, start_round=3)
