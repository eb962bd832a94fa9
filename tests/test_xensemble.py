"""XEnsemble: each branch of the decision logic on hand-made prediction vectors, the
three modes with the reject option, denoiser admission, the adaptive surrogate, metrics
and bad input."""

from __future__ import annotations

import pytest
import torch

from bastion.attacks.evasion import DeepFool
from bastion.core import Classifier, ConfigError, InputSpec
from bastion.data import load
from bastion.defenses.preprocess import BitDepth, GaussianBlur, Rotation
from bastion.defenses.xensemble import (
    FLAG,
    MAJORITY,
    MINORITY_FAR,
    MINORITY_NEAR,
    XEnsemble,
    XEnsembleConfig,
    admit_denoisers,
    build_xensemble,
    decide,
)
from bastion.metrics.xensemble import benign_rates, defense_rates
from bastion.models.checkpoint import build_classifier
from bastion.training.fit import TrainConfig, fit


def _votes(*rows: list[float]) -> torch.Tensor:
    return torch.tensor([rows])  # [1, V, C]


def test_majority_averages_the_agreeing_vectors() -> None:
    v = _votes([0.8, 0.1, 0.1], [0.7, 0.2, 0.1], [0.9, 0.05, 0.05], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8])
    out, br = decide(v, torch.tensor([[0.1, 0.1, 0.8]]))
    assert br.item() == MAJORITY  # 4 of 5 > floor(5/2) + 1
    assert torch.allclose(out[0], v[0, :4].mean(0))


def test_complete_disagreement_is_flagged() -> None:
    v = _votes([0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8])
    out, br = decide(v, torch.tensor([[0.8, 0.1, 0.1]]))
    assert br.item() == FLAG
    assert torch.allclose(out[0], v[0].mean(0))
    # 3 of 9 agreeing stays below T * V = 3.06: flagged; with T = 0.3 it is a minority case
    nine = torch.eye(3).repeat(3, 1)[None] * 0.8 + 0.2 / 3
    assert decide(nine, nine[:, 0])[1].item() == FLAG
    assert decide(nine, nine[:, 0], threshold=0.3)[1].item() != FLAG


def test_minority_far_from_the_target_outputs_the_agreeing_average() -> None:
    # 2 of 3 denoised versions moved to label 1; the target said 0 on the raw input (L1 ~ 1.6)
    v = _votes([0.1, 0.8, 0.1], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8])
    out, br = decide(v, torch.tensor([[0.9, 0.05, 0.05]]))
    assert br.item() == MINORITY_FAR
    assert torch.allclose(out[0], torch.tensor([0.15, 0.75, 0.1]))


def test_minority_near_the_target_outputs_the_most_confident_vector() -> None:
    # the agreeing label is the target's own (L1 ~ 0.2): the most confident vector of all wins
    v = _votes([0.1, 0.8, 0.1], [0.2, 0.7, 0.1], [0.0, 0.05, 0.95])
    out, br = decide(v, torch.tensor([[0.1, 0.85, 0.05]]))
    assert br.item() == MINORITY_NEAR
    assert torch.allclose(out[0], torch.tensor([0.0, 0.05, 0.95]))


def test_threshold_range() -> None:
    for bad in (0, 1, -0.2, 1.5, float("nan"), True):
        with pytest.raises(ConfigError, match="threshold T"):
            XEnsembleConfig(threshold=bad)
    with pytest.raises(ConfigError, match="mode"):
        XEnsembleConfig(mode="both")


@pytest.fixture(scope="module")
def parts() -> tuple[Classifier, list[Classifier], torch.Tensor, torch.Tensor]:
    train, test = load("digits", "train"), load("digits", "test")
    models = []
    torch.manual_seed(0)
    for i, hidden in enumerate(([64], [32], [48, 24], [96])):
        clf = build_classifier("mlp", InputSpec(train.input_shape), 10, {"hidden": hidden}, device="cpu",
                               name=f"mlp{i}")
        fit(clf, train, None, TrainConfig(epochs=6, lr=0.01, seed=i, progress=False))
        models.append(clf)
    return models[0], models[1:], test.x[:200], test.y[:200]


DENOISERS = [BitDepth(bits=3), GaussianBlur(sigma=0.5), Rotation(degrees=-8.0)]


def test_modes_and_reject(parts) -> None:  # type: ignore[no-untyped-def]
    target, pool, x, y = parts
    base = target.accuracy(x, y)
    for mode in ("input-only", "output-only", "cross-layer"):
        xe = XEnsemble(target, DENOISERS, [pool], XEnsembleConfig(mode=mode))
        pred, flagged = xe.predict_with_reject(x)
        r = benign_rates(pred, flagged, y)
        assert r["accuracy"] > base - 0.1, mode
        assert r["false_flag_rate"] < 0.1, mode
        assert torch.equal(xe.predict(x), pred)
    xe = XEnsemble(target, DENOISERS, [pool], XEnsembleConfig(mode="cross-layer"))
    v, _ = xe.votes(x[:5])
    assert v.shape == (5, len(DENOISERS) * len(pool), 10)
    # pure noise splits the votes: agreement falls, fewer queries reach a majority
    noise = torch.rand(100, *target.spec.shape, generator=torch.Generator().manual_seed(0))
    assert float(xe.agreement(noise).mean()) < float(xe.agreement(x).mean()) - 0.1
    assert float((xe.branches(noise) == MAJORITY).float().mean()) < float((xe.branches(x) == MAJORITY).float().mean())


