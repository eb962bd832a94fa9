"""XEnsemble (Wei & Liu; Wei et al. 2020, dissertation ch. 3): a cross-layer ensemble
defense against adversarial and out-of-distribution inputs.

Input layer: k denoisers from `bastion.defenses.preprocess` (rotation, k-bit colour-depth
reduction, median filter, non-local means, ...), each admitted only if the target model's
benign accuracy on the denoised inputs stays within `tolerance` (default 2 points) of its
accuracy on the raw inputs. Output layer: a diversity team of n models (chosen by kappa,
`bastion.defenses.ensemble.teams`) evaluated on every denoised version. The V prediction
vectors of one query (k for input-only, n for output-only, k x n for cross-layer) are
combined by the decision logic of section 3.4.3 / Algorithm 1 (`decide`):

- majority agreement (more than floor(V/2) + 1 votes for one label): output the average
  of the agreeing prediction vectors;
- (near) complete disagreement (fewer than max(2, T * V) votes for the top label): flag;
- minority agreement (in between): the L1 rule. With p0 the target's vector on the raw
  input, when the agreeing vectors lie far from p0 (mean L1 distance above 1: the
  denoised versions moved, consistently, to a new label) output their average; when they
  lie near p0 (the label survived), output the single vector with the highest
  confidence among all V.

The team can be drawn per query among the top m teams (the "moving target"). A flagged
query is rejected (`predict_with_reject`); `forward` still returns log of the decided
vector. `adaptive()` is the white-box surrogate for adaptive attacks: the mean
probability over every (denoiser, member) pair with BPDA (Athalye et al. 2018) through
non-differentiable denoisers.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from bastion.core import Classifier, ConfigError, InputSpec, require
from bastion.defenses.ensemble.ensemble import StackedMembers, check_members
from bastion.defenses.preprocess.base import Transform, build

MODES = ("input-only", "output-only", "cross-layer")
MAJORITY, MINORITY_FAR, MINORITY_NEAR, FLAG = 0, 1, 2, 3
BRANCHES = {MAJORITY: "majority", MINORITY_FAR: "minority-far", MINORITY_NEAR: "minority-near",
            FLAG: "flag"}
DEFAULT_T = 0.34
DEFAULT_TOLERANCE = 0.02
DEFAULT_K = 3  # denoisers kept in the input layer (section 3.5: k >= 3)
DEFAULT_MEMBER_TOLERANCE = 0.02  # team members within 2 points of the best member's accuracy


def check_threshold(t: Any) -> float:
    ok = isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) and 0.0 < t < 1.0
    require(ok, f"flag threshold T must lie strictly between 0 and 1 (the least share of agreeing "
                f"votes that is answered; default {DEFAULT_T}), got {t!r}")
    return float(t)


def decide(votes: torch.Tensor, reference: torch.Tensor, threshold: float = DEFAULT_T
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """The section 3.4.3 decision on prediction vectors `votes` [N, V, C] with the
    target's vector on the raw input `reference` [N, C].

    Returns (output vectors [N, C], branch [N]: MAJORITY, MINORITY_FAR, MINORITY_NEAR or
    FLAG). Flagged queries get the mean of all V vectors as their output."""
    check_threshold(threshold)
    n, v, c = votes.shape
    labels = votes.argmax(-1)  # [N, V]
    counts = torch.nn.functional.one_hot(labels, c).sum(1)  # [N, C]
    # the top label; ties broken by the summed probability
    score = counts.to(votes.dtype) + 1e-3 * votes.sum(1) / v
    top = score.argmax(-1)
    top_count = counts.gather(1, top[:, None]).squeeze(1)
    agree = labels == top[:, None]  # [N, V]
    w = agree.to(votes.dtype)
    mean_agree = (votes * w[..., None]).sum(1) / w.sum(1, keepdim=True).clamp_min(1.0)
    mean_all = votes.mean(1)
    l1 = ((votes - reference[:, None, :]).abs().sum(-1) * w).sum(1) / w.sum(1).clamp_min(1.0)
    conf = votes.max(-1).values  # [N, V]
    best = votes[torch.arange(n), conf.argmax(1)]  # [N, C]
    majority = top_count > (v // 2 + 1)
    flag_below = max(2.0, threshold * v) if v > 1 else 1.0
    flag = (~majority) & (top_count.to(votes.dtype) < flag_below)
    far = l1 > 1.0
    branch = torch.where(majority, MAJORITY, torch.where(flag, FLAG, torch.where(far, MINORITY_FAR, MINORITY_NEAR)))
    out = torch.where((branch == MAJORITY)[:, None] | (branch == MINORITY_FAR)[:, None], mean_agree,
                      torch.where((branch == MINORITY_NEAR)[:, None], best, mean_all))
    return out, branch


def default_candidates(spec: InputSpec) -> list[Transform]:
    """The candidate denoisers XEnsemble admits from when none are given. Grey images: the
    dissertation's MNIST set (1-bit depth, 3 x 3 median, -12 degree rotation) and 1-bit
    depth after a light blur or a 3 degree rotation, which on MNIST keep 1-bit depth's
    strength against Linf perturbations while differing from it near stroke edges; colour
    images: the L1 rule's set (non-local means, 2 x 2 median, rotation)."""
    from bastion.defenses.detect.l1 import L1Config
    from bastion.defenses.preprocess import BitDepth, Chain, GaussianBlur, MedianFilter, Rotation

    if len(spec.shape) == 3 and spec.shape[0] == 1:
        return [BitDepth(1), MedianFilter(3), Rotation(-12.0), Chain((GaussianBlur(sigma=0.5), BitDepth(1))),
                Chain((Rotation(3.0), BitDepth(1))), Chain((Rotation(-3.0), BitDepth(1)))]
    return L1Config().default_denoisers(spec)


