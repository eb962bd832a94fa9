"""Team formation from a model pool and its pairwise kappa matrix (Wei et al. 2020).

A team is a tuple of member indices. Policies:

- `randbase`: a team of size n drawn uniformly at random (the baseline);
- `rand-kappa`: drawn uniformly among the `top` teams of size n with the lowest mean
  pairwise kappa (the most diverse ones);
- `best-kappa`: the team of size n with the lowest mean pairwise kappa.

Candidate teams are enumerated exhaustively while C(M, n) stays at or below
`max_enumerate`; above it a greedy search builds them (start from each of the most
diverse pairs, add the member that keeps the mean kappa lowest). `all_teams(M)` lists every
team of size >= 2: 2^M - M - 1 of them (4, 26, 1013 for M = 3, 5, 10).
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from bastion.core import ConfigError, require
from bastion.defenses.ensemble.diversity import team_score

POLICIES = ("randbase", "rand-kappa", "best-kappa")
DEFAULT_TOP = 5
MAX_ENUMERATE = 20_000

Team = tuple[int, ...]


def all_teams(m: int, min_size: int = 2) -> list[Team]:
    """Every subset of range(m) with at least `min_size` members, smallest first."""
    require(m >= 1, f"a pool needs at least one member, got {m}")
    return [t for r in range(min_size, m + 1) for t in itertools.combinations(range(m), r)]


def check_team_size(n: int, m: int) -> None:
    require(isinstance(n, int) and not isinstance(n, bool) and n >= 2,
            f"team size n must be an integer >= 2, got {n!r}")
    require(n <= m, f"team size n={n} is larger than the pool ({m} members)")


def ranked_teams(kappa: torch.Tensor, n: int, limit: int | None = None,
                 max_enumerate: int = MAX_ENUMERATE) -> list[tuple[Team, float]]:
    """Teams of size n with their mean pairwise kappa, most diverse (lowest) first;
    exhaustive when C(M, n) <= max_enumerate, else greedy (at most `limit` or 50 teams)."""
    m = int(kappa.shape[0])
    check_team_size(n, m)
    if math.comb(m, n) <= max_enumerate:
        scored = [(t, team_score(kappa, t)) for t in itertools.combinations(range(m), n)]
    else:
        scored = _greedy(kappa, n, limit or 50)
    scored.sort(key=lambda ts: (ts[1], ts[0]))
    return scored[:limit] if limit else scored


def _greedy(kappa: torch.Tensor, n: int, count: int) -> list[tuple[Team, float]]:
    m = int(kappa.shape[0])
    pairs = sorted(itertools.combinations(range(m), 2), key=lambda p: float(kappa[p[0], p[1]]))
    seen: dict[Team, float] = {}
    for pair in pairs[:count]:
        team = list(pair)
        while len(team) < n:
            rest = [j for j in range(m) if j not in team]
            best = min(rest, key=lambda j: (team_score(kappa, [*team, j]), j))
            team.append(best)
        t = tuple(sorted(team))
        seen[t] = team_score(kappa, t)
    return list(seen.items())


@dataclass(frozen=True)
class TeamPolicy:
    """How a team is chosen.

    Attributes:
        policy: 'randbase', 'rand-kappa' or 'best-kappa'.
        n: team size (>= 2; XEnsemble uses n >= 3).
        top: rand-kappa draws among this many most diverse teams (default 5).
        seed: seeds the random draws.
    """

    policy: str = "best-kappa"
    n: int = 3
    top: int = DEFAULT_TOP
    seed: int = 0

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ConfigError(f"unknown team policy {self.policy!r}; valid: {', '.join(POLICIES)}")
        require(isinstance(self.n, int) and not isinstance(self.n, bool) and self.n >= 2,
                f"team size n must be an integer >= 2, got {self.n!r}")
        require(isinstance(self.top, int) and not isinstance(self.top, bool) and self.top >= 1,
                f"top must be an integer >= 1, got {self.top!r}")


def select_team(kappa: torch.Tensor, policy: TeamPolicy) -> Team:
    """One team of size `policy.n` from a pool with pairwise kappa matrix `kappa`."""
    m = int(kappa.shape[0])
    check_team_size(policy.n, m)
    rng = random.Random(policy.seed)
    if policy.policy == "randbase":
        return tuple(sorted(rng.sample(range(m), policy.n)))
    ranked = ranked_teams(kappa, policy.n, limit=policy.top)
    if policy.policy == "best-kappa":
        return ranked[0][0]
    return rng.choice(ranked)[0]


def top_teams(kappa: torch.Tensor, n: int, m: int) -> list[Team]:
    """The m most diverse teams of size n (the candidates of XEnsemble's per-query draw)."""
    require(isinstance(m, int) and m >= 1, f"the number of candidate teams must be >= 1, got {m!r}")
    return [t for t, _ in ranked_teams(kappa, n, limit=m)]


def describe_team(team: Sequence[int], names: Sequence[str], kappa: torch.Tensor) -> dict[str, object]:
    return {"members": [names[i] for i in team], "indices": list(team),
            "mean_kappa": team_score(kappa, team) if len(team) >= 2 else None}


def accurate_members(accuracy: Sequence[float], tolerance: float | None, n: int = 2) -> list[int]:
    """Indices of the members whose benign accuracy is within `tolerance` of the best
    member's (every member when tolerance is None). Diversity is sought among accurate
    models: a weak member lowers kappa by being wrong, which costs benign accuracy. When
    fewer than n qualify, the n most accurate are kept."""
    order = sorted(range(len(accuracy)), key=lambda i: (-accuracy[i], i))
    if tolerance is None:
        return list(range(len(accuracy)))
    require(isinstance(tolerance, (int, float)) and not isinstance(tolerance, bool) and 0 <= tolerance <= 1,
            f"member_tolerance must lie in [0, 1], got {tolerance!r}")
    best = accuracy[order[0]]
    keep = [i for i in order if accuracy[i] >= best - tolerance - 1e-9]
    return sorted(keep if len(keep) >= n else order[:n])


def choose_teams(kappa: torch.Tensor, policy: TeamPolicy, members: Sequence[int] | None = None,
                 count: int = 1) -> list[Team]:
    """`count` teams (the most diverse ones when count > 1 and the policy is kappa-based,
    else one team drawn by `policy`) among `members` (pool indices; default all), as
    indices into the whole pool."""
    idx = list(range(int(kappa.shape[0]))) if members is None else list(members)
    sub = kappa[idx][:, idx]
    if count > 1 and policy.policy != "randbase":
        local = top_teams(sub, policy.n, count)
    else:
        local = [select_team(sub, policy)]
    return [tuple(idx[i] for i in t) for t in local]
