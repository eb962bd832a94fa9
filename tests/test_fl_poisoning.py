"""Federated poisoning on synthetic updates: Krum / Multi-Krum / Bulyan, norm clipping,
FLTrust, the statistical detector, the malicious clients and their timing, bad input."""

from __future__ import annotations

import pytest
import torch

from bastion.core import ConfigError, InputSpec
from bastion.data import load
from bastion.federated import (
    AttackSchedule,
    ClientUpdate,
    FLTrust,
    MaliciousConfig,
    StatisticalDetector,
    detection_metrics,
    get_aggregator,
    make_malicious,
    select_attackers,
)
from bastion.federated.malicious import stamp_trigger
from bastion.federated.robust import Bulyan, Krum, NormClip, check_bulyan, check_krum, krum_scores
from bastion.models import build_classifier


def ups(vectors, shape=None):
    out = []
    for i, v in enumerate(vectors):
        v = torch.as_tensor(v, dtype=torch.float32)
        out.append(ClientUpdate(i, 0, {"w": v if shape is None else v.reshape(shape)}, 10, 0.1, 1))
    return out


def honest_and_huge(n_honest=8, n_bad=2, d=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(d, generator=g)
    honest = [mu + 0.1 * torch.randn(d, generator=g) for _ in range(n_honest)]
    bad = [100.0 + torch.randn(d, generator=g) for _ in range(n_bad)]  # not identical: see Bulyan
    return honest, bad


def test_krum_scores_exact_and_picks_the_central_honest_update():
    u = ups([[0.0], [1.0], [3.0], [4.0], [5.0], [100.0]])
    # n=6, f=1: sum of squared distances to the n - f - 2 = 3 nearest others
    s = krum_scores(torch.stack([x.delta["w"] for x in u]), f=1)
    assert s[:5].tolist() == pytest.approx([26.0, 14.0, 9.0, 11.0, 21.0], rel=1e-5)  # float32 cdist
    k = Krum(f=1)
    assert k(u)["w"].item() == 3.0 and k.last_selected == [2]
    mk = Krum(f=1, m=3)
    assert mk(u)["w"].item() == pytest.approx(8 / 3) and sorted(mk.last_selected) == [1, 2, 3]


def test_krum_multikrum_bulyan_ignore_huge_updates():
    honest, bad = honest_and_huge(n_honest=9, n_bad=2)
    u = ups(honest + bad)
    hmean = torch.stack(honest).mean(0)
    k = get_aggregator("krum", f=2)
    out = k(u)["w"]
    assert any(torch.equal(out, h) for h in honest) and k.last_selected[0] < 9
    mk = get_aggregator("multi-krum", f=2)  # m = n - f = 9: exactly the honest mean
    assert torch.allclose(mk(u)["w"], hmean, atol=1e-5) and set(mk.last_selected) == set(range(9))
    b = get_aggregator("bulyan", f=2)  # n = 11 >= 4f + 3
    agg = b(u)["w"]
    assert all(c < 9 for c in b.last_selected) and len(b.last_selected) == 7
    assert (agg - hmean).abs().max() < 0.2 and agg.abs().max() < 10
    fedavg = get_aggregator("fedavg")(u)["w"]
    assert (fedavg - hmean).abs().min() > 10  # the mean is dragged away


def test_norm_clip_bounds_norms_and_median_default():
    u = ups([[3.0, 4.0], [0.0, 2.0], [10.0, 0.0]])  # norms 5, 2, 10
    nc = NormClip(bound=1.0)
    out = nc(u)["w"]
    expected = (torch.tensor([0.6, 0.8]) + torch.tensor([0.0, 1.0]) + torch.tensor([1.0, 0.0])) / 3
    assert torch.allclose(out, expected) and out.norm() <= 1.0 + 1e-6
    med = NormClip()
    med(u)
    assert med.last_bound == pytest.approx(5.0)
    noisy = get_aggregator("norm-clip", bound=1.0, noise_std=0.5)
    diff = noisy(u)["w"] - expected
    assert 0 < diff.norm() < 5  # weak DP noise is added


def test_detector_flags_attackers_with_precision_and_recall():
    g = torch.Generator().manual_seed(1)
    mu = torch.randn(2, 50, generator=g)
    vecs = [mu + 0.3 * torch.randn(2, 50, generator=g) for _ in range(18)]
    vecs.append(5 * (mu + 0.3 * torch.randn(2, 50, generator=g)))   # boosted: norm / spread outlier
    vecs.append(-mu + 0.3 * torch.randn(2, 50, generator=g))        # flipped: cosine outlier
    u = [ClientUpdate(i, 0, {"a": v[0], "b": v[1]}, 10, 0.1, 1) for i, v in enumerate(vecs)]
    det = StatisticalDetector()
    out = det(u)
    assert det.records[0]["flagged"] == [18, 19]
    honest_mean = torch.stack([v[0] for v in vecs[:18]]).mean(0)
    assert torch.allclose(out["a"], honest_mean, atol=1e-5)
    m = detection_metrics(det.flagged_pairs(), {(0, 18), (0, 19)}, det.seen_pairs())
    assert m["precision"] == 1.0 and m["recall"] == 1.0 and m["f1"] == 1.0
    half = detection_metrics({1, 2, 3, 4}, {1, 2})
    assert half["precision"] == 0.5 and half["recall"] == 1.0 and half["f1"] == pytest.approx(2 / 3)


def test_fltrust_trusts_aligned_updates_and_drops_opposed():
    torch.manual_seed(0)
    clf = build_classifier("mlp", InputSpec((1, 28, 28)), 10, {"hidden": [16]}, device="cpu")
    root = load("mnist-5k", split="train").take(40)
    fl = FLTrust(clf, root, lr=0.1, steps=2, batch_size=20)
    w0 = {k: v.detach().clone() for k, v in clf.named_parameters()}
    g0 = fl.server_update(w0, 0)
    u = [ClientUpdate(i, 0, {k: s * v for k, v in g0.items()}, 10, 0.1, 1) for i, s in enumerate([3.0, 0.5, -5.0])]
    out = get_aggregator("fltrust", model=clf, root=root, lr=0.1, steps=2, batch_size=20)(u)
    for k in g0:  # the two aligned updates rescaled to ||g0||, the opposed one has trust 0
        assert torch.allclose(out[k], g0[k], atol=1e-6)
    out = fl(u)
    assert fl.trust[0]["trust"][2] == 0.0 and fl.trust[0]["trust"][0] == pytest.approx(1.0, abs=1e-5)


def test_schedule_windows_and_participation():
    assert AttackSchedule(9, "early").window() == range(0, 3)
    assert AttackSchedule(9, "middle").window() == range(3, 6)
    assert AttackSchedule(9, "late").window() == range(6, 9)
    assert AttackSchedule(9, "always").window() == range(0, 9)
    half = AttackSchedule(200, "always", participation=0.5, seed=3)
    acts = [half.active(r, 1) for r in range(200)]
    assert 60 < sum(acts) < 140 and acts == [half.active(r, 1) for r in range(200)]
    assert not any(AttackSchedule(10, "always", participation=0.0).active(r, 0) for r in range(10))


def test_label_flip_and_backdoor_change_only_the_attackers_data_in_the_window():
    x = torch.rand(30, 1, 8, 8)
    y = torch.arange(30) % 3
    mal = make_malicious(4, [2], MaliciousConfig("label-flip", source=1, target=2), rounds=6, timing="late")
    assert mal.data_transform(0, 2, x, y)[1] is y            # outside the window
    assert mal.data_transform(5, 0, x, y)[1] is y            # an honest client
    _, y2 = mal.data_transform(5, 2, x, y)
    assert (y2[y == 1] == 2).all() and torch.equal(y2[y != 1], y[y != 1])
    assert mal.malicious == {(5, 2)}
    bd = make_malicious(4, [1], MaliciousConfig("backdoor", target=0, poison_fraction=0.5), rounds=3)
    x3, y3 = bd.data_transform(0, 1, x, y)
    changed = (x3 != x).flatten(1).any(1)
    assert int(changed.sum()) == 10 and (y3[changed] == 0).all() and (y[changed] != 0).all()
    assert (x3[changed][..., -3:, -3:] == 1).all()
    assert torch.equal(stamp_trigger(x, 2)[..., :6, :], x[..., :6, :])


def test_model_replacement_boosts_and_constrain_scale_projects():
    d = {"w": torch.tensor([3.0, 4.0])}
    mr = make_malicious(10, [0], MaliciousConfig("model-replacement"), rounds=2, clients_per_round=10)
    out = mr.update_transform(ClientUpdate(0, 0, dict(d), 10, 0.1, 1))
    assert torch.allclose(out.delta["w"], torch.tensor([30.0, 40.0])) and out.meta["boost"] == 10.0
    assert mr.update_transform(ClientUpdate(1, 0, dict(d), 10, 0.1, 1)).delta["w"] is d["w"]
    cs = make_malicious(10, [0], MaliciousConfig("constrain-scale", norm_bound=2.0), rounds=2)
    out = cs.update_transform(ClientUpdate(0, 0, dict(d), 10, 0.1, 1))
    assert out.delta["w"].norm() == pytest.approx(2.0) and torch.allclose(out.delta["w"], torch.tensor([1.2, 1.6]))


def test_bad_input_names_the_constraint():
    with pytest.raises(ConfigError, match="more attackers"):
        select_attackers(5, 6)
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        select_attackers(10, 1.5)
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        MaliciousConfig(poison_fraction=-0.1)
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        AttackSchedule(5, participation=2.0)
    with pytest.raises(ConfigError, match="timing"):
        AttackSchedule(5, timing="soon")
    with pytest.raises(ConfigError, match=r"n > 2f \+ 2"):
        check_krum(6, 2)
    with pytest.raises(ConfigError, match=r"n > 2f \+ 2"):
        Krum(f=4)(ups([[float(i)] for i in range(8)]))
    with pytest.raises(ConfigError, match=r"n >= 4f \+ 3"):
        Bulyan(f=2)(ups([[float(i)] for i in range(10)]))
    check_bulyan(11, 2)
    with pytest.raises(ConfigError, match="outside the labels"):
        MaliciousConfig(target=12).check_classes(10)
    with pytest.raises(ConfigError, match="trigger size"):
        stamp_trigger(torch.rand(2, 1, 4, 4), 5)
    with pytest.raises(ConfigError, match="aggregator 'krum'"):
        get_aggregator("krum", bogus=1)
    with pytest.raises(ConfigError, match="source != target"):
        MaliciousConfig(source=3, target=3)


def _round_updates(rnd, g, bad_scale, n=10, spike=None):
    """n updates with a hidden layer and a 2-D output layer; client 0's output row 3 is
    scaled by `bad_scale` (a persistent, moderate anomaly); `spike` = (client, factor)
    makes one honest client's whole update a one-off, moderate outlier."""
    out = []
    for c in range(n):
        hid = torch.randn(40, generator=g)
        w = 1.0 + 0.05 * torch.randn(5, 8, generator=g)
        if c == 0:
            w[3] *= bad_scale
        d = {"hidden": 0.1 * hid, "out": w}
        if spike is not None and spike[0] == c:
            d = {k: v * spike[1] for k, v in d.items()}
        out.append(ClientUpdate(c, rnd, d, 10, 0.1, 1))
    return out


def test_detector_accumulates_persistent_evidence_and_forgives_one_off_spikes():
    g = torch.Generator().manual_seed(0)
    rounds = [_round_updates(r, g, 1.15, spike=(5, 1.05) if r == 1 else None) for r in range(6)]
    acc, once = StatisticalDetector(), StatisticalDetector(evidence=None)
    for u in rounds:
        acc.flag(u)
        once.flag(u)
    truth = {(r, 0) for r in range(6)}
    m_acc = detection_metrics(acc.flagged_pairs(), truth, acc.seen_pairs())
    m_once = detection_metrics(once.flagged_pairs(), truth, once.seen_pairs())
    assert (1, 5) in once.flagged_pairs() and (1, 5) not in acc.flagged_pairs()  # one-off spike
    assert m_acc["precision"] >= 0.8 and m_acc["recall"] >= 0.5                 # caught once evidence adds up
    assert m_once["precision"] < 0.5                                            # one round alone: many honest flags
    assert acc.records[-1]["accumulated"][0] > acc.evidence                     # the attacker's CUSUM
    assert max(acc.records[-1]["accumulated"][1:]) < acc.evidence
    assert {(r, 0) for r in range(2, 6)} <= acc.flagged_pairs()                 # and kept flagged
    # the output-layer statistic sees the anomaly in the attacked class's row
    assert int(torch.tensor(acc.records[0]["stats"]["output_rows"]).argmax(1)[0]) == 3
    acc.flag(rounds[0])  # round 0 again: a new run, the evidence starts over
    assert acc.records[-1]["accumulated"][0] < acc.evidence
    with pytest.raises(ConfigError, match="evidence"):
        StatisticalDetector(evidence=0)