def test_transfer_attack_is_repaired_or_flagged(parts) -> None:  # type: ignore[no-untyped-def]
    target, pool, x, y = parts
    # DeepFool's minimal perturbations do not survive denoising and other models
    res = DeepFool()(target, x, y)
    assert target.accuracy(res.x_adv, y) < 0.1
    xe, rec = build_xensemble(target, pool, x, y, DENOISERS, n=3, tolerance=0.05)
    pred, flagged = xe.predict_with_reject(res.x_adv)
    rates = defense_rates(pred, flagged, y)
    assert rates["dsr"] == pytest.approx(rates["psr"] + rates["tsr"])
    assert rates["dsr"] > target.accuracy(res.x_adv, y) + 0.2
    assert len(rec["teams"]) == 1 and len(rec["kappa"]) == len(pool)
    # the adaptive surrogate is differentiable (BPDA through the bit-depth reduction)
    xx = x[:8].clone().requires_grad_(True)
    xe.adaptive()(xx).logsumexp(-1).sum().backward()
    assert xx.grad is not None and float(xx.grad.abs().sum()) > 0


def test_per_query_team_draw(parts) -> None:  # type: ignore[no-untyped-def]
    target, pool, x, _ = parts
    teams = [[pool[0], pool[1]], [pool[1], pool[2]], [pool[0], pool[2]]]
    xe = XEnsemble(target, DENOISERS, teams, XEnsembleConfig(top=3, seed=1))
    drawn = xe.draw_teams(300)
    assert set(drawn.tolist()) == {0, 1, 2}
    v, _ = xe.votes(x[:4], teams=torch.tensor([0, 1, 2, 0]))
    ref = xe.all_probs(x[:4])[1]
    assert torch.allclose(v[1, 0], ref[1 + 1, 0, 1])  # query 1 sees team 1 (pool[1] first)


def test_admission_and_bad_input(parts) -> None:  # type: ignore[no-untyped-def]
    target, pool, x, y = parts
    admitted, recs = admit_denoisers(target, [BitDepth(bits=3), Rotation(degrees=-90.0)], x, y)
    assert [t.name for t in admitted] == ["bit-depth"] and recs[1]["admitted"] is False
    with pytest.raises(ConfigError, match="no denoiser keeps"):
        admit_denoisers(target, [Rotation(degrees=-90.0), Rotation(degrees=90.0)], x, y, tolerance=0.0)
    with pytest.raises(ConfigError, match="k >= 1"):
        XEnsemble(target, [], [pool])
    with pytest.raises(ConfigError, match="larger than the pool"):
        build_xensemble(target, pool, x, y, DENOISERS, n=5)
    other = build_classifier("mlp", target.spec, 5, device="cpu")
    with pytest.raises(ConfigError, match="classes"):
        XEnsemble(target, DENOISERS, [[pool[0], other]])


def test_the_most_effective_admitted_denoisers_are_kept(parts) -> None:  # type: ignore[no-untyped-def]
    """With adversarial versions of the validation inputs, admitted denoisers are ranked by
    the target's accuracy on them, and k keeps the best; without them, the first k."""
    from bastion.attacks.evasion import FGSM

    target, _, x, y = parts
    x_adv = FGSM(eps=0.1)(target, x, y).x_adv
    cands = [BitDepth(bits=8), GaussianBlur(sigma=0.5), BitDepth(bits=3)]
    kept, recs = admit_denoisers(target, cands, x, y, tolerance=0.2, k=2, x_adv=x_adv)
    adv = [r["adversarial_accuracy"] for r in recs]
    admitted = [i for i, r in enumerate(recs) if r["admitted"]]
    best = sorted(admitted, key=lambda i: -adv[i])[:2]
    assert [t.params() for t in kept] == [cands[i].params() for i in best]
    assert [r.get("kept") for r in recs] == [i in best if i in admitted else None for i in range(3)]
    first, _ = admit_denoisers(target, cands, x, y, tolerance=0.2, k=2)
    assert [t.params() for t in first] == [cands[i].params() for i in admitted[:2]]
    with pytest.raises(ConfigError, match="k .denoisers kept. must be an integer >= 1"):
        admit_denoisers(target, cands, x, y, k=0)


def test_teams_are_drawn_among_accurate_members() -> None:
    from bastion.defenses.ensemble.teams import TeamPolicy, accurate_members, choose_teams

    acc = [0.97, 0.90, 0.965, 0.96, 0.93]
    assert accurate_members(acc, 0.02) == [0, 2, 3]
    assert accurate_members(acc, None) == [0, 1, 2, 3, 4]
    assert accurate_members(acc, 0.0, n=2) == [0, 2]  # too few qualify: the n most accurate
    kappa = torch.full((5, 5), 0.5)
    kappa[1, 4] = kappa[4, 1] = -0.5  # the most diverse pair is the two weak members
    kappa.fill_diagonal_(1.0)
    assert set(choose_teams(kappa, TeamPolicy("best-kappa", n=2))[0]) == {1, 4}
    (team,) = choose_teams(kappa, TeamPolicy("best-kappa", n=2), [0, 2, 3])
    assert set(team) <= {0, 2, 3}
    assert all(set(t) <= {0, 2, 3} for t in choose_teams(kappa, TeamPolicy("rand-kappa", n=2), [0, 2, 3], 3))
    with pytest.raises(ConfigError, match="member_tolerance"):
        accurate_members(acc, 1.5)
