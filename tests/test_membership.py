"""Membership inference: attacks beat chance on an overfitted model, stay at chance on
non-members, metrics match hand computations, the CLI and audit section work."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bastion.attacks.privacy.membership import (
    LiRAConfig,
    MIAConfig,
    ShokriConfig,
    SignalMatrix,
    bounded_loss_attack,
    calibrate_threshold,
    compute_signals,
    gap_attack,
    lira_offline,
    lira_online,
    logit_confidence,
    loss_scores,
    membership_experiment,
    query_transforms,
    rmia,
    shokri,
    threshold_attack,
)
from bastion.core import ConfigError, InputError
from bastion.metrics import membership as mm
from bastion.training.shadow import ShadowConfig, train_shadows

CACHE = Path(__file__).resolve().parents[1] / ".cache" / "test-models"
# deliberately overfitted: a wide MLP trained 40 epochs on 150 images
OVERFIT = ShadowConfig(arch="mlp", arch_args={"hidden": [256]}, epochs=40, batch_size=50, method="vmap")


@pytest.fixture(scope="module")
def world(mnist_train, mnist_test):
    """10 models on random halves of a 300-image pool (cached on disk); signals on the pool
    and on 600 test images no model has seen."""
    x, y = mnist_train.x[:300], mnist_train.y[:300]
    sh = train_shadows(x, y, 10, OVERFIT, cache_dir=CACHE / "mia-overfit-v1", device="cpu")
    pool = compute_signals(sh.models, x, y, sh.member)
    unseen = compute_signals(sh.models, mnist_test.x[:600], mnist_test.y[:600])
    return pool, unseen


def test_threaded_scoring_equals_one_model_at_a_time(world, mnist_train) -> None:
    x, y = mnist_train.x[:300], mnist_train.y[:300]
    sh = train_shadows(x, y, 10, OVERFIT, cache_dir=CACHE / "mia-overfit-v1", device="cpu")
    one = compute_signals(sh.models[:4], x, y, sh.member[:, :4], workers=1)
    two = compute_signals(sh.models[:4], x, y, sh.member[:, :4], workers=2)
    assert torch.allclose(one.phi, two.phi, atol=1e-4) and torch.equal(one.correct, two.correct)
    assert torch.allclose(one.probs, two.probs, atol=1e-6)
    with pytest.raises(ConfigError, match="workers"):
        compute_signals(sh.models[:1], x, y, workers=0)


def _attacks(target: SignalMatrix, shadows: SignalMatrix) -> dict[str, torch.Tensor]:
    return {"lira": lira_online(target, shadows), "lira-offline": lira_offline(target, shadows),
            "rmia": rmia(target, shadows), "loss": loss_scores(target), "gap": gap_attack(target),
            "shokri": shokri(target, shadows, ShokriConfig(features="logprob", max_rows_per_class=300))}


def test_every_attack_beats_chance_on_overfitted_model(world):
    pool, _ = world
    target, shadows = pool.models([0]), pool.without(0)
    truth = target.member[:, 0]
    train_acc, test_acc = target.correct[truth, 0].float().mean(), target.correct[~truth, 0].float().mean()
    assert train_acc > 0.99 and train_acc - test_acc > 0.1  # really overfitted
    res = {a: mm.summary(s, truth) for a, s in _attacks(target, shadows).items()}
    for a, r in res.items():
        assert r["auc"] > 0.58, (a, r)
        assert r["advantage"] > 0.1, (a, r)
    # the per-example attacks are stronger than the global loss threshold
    assert res["lira"]["auc"] > res["loss"]["auc"]
    assert res["lira"]["tpr@1%fpr"] > 0.01


def test_non_members_only_give_chance(world):
    _, unseen = world
    target, shadows = unseen.models([0]), unseen.without(0)
    fake = torch.zeros(unseen.n, dtype=torch.bool)
    fake[torch.randperm(unseen.n, generator=torch.Generator().manual_seed(0))[:unseen.n // 2]] = True
    for name, s in {"lira-offline": lira_offline(target, shadows), "rmia": rmia(target, shadows),
                    "loss": loss_scores(target), "gap": gap_attack(target)}.items():
        r = mm.summary(s, fake)
        assert abs(r["auc"] - 0.5) < 0.08, (name, r)
        fpr, tpr, _ = mm.roc_curve(s, fake)
        assert np.abs(tpr - fpr).max() < 0.12, name  # TPR tracks FPR along the whole curve


def test_non_members_only_give_chance_online_and_shokri(world):
    """Online LiRA (IN and OUT shadows exist for every pool example) and Shokri, scored on
    the target's OUT half only with a random 'member' label: TPR tracks FPR."""
    pool, unseen = world
    target, shadows = pool.models([0]), pool.without(0)
    out = torch.nonzero(~target.member[:, 0]).flatten()
    fake = torch.zeros(len(out), dtype=torch.bool)
    fake[torch.randperm(len(out), generator=torch.Generator().manual_seed(1))[:len(out) // 2]] = True
    online = lira_online(target, shadows)[out]
    sk = shokri(unseen.models([0]), pool.without(0), ShokriConfig(features="logprob", max_rows_per_class=300))
    fake_u = torch.zeros(unseen.n, dtype=torch.bool)
    fake_u[torch.randperm(unseen.n, generator=torch.Generator().manual_seed(2))[:unseen.n // 2]] = True
    for name, s, lab in (("lira", online, fake), ("shokri", sk, fake_u)):
        r = mm.summary(s, lab)
        assert abs(r["auc"] - 0.5) < 0.1, (name, r)
        fpr, tpr, _ = mm.roc_curve(s, lab)
        assert np.abs(tpr - fpr).max() < 0.16, name


def test_disjoint_threat_model_refuses_overlapping_data(trained_model, mnist_train, mnist_test):
    from bastion.attacks.privacy.membership import audit_membership
    from bastion.data.dataset import Dataset

    clf = trained_model("mlp", epochs=1, hidden=[32])
    mem = Dataset(mnist_train.x[:60], mnist_train.y[:60], 10)
    # the "non-members" repeat members: in disjoint mode the attacker's pool would hold candidates
    non = Dataset(torch.cat([mnist_train.x[:30], mnist_test.x[:30]]),
                  torch.cat([mnist_train.y[:30], mnist_test.y[:30]]), 10)
    with pytest.raises(ConfigError, match="forbids overlap"):
        audit_membership(clf, mem, non, MIAConfig(attacks=("shokri",), shadows=2, eval_size=20))
    with pytest.raises(ConfigError, match="shape"):
        audit_membership(clf, Dataset(mnist_train.x[:60, :, :20], mnist_train.y[:60], 10), non,
                         MIAConfig(attacks=("gap",), eval_size=20))


def test_leave_one_out_over_several_targets(world):
    pool, _ = world
    aucs = [mm.auc(lira_online(pool.models([i]), pool.without(i)), pool.member[:, i]) for i in range(4)]
    assert min(aucs) > 0.58


def test_lira_variance_modes_and_multi_query(world, mnist_train):
    pool, _ = world
    target, shadows = pool.models([1]), pool.without(1)
    truth = target.member[:, 0]
    for v in ("global", "per-example"):
        assert mm.auc(lira_online(target, shadows, LiRAConfig(variance=v)), truth) > 0.58
    assert len(query_transforms("flip+shift")) == 10
    x = mnist_train.x[:4]
    t = query_transforms("shift")
    assert torch.equal(t[0](x), x)
    assert torch.equal(t[1](x)[..., 1:], x[..., :-1]) and bool((t[1](x)[..., 0] == 0).all())


def test_logit_confidence_is_stable_and_exact():
    logits = torch.tensor([[2.0, 0.5, -1.0], [200.0, 0.0, 0.0]])
    y = torch.tensor([0, 0])
    phi = logit_confidence(logits, y)
    p = logits.softmax(-1)[0, 0]
    assert phi[0].item() == pytest.approx(torch.log(p / (1 - p)).item(), rel=1e-5)
    assert torch.isfinite(phi).all() and phi[1].item() == pytest.approx(200 - np.log(2), rel=1e-6)
    sig = SignalMatrix(phi[:, None], torch.zeros(2, 1, dtype=torch.bool), y, torch.ones(2, 1, dtype=torch.bool))
    assert sig.loss[0, 0, 0].item() == pytest.approx(-torch.log(p).item(), rel=1e-5)


def test_metrics_on_hand_made_scores():
    scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0]
    labels = [1, 1, 0, 1, 0, 1, 0, 0, 0, 0]
    fpr, tpr, _ = mm.roc_curve(scores, labels)
    assert fpr[0] == 0 and tpr[0] == 0 and fpr[-1] == 1 and tpr[-1] == 1
    assert mm.tpr_at_fpr(scores, labels, 0.0) == 0.5  # two members above every non-member
    assert mm.tpr_at_fpr(scores, labels, 1 / 6) == 0.75
    assert mm.advantage(scores, labels) == pytest.approx(1 - 2 / 6)  # all 4 members, 2 of 6 non-members
    # AUC = P(score_member > score_nonmember): 4 members x 6 non-members, 3 discordant pairs
    assert mm.auc(scores, labels) == pytest.approx(1 - 3 / 24)
    assert mm.balanced_accuracy(scores, labels) == pytest.approx(0.5 * (1 + 2 / 3))
    # ties are grouped: constant scores give the chance diagonal only
    f, t, _ = mm.roc_curve([1, 1, 1, 1], [1, 0, 1, 0])
    assert list(f) == [0, 1] and list(t) == [0, 1] and mm.auc([1, 1, 1, 1], [1, 0, 1, 0]) == 0.5
    d = mm.decision_metrics([1, 1, 0, 0, 1], [1, 1, 1, 0, 0])
    assert d["tpr"] == pytest.approx(2 / 3) and d["fpr"] == 0.5 and d["precision"] == pytest.approx(2 / 3)
    assert d["advantage_ci_low"] < d["advantage"] < d["advantage_ci_high"]
    sl = mm.sliced(scores, labels, mm.class_slices([0, 1] * 5, correct=[True] * 9 + [False]))
    assert set(sl) == {"class 0", "class 1", "correct", "incorrect"} and sl["incorrect"] is None
    with pytest.raises(InputError):
        mm.auc([0.1, 0.2], [1, 1])
    with pytest.raises(InputError):
        mm.auc([0.1, 0.2, 0.3], [1, 0])


def test_membership_experiment_and_yeom_theorem(world):
    pool, _ = world
    target = pool.models([2])
    truth = target.member[:, 0]
    loss = target.loss[:, 0, 0]
    bound = float(loss.max())
    p_member, dec = bounded_loss_attack(target, bound, torch.Generator().manual_seed(0))
    assert dec.dtype == torch.bool and p_member.min() >= 0
    exp = membership_experiment(p_member[truth], p_member[~truth], trials=20000, seed=1)
    # Theorem 2 (Yeom et al.): advantage = (mean loss on non-members - on members) / B
    theory = float(loss[~truth].mean() - loss[truth].mean()) / bound
    assert exp.ci_low <= theory <= exp.ci_high
    assert exp.advantage > 0.05
    chance = membership_experiment(torch.full((50,), 0.5), torch.full((50,), 0.5), trials=4000)
    assert chance.ci_low < 0 < chance.ci_high
    shadows = pool.without(2)
    tau = calibrate_threshold(shadows, "train-loss")
    d = mm.decision_metrics(threshold_attack(target, tau), truth)
    assert d["advantage"] > 0.1
    tau_fpr = calibrate_threshold(shadows, "fpr", fpr=0.05)
    assert mm.decision_metrics(threshold_attack(target, tau_fpr), truth)["fpr"] < 0.2


def test_bad_inputs(world):
    pool, _ = world
    target = pool.models([0])
    with pytest.raises(ConfigError, match="IN and OUT"):
        lira_online(target, pool.models([1]).samples(slice(None)))  # one shadow: no IN/OUT for all
    with pytest.raises(InputError):
        lira_online(pool.models([0, 1]), pool.without(0))
    with pytest.raises(InputError):
        lira_offline(target, pool.samples(slice(0, 10)))
    with pytest.raises(ConfigError):
        LiRAConfig(variance="bogus").validate()
    with pytest.raises(ConfigError):
        query_transforms("rotate")
    with pytest.raises(ConfigError, match="shadow"):
        MIAConfig(attacks=("lira",), shadows=1).resolve()
    with pytest.raises(ConfigError, match="disjoint"):
        MIAConfig(attacks=("lira", "shokri"), shadows=4).resolve()
    with pytest.raises(ConfigError, match="pool"):
        MIAConfig(attacks=("lira",), shadows=4, attacker_data="disjoint").resolve()
    with pytest.raises(ConfigError, match="unknown"):
        MIAConfig(attacks=("nope",)).resolve()
    with pytest.raises(InputError):
        SignalMatrix(torch.zeros(3, 2), torch.zeros(3, 3, dtype=torch.bool), torch.zeros(3, dtype=torch.long),
                     torch.zeros(3, 2, dtype=torch.bool))


def test_signal_matrix_roundtrip(world, tmp_path):
    pool, _ = world
    p = pool.models([0, 1]).save(tmp_path / "s.safetensors")
    back = SignalMatrix.load(p)
    assert torch.equal(back.phi, pool.phi[:, :2]) and torch.equal(back.member, pool.member[:, :2])
    both = SignalMatrix.concat([pool.models([0]), pool.models([1])])
    assert torch.equal(both.phi, pool.phi[:, :2])


def test_cli_mia(trained_model, tmp_path, capsys):
    from bastion.cli.main import run
    from bastion.models import save_classifier

    clf = trained_model("mlp", epochs=1, hidden=[32])
    ckpt = save_classifier(tmp_path / "t.st", clf, dataset="mnist-5k")
    rc = run(["mia", "--model", str(ckpt), "--attack", "lira,rmia,yeom,gap", "--shadows", "2",
              "--shadow-epochs", "1", "--eval-size", "100", "--cache", str(tmp_path / "c"), "--json", "--method", "loop",
              "--pool-size", "400",
              "--out", str(tmp_path / "o")])
    assert rc == 0
    cap = capsys.readouterr()
    rep = json.loads(cap.out)
    assert set(rep["results"]) == {"lira", "rmia", "yeom", "gap"}
    assert rep["threat_model"]["attacker_data"] == "pool" and rep["threat_model"]["shadows"] == 2
    assert 0 <= rep["results"]["lira"]["auc"] <= 1 and (tmp_path / "o" / "roc.png").exists()
    # figures the run cannot support are flagged, never shown as normal results
    assert set(rep["not_estimable"]["lira"]) == {"auc", "advantage", "balanced_accuracy", "tpr@0.1%fpr",
                                                 "tpr@1%fpr"}  # 2 shadows < 16
    assert rep["not_estimable"]["gap"] == ["tpr@0.1%fpr"]  # 100 non-members < 1,000
    assert "not estimable (needs >= 16 shadow models)" in rep["warnings"]
    assert "warning:" in cap.err and "16 shadow models" in cap.err
    # second run resumes from the cache: nothing retrained
    assert run(["mia", "--model", str(ckpt), "--attack", "lira", "--shadows", "2", "--shadow-epochs", "1",
                "--eval-size", "100", "--cache", str(tmp_path / "c"), "--json", "--pool-size", "400"]) == 0
    rep2 = json.loads(capsys.readouterr().out)
    assert rep2["threat_model"]["shadow_training"]["trained"] == 0
    # clear errors, exit code 2, before any training
    for bad in (["--attack", "lira", "--shadows", "1"], ["--attack", "lira,shokri", "--shadows", "4"],
                ["--attack", "shokri", "--attacker-data", "pool"], ["--attack", "lira", "--attacker-data", "disjoint"],
                ["--attack", "lira", "--data", "digits"]):
        assert run(["mia", "--model", str(ckpt), *bad]) == 2, bad


def test_audit_section(trained_model, mnist_train, mnist_test, tmp_path):
    from bastion.audit.sections import AuditContext, get_section

    store: dict[str, dict[str, torch.Tensor]] = {}
    steps: dict[str, object] = {}
    ctx = AuditContext(model=trained_model("mlp", epochs=1, hidden=[32]), train=mnist_train, test=mnist_test,
                       out_dir=tmp_path, seed=0, checkpoint=None, meta={},
                       step=lambda k, f: steps.setdefault(k, f()), save_tensors=store.__setitem__,
                       load_tensors=store.get)
    out = get_section("membership")(ctx, {"attacks": ["lira-offline", "gap"], "shadows": 2, "eval_size": 100,
                                          "shadow_epochs": 1, "method": "loop", "pool_size": 300})
    assert out.kind == "membership" and [r[0] for r in out.tables[0].rows] == ["lira-offline", "gap"]
    assert out.figures and out.figures[0].png[:4] == b"\x89PNG"
    with pytest.raises(ConfigError):
        get_section("membership")(ctx, {"attacks": ["lira"], "shadows": 1})


def test_truncated_signals_cache_is_reported_and_recomputed(tmp_path, mnist_train, capsys):
    from bastion.attacks.privacy.membership.runner import _signals_cached

    tiny = ShadowConfig(arch="mlp", arch_args={"hidden": [16]}, epochs=1, batch_size=50, method="loop")
    x, y = mnist_train.x[:120], mnist_train.y[:120]
    sh = train_shadows(x, y, 2, tiny, device="cpu")
    first = _signals_cached(sh.models, x, y, sh.member, "none", tmp_path, "pool")
    (path,) = tmp_path.glob("signals-*.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    capsys.readouterr()
    again = _signals_cached(sh.models, x, y, sh.member, "none", tmp_path, "pool")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: cached membership signals")
    # recomputed, not reused: the file is whole again and the values agree. They agree to
    # float tolerance, not bit for bit: MKL's summation order may follow buffer alignment.
    assert path.stat().st_size == len(data)
    assert torch.allclose(again.phi, first.phi, rtol=1e-5, atol=1e-6)
    assert torch.equal(again.member, first.member)
    from bastion.attacks.privacy.membership.signals import SignalMatrix
    reread = SignalMatrix.load(path)                        # rewritten whole, loads again
    assert torch.allclose(reread.phi, first.phi, rtol=1e-5, atol=1e-6)
    assert not list(tmp_path.glob(".*.tmp"))
    _signals_cached(sh.models, x, y, sh.member, "none", tmp_path, "pool")
    assert capsys.readouterr().err == ""


def test_cli_mia_caches_under_out_never_in_the_current_folder(trained_model, tmp_path, capsys,
                                                              monkeypatch):
    from bastion.cli.main import run
    from bastion.models import save_classifier

    clf = trained_model("mlp", epochs=1, hidden=[32])
    ckpt = save_classifier(tmp_path / "t.st", clf, dataset="mnist-5k")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    args = ["mia", "--model", str(ckpt), "--attack", "lira-offline", "--shadows", "2",
            "--shadow-epochs", "1", "--eval-size", "50", "--pool-size", "200", "--method", "loop",
            "--json"]
    assert run([*args, "--out", str(tmp_path / "o")]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert list(cwd.iterdir()) == []
    assert sorted(p.name for p in (tmp_path / "o" / "shadows").glob("*/model-*.safetensors")) == [
        "model-00000.safetensors", "model-00001.safetensors"]
    st = rep["threat_model"]["shadow_training"]
    assert st["method"] == "loop" and st["threads"] == rep["threads"]  # the command's thread policy
    assert run([*args, "--out", str(tmp_path / "o")]) == 0            # resumes from --out
    assert json.loads(capsys.readouterr().out)["threat_model"]["shadow_training"]["trained"] == 0
    assert run(args) == 0                                             # no --out: no cache at all
    capsys.readouterr()
    assert list(cwd.iterdir()) == []
