"""The `ensemble` and `xensemble` defense kinds of `bastion defend` and of the audit's
defense section: a model defended by a diversity team from a pool (and, for XEnsemble, by
denoisers in front of it), stored as the model's checkpoint plus a record that rebuilds
the defense from the pool manifest.

    bastion defend -m cnn7.st --defense xensemble --params pool=runs/pool \\
        --params 'denoisers=[{name: bit-depth, bits: 1}, {name: median, kernel: 3}, {name: rotation, degrees: -12}]' \\
        --params n=3 --params policy=best-kappa --params threshold=0.34 --out xe.st

Parameters (`EnsembleDefenseConfig`): pool (manifest or folder; required), n, policy,
consensus (ensemble kind), mode / threshold / top / tolerance / denoisers (xensemble kind),
kappa_on ('fgsm' examples of the target, as Wei et al. 2020 measure diversity, or
'benign'), fgsm_eps, seed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from bastion.core import Classifier, ConfigError, require
from bastion.params import build

ENSEMBLE, XENSEMBLE = "ensemble", "xensemble"
KINDS = (ENSEMBLE, XENSEMBLE)
DEFAULT_VALIDATION = 500


@dataclass(frozen=True)
class EnsembleDefenseConfig:
    """Settings of an ensemble / XEnsemble defense.

    Attributes:
        pool: the pool manifest (pool.json) or its folder.
        n: team size (default 3).
        policy: 'best-kappa' (default), 'rand-kappa' or 'randbase'.
        consensus: ensemble kind: 'plurality' (default), 'soft', 'weighted-*'.
        mode: xensemble kind: 'cross-layer' (default), 'input-only', 'output-only'.
        threshold: xensemble: T, the least share of agreeing votes answered (0.34).
        top: xensemble: per-query team draw among the top teams (1 = fixed team).
        tolerance: xensemble: admission tolerance of a denoiser's benign accuracy (0.02).
        k: xensemble: admitted denoisers kept, the most effective on the FGSM examples
            first (3; with kappa_on='benign', the first k admitted).
        member_tolerance: teams are drawn among the members whose accuracy on the
            validation images is within this of the best member's (0.02; None = all).
        denoisers: xensemble: candidate denoisers (None = `xensemble.default_candidates`:
            1-bit depth, 3x3 median, a -12 degree rotation and 1-bit depth after a light
            blur or a +-3 degree rotation for one-channel images; non-local means, 2x2
            median and rotation for colour images).
        kappa_on: 'fgsm' (kappa on FGSM examples of the target, default) or 'benign'.
        fgsm_eps: the FGSM budget for kappa_on='fgsm' (0.3, the MNIST setting).
        seed: seeds team draws.
    """

    pool: str = ""
    n: int = 3
    policy: str = "best-kappa"
    consensus: str = "plurality"
    mode: str = "cross-layer"
    threshold: float = 0.34
    top: int = 1
    tolerance: float = 0.02
    k: int | None = 3
    member_tolerance: float | None = 0.02
    denoisers: list[Any] | None = None
    kappa_on: str = "fgsm"
    fgsm_eps: float = 0.3
    seed: int = 0

    def __post_init__(self) -> None:
        from bastion.defenses.ensemble.consensus import check_method
        from bastion.defenses.ensemble.teams import TeamPolicy
        from bastion.defenses.preprocess.base import build as build_transform
        from bastion.defenses.xensemble import XEnsembleConfig

        require(isinstance(self.pool, str) and self.pool.strip() != "",
                "an ensemble defense needs pool=PATH (a pool manifest or its folder; build one with "
                "'bastion pool build')")
        TeamPolicy(self.policy, self.n, max(self.top, 1) if isinstance(self.top, int) else self.top, self.seed)
        if not self.consensus.startswith("weighted"):
            check_method(self.consensus, None)
        else:
            raise ConfigError("weighted consensus needs per-member weights; use plurality or soft here")
        XEnsembleConfig(mode=self.mode, threshold=self.threshold, top=self.top, seed=self.seed)
        require(isinstance(self.tolerance, (int, float)) and not isinstance(self.tolerance, bool)
                and 0 <= self.tolerance <= 1, f"tolerance must lie in [0, 1], got {self.tolerance!r}")
        require(self.k is None or (isinstance(self.k, int) and not isinstance(self.k, bool) and self.k >= 1),
                f"k (denoisers kept) must be an integer >= 1, got {self.k!r}")
        require(self.member_tolerance is None or (isinstance(self.member_tolerance, (int, float))
                                                  and not isinstance(self.member_tolerance, bool)
                                                  and 0 <= self.member_tolerance <= 1),
                f"member_tolerance must lie in [0, 1], got {self.member_tolerance!r}")
        if self.denoisers is not None:
            require(isinstance(self.denoisers, list) and len(self.denoisers) >= 1,
                    "denoisers must be a non-empty list of transforms (k >= 1)")
            for d in self.denoisers:
                build_transform(d)
        require(self.kappa_on in ("fgsm", "benign"), f"kappa_on must be 'fgsm' or 'benign', got {self.kappa_on!r}")
        require(isinstance(self.fgsm_eps, (int, float)) and 0 < self.fgsm_eps <= 1,
                f"fgsm_eps must lie in (0, 1], got {self.fgsm_eps!r}")


def check_params(kind: str, params: dict[str, Any]) -> EnsembleDefenseConfig:
    require(kind in KINDS, f"unknown ensemble defense kind {kind!r}")
    return build(EnsembleDefenseConfig, params, f"defense {kind!r}")


def make(model: Classifier, kind: str, params: dict[str, Any], x_val: torch.Tensor, y_val: torch.Tensor,
         record: dict[str, Any] | None = None) -> Classifier:
    """The defended model. Without `record` the teams, denoisers and kappa are chosen on
    (x_val, y_val); with one (a loaded checkpoint) they are rebuilt as recorded."""
    from bastion.defenses.ensemble.diversity import pairwise_matrix
    from bastion.defenses.ensemble.ensemble import Ensemble
    from bastion.defenses.ensemble.pool import load_pool
    from bastion.defenses.ensemble.teams import TeamPolicy, accurate_members, choose_teams
    from bastion.defenses.xensemble import XEnsemble, XEnsembleConfig, admit_denoisers

    cfg = check_params(kind, params)
    pool = load_pool(Path(cfg.pool), device=str(model.device))
    from bastion.defenses.ensemble.ensemble import check_members

    check_members([model, *pool.members], "ensemble defense")
    from bastion.defenses.ensemble.teams import check_team_size

    check_team_size(cfg.n, len(pool))
    if record is None:
        xk = x_val
        if cfg.kappa_on == "fgsm":
            from bastion.attacks.evasion import FGSM

            xk = FGSM(eps=cfg.fgsm_eps)(model, x_val, y_val).x_adv
        preds = torch.stack([m.predict(xk).cpu() for m in pool.members])
        kappa = pairwise_matrix(preds, num_classes=model.num_classes)
        acc = [m.accuracy(x_val, y_val) for m in pool.members]
        eligible = accurate_members(acc, cfg.member_tolerance, cfg.n)
        teams = choose_teams(kappa, TeamPolicy(cfg.policy, cfg.n, max(cfg.top, 1), cfg.seed), eligible,
                             cfg.top if kind == XENSEMBLE else 1)
        den_recs: list[dict[str, Any]] = []
        admitted: list[Any] = []
        if kind == XENSEMBLE and cfg.mode != "output-only":
            from bastion.defenses.xensemble import default_candidates

            cands = cfg.denoisers if cfg.denoisers is not None else default_candidates(model.spec)
            admitted, den_recs = admit_denoisers(model, cands, x_val, y_val, cfg.tolerance, cfg.k,
                                                 xk if cfg.kappa_on == "fgsm" else None)
        record = {"kind": kind, "name": kind, "params": _jsonable(asdict(cfg)),
                  "pool": str(Path(cfg.pool).resolve()), "members": pool.names,
                  "teams": [list(t) for t in teams], "kappa": kappa.tolist(),
                  "member_accuracy": acc, "eligible": eligible,
                  "denoisers": [{"name": t.name, **t.params()} for t in admitted],
                  "admission": _jsonable(den_recs)}
    names = record.get("members")
    require(names == pool.names, f"the pool at {cfg.pool} holds {pool.names}, the defense was built on {names}")
    teams = [[pool.members[i] for i in t] for t in record["teams"]]
    out: Classifier
    if kind == ENSEMBLE:
        out = Ensemble([model, *teams[0]], consensus=cfg.consensus, name=f"ensemble({model.name})")
    else:
        from bastion.defenses.preprocess import get_transform

        dens = [get_transform(d["name"], **{k: v for k, v in d.items() if k != "name"}) for d in record["denoisers"]]
        out = XEnsemble(model, dens, teams, XEnsembleConfig(mode=cfg.mode, threshold=cfg.threshold,
                                                            top=cfg.top, seed=cfg.seed))
    out.meta["defended"] = record
    out._base = model  # type: ignore[attr-defined]
    return out


def _jsonable(obj: Any) -> Any:
    import json

    return json.loads(json.dumps(obj, default=str))


def is_ensemble_defense(model: Classifier) -> bool:
    from bastion.defenses.ensemble.ensemble import Ensemble
    from bastion.defenses.xensemble import XEnsemble

    return isinstance(model, (Ensemble, XEnsemble)) and getattr(model, "_base", None) is not None
