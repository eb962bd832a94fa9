"""Diversity ensembles (Wei et al. 2020): a pool of base models, diversity metrics (Cohen's
kappa and four others), team formation (RandBase, Rand-kappa, Best-kappa) and consensus
rules, with `Ensemble`, a team that is itself a `Classifier`.

    from bastion.defenses.ensemble import Ensemble, TeamPolicy, load_pool, pairwise_matrix, select_team
    pool = load_pool("runs/pool")
    kappa = pairwise_matrix(torch.stack([m.predict(x_fgsm) for m in pool.members]))
    team = select_team(kappa, TeamPolicy("best-kappa", n=3))
    ens = Ensemble(pool.subset(team), consensus="plurality")
"""

from bastion.defenses.ensemble.consensus import METHODS, combine, votes
from bastion.defenses.ensemble.diversity import (
    PAIRWISE,
    cohen_kappa,
    correlation,
    disagreement,
    generalized_diversity,
    pairwise_matrix,
    q_statistic,
    team_diversity,
    team_score,
)
from bastion.defenses.ensemble.ensemble import Ensemble, StackedMembers, check_members
from bastion.defenses.ensemble.pool import (
    MemberSpec,
    Pool,
    PoolConfig,
    build_pool,
    load_pool,
    read_manifest,
)
from bastion.defenses.ensemble.teams import (
    POLICIES,
    TeamPolicy,
    all_teams,
    ranked_teams,
    select_team,
    top_teams,
)

__all__ = ["METHODS", "PAIRWISE", "POLICIES", "Ensemble", "MemberSpec", "Pool", "PoolConfig",
           "StackedMembers", "TeamPolicy", "all_teams", "build_pool", "check_members", "cohen_kappa",
           "combine", "correlation", "disagreement", "generalized_diversity", "load_pool",
           "pairwise_matrix", "q_statistic", "ranked_teams", "read_manifest", "select_team",
           "team_diversity", "team_score", "top_teams", "votes"]
