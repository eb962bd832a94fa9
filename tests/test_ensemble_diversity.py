"""Diversity measures, team formation and consensus on hand-made predictions."""

from __future__ import annotations

import math

import pytest
import torch
from sklearn.metrics import cohen_kappa_score

from bastion.core import ConfigError
from bastion.defenses.ensemble import (
    TeamPolicy,
    all_teams,
    cohen_kappa,
    combine,
    correlation,
    disagreement,
    generalized_diversity,
    pairwise_matrix,
    q_statistic,
    ranked_teams,
    select_team,
    team_diversity,
    team_score,
    top_teams,
)


def test_kappa_matches_sklearn_on_random_labels() -> None:
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        a = torch.randint(0, 10, (200,), generator=g)
        b = torch.where(torch.rand(200, generator=g) < 0.6, a, torch.randint(0, 10, (200,), generator=g))
        assert cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(a.numpy(), b.numpy()), abs=1e-12)
    same = torch.tensor([0, 1, 2, 1])
    assert cohen_kappa(same, same) == pytest.approx(1.0)
    # constant identical vectors: p_e = 1, defined as full agreement instead of NaN
    assert cohen_kappa(torch.zeros(5), torch.zeros(5)) == 1.0


def test_oracle_measures_on_a_hand_made_table() -> None:
    # n11 = 2, n10 = 1, n01 = 1, n00 = 1
    ca = torch.tensor([1, 1, 1, 0, 0], dtype=torch.bool)
    cb = torch.tensor([1, 1, 0, 1, 0], dtype=torch.bool)
    assert q_statistic(ca, cb) == pytest.approx((2 * 1 - 1 * 1) / (2 * 1 + 1 * 1))
    assert correlation(ca, cb) == pytest.approx((2 - 1) / math.sqrt(3 * 2 * 3 * 2))
    assert disagreement(ca, cb) == pytest.approx(2 / 5)
    # members that never fail together: GD = 1; identical failures: GD = 0
    assert generalized_diversity(torch.tensor([[0, 1, 1], [1, 0, 1], [1, 1, 0]]).bool()) == pytest.approx(1.0)
    assert generalized_diversity(torch.tensor([[0, 1], [0, 1]]).bool()) == pytest.approx(0.0)


def test_pairwise_matrix_and_team_measures() -> None:
    preds = torch.tensor([[0, 1, 2, 0, 1, 2], [0, 1, 2, 0, 1, 1], [2, 0, 1, 1, 2, 0]])
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    k = pairwise_matrix(preds)
    assert k.shape == (3, 3) and torch.allclose(k, k.T) and torch.allclose(k.diagonal(), torch.ones(3, dtype=k.dtype))
    assert k[0, 2] < k[0, 1]  # member 2 disagrees with 0 far more than member 1 does
    assert team_score(k, (0, 1, 2)) == pytest.approx(float(k[0, 1] + k[0, 2] + k[1, 2]) / 3)
    d = team_diversity(preds, y)
    assert set(d) == {"kappa", "q", "correlation", "disagreement", "generalized_diversity"}
    with pytest.raises(ConfigError, match="true labels"):
        pairwise_matrix(preds, measure="q")
    with pytest.raises(ConfigError, match="unknown diversity measure"):
        pairwise_matrix(preds, y, measure="entropy")


def test_team_counts_and_policies() -> None:
    assert [len(all_teams(m)) for m in (3, 5, 10)] == [4, 26, 1013]
    # pool of 5: members 3 and 4 disagree with everyone; the most diverse triple holds both
    k = torch.full((5, 5), 0.9, dtype=torch.float64)
    k[3, :] = k[:, 3] = 0.1
    k[4, :] = k[:, 4] = 0.2
    k[3, 4] = k[4, 3] = 0.05
    k.fill_diagonal_(1.0)
    best = select_team(k, TeamPolicy("best-kappa", n=3))
    assert set(best) >= {3, 4}
    ranked = ranked_teams(k, 3)
    assert len(ranked) == math.comb(5, 3) and ranked[0][1] <= ranked[-1][1]
    tops = top_teams(k, 3, 3)
    assert all(set(t) >= {3, 4} for t in tops)
    rk = {select_team(k, TeamPolicy("rand-kappa", n=3, top=3, seed=s)) for s in range(10)}
    assert rk <= set(tops)
    rb = [select_team(k, TeamPolicy("randbase", n=3, seed=s)) for s in range(20)]
    assert len(set(rb)) > 3 and all(len(t) == 3 for t in rb)
    # the greedy search of a large pool finds the same best team
    greedy = ranked_teams(k, 3, limit=5, max_enumerate=1)
    assert greedy[0][0] == best
    with pytest.raises(ConfigError, match="larger than the pool"):
        select_team(k, TeamPolicy("best-kappa", n=6))
    with pytest.raises(ConfigError, match="unknown team policy"):
        TeamPolicy("best")


def test_consensus_rules() -> None:
    p = torch.tensor([[[0.6, 0.4]], [[0.45, 0.55]], [[0.1, 0.9]]])  # 3 members, 1 example
    assert combine(p, "plurality").argmax(-1).item() == 1
    assert torch.allclose(combine(p, "soft"), p.mean(0))
    # member 0 weighted up wins both weighted rules
    assert combine(p, "weighted-plurality", [5, 1, 1]).argmax(-1).item() == 0
    assert combine(p, "weighted-soft", [10, 1, 1]).argmax(-1).item() == 0
    with pytest.raises(ConfigError, match="one weight per member"):
        combine(p, "weighted-soft")
    with pytest.raises(ConfigError, match="unknown consensus"):
        combine(p, "median")