def admit_denoisers(target: Classifier, candidates: Sequence[Transform | str | dict[str, Any]],
                    x: torch.Tensor, y: torch.Tensor, tolerance: float = DEFAULT_TOLERANCE,
                    k: int | None = None, x_adv: torch.Tensor | None = None
                    ) -> tuple[list[Transform], list[dict[str, Any]]]:
    """The denoisers whose benign accuracy on `target` stays within `tolerance` of its
    accuracy on the raw inputs (section 3.5), with every candidate's record. A ConfigError
    when none passes.

    With `x_adv` (adversarial versions of x, e.g. FGSM examples of the target), the admitted
    denoisers are ranked by the target's accuracy on the denoised x_adv, most effective
    first, and `k` keeps the first k: a denoiser that leaves the perturbation in place
    only adds votes for the adversarial label to the cross-layer decision."""
    require(isinstance(tolerance, (int, float)) and not isinstance(tolerance, bool) and 0 <= tolerance <= 1,
            f"admission tolerance must lie in [0, 1], got {tolerance!r}")
    require(len(candidates) >= 1, "XEnsemble needs at least one candidate denoiser (k >= 1)")
    require(k is None or (isinstance(k, int) and not isinstance(k, bool) and k >= 1),
            f"k (denoisers kept) must be an integer >= 1, got {k!r}")
    ts = [build(c) for c in candidates]
    for t in ts:
        t.check_spec(target.spec)
    dev = target.device
    base = target.accuracy(x, y)
    admitted, records = [], []
    for t in ts:
        acc = target.accuracy(t(x.to(dev), target.spec.bounds), y)
        ok = acc >= base - tolerance - 1e-9
        rec = {**t.describe(), "accuracy": acc, "base_accuracy": base, "admitted": ok}
        if x_adv is not None:
            rec["adversarial_accuracy"] = target.accuracy(t(x_adv.to(dev), target.spec.bounds), y)
        records.append(rec)
        if ok:
            admitted.append((t, rec))
    if not admitted:
        worst = ", ".join(f"{r['name']} {r['accuracy']:.3f}" for r in records)
        raise ConfigError(f"no denoiser keeps the target's benign accuracy within {tolerance:g} of "
                          f"{base:.3f} ({worst}); add milder denoisers or raise the tolerance")
    if x_adv is not None:  # stable: equally effective denoisers keep the candidates' order
        admitted.sort(key=lambda tr: -tr[1]["adversarial_accuracy"])
    kept = admitted[:k] if k is not None else admitted
    for t, rec in admitted:
        rec["kept"] = any(t is u for u, _ in kept)
    return [t for t, _ in kept], records


@dataclass(frozen=True)
class XEnsembleConfig:
    """Settings of an XEnsemble defense.

    Attributes:
        mode: 'cross-layer' (denoise -> team, default), 'input-only' (denoisers on the
            target) or 'output-only' (the team on raw inputs).
        threshold: T, the least share of agreeing votes answered rather than flagged
            (fewer than max(2, T * V) agreeing votes is a flag); in (0, 1), default 0.34.
        top: per-query team draw among this many teams (1 = always the first team).
        seed: seeds the per-query team draw.
    """

    mode: str = "cross-layer"
    threshold: float = DEFAULT_T
    top: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"unknown XEnsemble mode {self.mode!r}; valid: {', '.join(MODES)}")
        check_threshold(self.threshold)
        require(isinstance(self.top, int) and not isinstance(self.top, bool) and self.top >= 1,
                f"top must be an integer >= 1, got {self.top!r}")


class XEnsemble(Classifier):
    """XEnsemble as a `Classifier` with the reject option.

    Args:
        target: the protected model (its raw-input vector is the L1 reference; the input-
            only mode classifies with it).
        denoisers: the admitted input transformations (k >= 1; ignored by output-only).
        teams: candidate teams, each a list of member Classifiers (n >= 1 each; ignored by
            input-only). With `config.top` > 1 every query draws one of the first `top`.
        config: mode, flag threshold T, team draw.
        vectorize: stack members sharing an architecture into one vmap call: True, False,
            or None (default) for a GPU only (see `bastion.defenses.ensemble.ensemble`).
    """

    def __init__(self, target: Classifier, denoisers: Sequence[Transform], teams: Sequence[Sequence[Classifier]],
                 config: XEnsembleConfig | None = None, vectorize: bool | None = None) -> None:
        cfg = config or XEnsembleConfig()
        if not isinstance(target, Classifier):
            raise ConfigError(f"XEnsemble protects a bastion Classifier, got {type(target).__name__}")
        dens = [build(d) for d in denoisers]
        if cfg.mode != "output-only":
            require(len(dens) >= 1, "XEnsemble needs k >= 1 denoisers for the input layer")
            for d in dens:
                d.check_spec(target.spec)
        team_list = [list(t) for t in teams]
        members: list[Classifier] = []
        if cfg.mode != "input-only":
            require(len(team_list) >= 1 and all(len(t) >= 1 for t in team_list),
                    "XEnsemble needs at least one team of at least one model for the output layer")
            for t in team_list:
                for m in t:
                    if not any(m is u for u in members):
                        members.append(m)
            check_members([target, *members], "XEnsemble")
        self.team_index = ([[next(i for i, u in enumerate(members) if u is m) for m in t] for t in team_list]
                           if cfg.mode != "input-only" else [])
        # the target sees the raw input and every version; the team only the versions
        stack = nn.ModuleList([target, StackedMembers(members, vectorize)] if members else [target])
        super().__init__(stack, target.spec, target.num_classes,
                         device=target.device, name=f"xensemble[{cfg.mode}]")
        self.normalize = nn.Identity()
        self.config = cfg
        self.denoisers = dens if cfg.mode != "output-only" else []
        self.meta["defense"] = {"kind": "xensemble", "mode": cfg.mode, "threshold": cfg.threshold,
                                "top": cfg.top, "denoisers": [d.describe() for d in self.denoisers],
                                "teams": [[m.name for m in t] for t in team_list]}
        self._rng = random.Random(cfg.seed)

    @property
    def device(self) -> torch.device:
        return self.module[0].device  # type: ignore[index]

    @property
    def target(self) -> Classifier:
        return self.module[0]  # type: ignore[index,return-value]

    # ------------------------------------------------------------------ votes
    def _versions(self, x: torch.Tensor, bpda: bool = False) -> torch.Tensor:
        """[k or 1, N, ...] the inputs the output layer sees."""
        if not self.denoisers:
            return x[None]
        b = self.spec.bounds
        outs = []
        for d in self.denoisers:
            if bpda and not d.differentiable:
                h = d.approximation(x, b)
                outs.append(h + (d(x.detach(), b) - h).detach())
            else:
                outs.append(d(x, b))
        return torch.stack(outs)

    def all_probs(self, x: torch.Tensor, bpda: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(reference [N, C], probs [1 + members, k', N, C]): the target on raw x, and every
        model (target first) on every version, from one batched call per model group."""
        n = x.shape[0]
        target = self.module[0]  # type: ignore[index]
        team = self.module[1] if len(self.module) > 1 else None  # type: ignore[arg-type,index]
        if not self.denoisers:  # output-only: the raw input is the only version
            ref = target(x).softmax(-1)
            p = ref[None, None] if team is None else torch.cat([ref[None], team(x).softmax(-1)])[:, None]
            return ref, p  # [1 + M, 1, N, C]
        versions = self._versions(x, bpda).flatten(0, 1)  # [k N, ...]
        kk = len(self.denoisers)
        # on CPU one call per version ran faster than one (1 + k) N batch (cache-sized batches)
        chunk = n if x.device.type == "cpu" else None
        both = torch.cat([x, versions])
        pt = (target(both) if chunk is None else torch.cat([target(both[i:i + n]) for i in range(0, both.shape[0], n)]))
        pt = pt.softmax(-1)  # [(1 + k) N, C]
        ref, pt = pt[:n], pt[n:].view(1, kk, n, -1)
        if team is None:
            return ref, pt
        pm = team(versions, chunk=chunk).softmax(-1)  # [M, k N, C]
        return ref, torch.cat([pt, pm.view(pm.shape[0], kk, n, -1)])

    def votes(self, x: torch.Tensor, teams: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(votes [N, V, C], reference [N, C]) for the mode; `teams` [N] selects each
        query's team index."""
        ref, p = self.all_probs(x)
        if self.config.mode == "input-only":
            return p[0].permute(1, 0, 2), ref  # [N, k, C]
        n = x.shape[0]
        if teams is None:
            teams = self.draw_teams(n)
        out = []
        for idx in self.team_index:
            sel = p[[1 + i for i in idx]]  # [n_team, k', N, C]
            out.append(sel.permute(2, 1, 0, 3).flatten(1, 2))  # [N, k' * n_team, C]
        sizes = {o.shape[1] for o in out}
        if len(sizes) == 1:
            stacked = torch.stack(out)  # [teams, N, V, C]
            return stacked[teams.to(stacked.device), torch.arange(n, device=stacked.device)], ref
        require(bool((teams == teams[0]).all()), "teams of different sizes cannot be drawn per query")
        return out[int(teams[0])], ref

    def draw_teams(self, n: int) -> torch.Tensor:
        m = min(self.config.top, max(len(self.team_index), 1))
        return torch.tensor([self._rng.randrange(m) for _ in range(n)], dtype=torch.long)

    # ------------------------------------------------------------------ decisions
    def decide(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(output vectors [N, C], branch [N]) for a batch (no gradients needed)."""
        v, ref = self.votes(x)
        return decide(v, ref, self.config.threshold)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.decide(x)
        return out.clamp_min(1e-12).log()

    def _decided(self, x: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.check(x)
        outs, brs = [], []
        with torch.no_grad():
            for i in range(0, x.shape[0], batch_size):
                o, b = self.decide(x[i:i + batch_size].to(self.device))
                outs.append(o)
                brs.append(b)
        if not outs:
            return torch.empty(0, self.num_classes), torch.empty(0, dtype=torch.long)
        return torch.cat(outs), torch.cat(brs)

    def branches(self, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        return self._decided(x, batch_size)[1]

    def detect(self, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Boolean mask [N]: the queries XEnsemble flags."""
        return self.branches(x, batch_size) == FLAG

    def predict_with_reject(self, x: torch.Tensor, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """(labels [N], flagged [N]) from one pass."""
        out, br = self._decided(x, batch_size)
        return out.argmax(-1), br == FLAG

    def agreement(self, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """[N] share of votes for the top label: 1 = unanimous; its complement is the
        continuous OOD score of the flag."""
        self.check(x)
        outs = []
        with torch.no_grad():
            for i in range(0, x.shape[0], batch_size):
                v, _ = self.votes(x[i:i + batch_size].to(self.device))
                c = torch.nn.functional.one_hot(v.argmax(-1), self.num_classes).sum(1)
                outs.append(c.max(-1).values.float() / v.shape[1])
        return torch.cat(outs) if outs else torch.empty(0)

    def adaptive(self) -> Classifier:
        """White-box surrogate: log of the mean probability over every (version, model)
        pair the mode uses, BPDA through non-differentiable denoisers."""
        return _XSurrogate(self)


class _XSurrogate(Classifier):
    def __init__(self, xe: XEnsemble) -> None:
        super().__init__(xe.module, xe.spec, xe.num_classes, device=xe.device, name=f"adaptive({xe.name})")
        self.normalize = nn.Identity()
        self.xe = [xe]  # not a submodule (shares xe.module)

    @property
    def device(self) -> torch.device:
        return self.xe[0].device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xe = self.xe[0]
        _, p = xe.all_probs(x, bpda=True)  # [1 + M, k', N, C]
        if xe.config.mode == "input-only":
            sel = p[:1]
        else:
            idx = sorted({1 + i for t in xe.team_index for i in t})
            sel = p[idx]
        return sel.mean((0, 1)).clamp_min(1e-12).log()


def build_xensemble(target: Classifier, pool: Sequence[Classifier], x_val: torch.Tensor, y_val: torch.Tensor,
                    denoisers: Sequence[Transform | str | dict[str, Any]], *, n: int = 3,
                    policy: str = "best-kappa", x_kappa: torch.Tensor | None = None,
                    tolerance: float = DEFAULT_TOLERANCE, config: XEnsembleConfig | None = None,
                    team_seed: int = 0, k: int | None = DEFAULT_K,
                    member_tolerance: float | None = DEFAULT_MEMBER_TOLERANCE) -> tuple[XEnsemble, dict[str, Any]]:
    """Assemble XEnsemble from a target, a pool and candidate denoisers: admit denoisers on
    (x_val, y_val) and keep the k most effective on `x_kappa` (e.g. FGSM examples of x_val;
    without it, the first k admitted), compute the pool's kappa matrix on `x_kappa`
    (default x_val), pick the team(s) by `policy` among the members within
    `member_tolerance` of the best member's accuracy on x_val. Returns the model and its
    record."""
    from bastion.defenses.ensemble.diversity import pairwise_matrix
    from bastion.defenses.ensemble.teams import (
        TeamPolicy,
        accurate_members,
        check_team_size,
        choose_teams,
    )

    cfg = config or XEnsembleConfig()
    members = list(pool)
    check_members([target, *members], "XEnsemble")
    if cfg.mode != "input-only":
        check_team_size(n, len(members))
    admitted, records = (admit_denoisers(target, denoisers, x_val, y_val, tolerance, k, x_kappa)
                         if cfg.mode != "output-only" else ([], []))
    xk = x_val if x_kappa is None else x_kappa
    preds = torch.stack([m.predict(xk).cpu() for m in members])
    kappa = pairwise_matrix(preds, measure="kappa", num_classes=target.num_classes)
    acc = [m.accuracy(x_val, y_val) for m in members]
    eligible = accurate_members(acc, member_tolerance, n)
    teams = choose_teams(kappa, TeamPolicy(policy=policy, n=n, seed=team_seed), eligible,
                         cfg.top if policy == "best-kappa" else 1)
    xe = XEnsemble(target, admitted, [[members[i] for i in t] for t in teams], cfg)
    rec = {"denoisers": records, "teams": [list(t) for t in teams], "kappa": kappa.tolist(),
           "member_accuracy": acc, "eligible": eligible, "policy": policy, "n": n, **xe.meta["defense"]}
    return xe, rec
