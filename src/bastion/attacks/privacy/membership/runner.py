"""End-to-end membership audit of one target model (used by `bastion mia` and the
'membership' audit section).

Threat model, made explicit:

- The target's training set (members) and some non-members are known to the auditor, e.g.
  a checkpoint trained by `bastion train` on mnist-5k's train split (members) with the
  test split as non-members. Candidates are a balanced, seeded draw of `eval_size`
  members and `eval_size` non-members.
- `attacker_data='pool'`: the attacker holds a data pool that contains the candidates
  (all members and non-members); shadow models train on seeded random halves of it, so
  every candidate has IN and OUT shadows. Online LiRA needs this (Carlini et al. 2022).
- `attacker_data='disjoint'`: the attacker's pool excludes every candidate (the rest of
  the members and non-members); all shadow/reference models are OUT for every candidate.
  Shokri et al. (2017) assume this; offline LiRA and RMIA work under both.
- Yeom's threshold uses the target's average training loss when the checkpoint records
  it (the paper's assumption), else a threshold calibrated on shadow models, else (the
  target's architecture unknown, no shadow models) the target's mean loss on its training
  set (the members); the gap attack needs no shadow models at all. Neither needs the
  target's architecture.
- Shadow models are built like the target: its zoo architecture, the entry point it was
  loaded from (`--model my_pkg.models:build`), or a `build_fn` (and optionally the
  user's own `train_fn`) given in Python.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from bastion.attacks.privacy.membership.experiment import membership_experiment
from bastion.attacks.privacy.membership.gap import gap_attack
from bastion.attacks.privacy.membership.lira import LiRAConfig, lira_offline, lira_online
from bastion.attacks.privacy.membership.rmia import RMIAConfig, rmia
from bastion.attacks.privacy.membership.shokri import ShokriConfig, shokri
from bastion.attacks.privacy.membership.signals import AUGMENTATIONS, SignalMatrix, compute_signals
from bastion.attacks.privacy.membership.yeom import (
    calibrate_threshold,
    loss_scores,
    threshold_attack,
)
from bastion.core import Classifier, ConfigError, unknown_name
from bastion.data.dataset import Dataset
from bastion.metrics import membership as mm


@dataclass(frozen=True)
class AttackSpec:
    """What an attack needs: shadow models (minimum count), IN models for every candidate
    (a pool containing the candidates), and whether its threat model allows the attacker's
    data to overlap the candidates."""

    min_shadows: int
    needs_in: bool = False
    allows_overlap: bool = True
    description: str = ""


ATTACKS: dict[str, AttackSpec] = {
    "lira": AttackSpec(2, needs_in=True, description="online LiRA (IN and OUT shadows), Carlini et al. 2022"),
    "lira-offline": AttackSpec(1, description="offline LiRA (OUT shadows only, one-sided)"),
    "rmia": AttackSpec(1, description="RMIA offline with reference models, Zarifzadeh et al. 2024"),
    "shokri": AttackSpec(1, allows_overlap=False,
                         description="shadow models + per-class attack models, Shokri et al. 2017"),
    "yeom": AttackSpec(0, description="loss threshold, Yeom et al. 2018"),
    "gap": AttackSpec(0, description="label-only gap attack (correct = member)"),
}
ATTACKER_DATA = ("auto", "pool", "disjoint")


@dataclass
class MIAConfig:
    """Attributes:
        attacks: attack names (see ATTACKS).
        shadows: number of shadow/reference models (64; the LiRA paper used 256).
        attacker_data: 'pool', 'disjoint' or 'auto' ('pool' when an attack needs IN
            models, else 'disjoint').
        eval_size: members and non-members each among the candidates (1000).
        augment: multi-query augmentation of LiRA/RMIA signals ('none').
        lira_variance: 'auto', 'per-example' or 'global'.
        rmia_a: RMIA's offline coefficient a (0.3).
        shadow_epochs, shadow_batch_size, shadow_lr: override the target's recorded recipe.
        method: shadow training path ('auto', 'loop', 'vmap', 'process', or 'ray': shadow
            training and scoring as Ray tasks, `bastion.scale.shadows`).
        pool_size: cap on the attacker's pool (random subset; in 'pool' mode the candidates
            are always kept). None = all available data.
        seed: seeds the candidate draw, the shadow splits and everything else.
        score_batch_size: examples per forward pass when models are queried (1024; on
            CPU each pass is further cut into 128-example chunks).
    """

    attacks: Sequence[str] = ("lira", "lira-offline", "rmia", "yeom", "gap")
    shadows: int = 64
    attacker_data: str = "auto"
    eval_size: int = 1000
    augment: str = "none"
    lira_variance: str = "auto"
    rmia_a: float = 0.3
    shadow_epochs: int | None = None
    shadow_batch_size: int | None = None
    shadow_lr: float | None = None
    method: str = "auto"
    pool_size: int | None = None
    seed: int = 0
    score_batch_size: int = 1024

    def resolve(self) -> str:
        """Validate; return the concrete attacker-data mode."""
        if not self.attacks:
            raise ConfigError("no membership attack selected")
        for a in self.attacks:
            if a not in ATTACKS:
                raise unknown_name("membership attack", a, ATTACKS)
        if self.attacker_data not in ATTACKER_DATA:
            raise unknown_name("attacker-data mode", self.attacker_data, ATTACKER_DATA)
        if self.augment not in AUGMENTATIONS:
            raise unknown_name("augmentation", self.augment, AUGMENTATIONS)
        if self.pool_size is not None and self.pool_size < 4:
            raise ConfigError(f"pool_size must be >= 4, got {self.pool_size}")
        if self.score_batch_size < 1:
            raise ConfigError(f"score_batch_size must be >= 1, got {self.score_batch_size}")
        if self.eval_size < 1:
            raise ConfigError(f"eval_size must be >= 1, got {self.eval_size}")
        specs = [ATTACKS[a] for a in self.attacks]
        mode = self.attacker_data
        if mode == "auto":
            mode = "pool" if any(s.needs_in for s in specs) else "disjoint"
        for a, s in zip(self.attacks, specs, strict=True):
            if s.needs_in and mode == "disjoint":
                raise ConfigError(f"{a} needs shadow models trained WITH each candidate, so the attacker's "
                                  "data must contain the candidates: use --attacker-data pool, or an "
                                  "offline attack (lira-offline, rmia)")
            if not s.allows_overlap and mode == "pool":
                raise ConfigError(f"{a}'s threat model forbids attacker data that overlaps the target's "
                                  "candidates: use --attacker-data disjoint (run it separately from lira)")
        need = max(s.min_shadows for s in specs)
        if need and self.shadows < need:
            raise ConfigError(f"{', '.join(a for a in self.attacks if ATTACKS[a].min_shadows)} need(s) at least "
                              f"{need} shadow model(s), got --shadows {self.shadows}")
        if "lira" in self.attacks and self.shadows % 2:
            raise ConfigError(f"online LiRA needs an even number of shadows (IN/OUT pairs), got {self.shadows}")
        if "lira" in self.attacks and self.lira_variance == "per-example" and self.shadows < 4:
            raise ConfigError("per-example LiRA variance needs >= 4 shadows (2 IN and 2 OUT per example); "
                              "use --variance global")
        if mode == "disjoint" and self.lira_variance == "per-example" and self.shadows < 2:
            raise ConfigError("per-example variance needs >= 2 reference models")
        return mode


@dataclass
class MembershipReport:
    """Per-attack scores and metrics on the candidates, plus the threat model used."""

    results: dict[str, dict[str, Any]]
    scores: dict[str, torch.Tensor]
    labels: torch.Tensor
    classes: torch.Tensor
    target_correct: torch.Tensor
    threat_model: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"results": self.results, "threat_model": self.threat_model, "timings": self.timings}

    def figure(self, title: str = "Membership inference ROC (log-log)") -> Any:
        from bastion.audit.plots import roc_figure

        return roc_figure({a: (s, self.labels) for a, s in self.scores.items()}, title=title)


def _draw(n: int, k: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    perm = torch.randperm(n, generator=g)
    return perm[:k].sort().values, perm[k:].sort().values


def shared_examples(a: torch.Tensor, b: torch.Tensor) -> int:
    """How many rows of `a` also occur (bit-identical) in `b`."""
    seen = {r.tobytes() for r in b.detach().cpu().contiguous().flatten(1).numpy()}
    return sum(r.tobytes() in seen for r in a.detach().cpu().contiguous().flatten(1).numpy())


def _signals_cached(models: Sequence[Classifier], x: torch.Tensor, y: torch.Tensor, member: torch.Tensor,
                    augment: str, cache: Path | None, tag: str, batch_size: int = 1024,
                    engine: str = "local") -> SignalMatrix:
    if engine == "ray":  # one Ray task per group of models (bastion.scale.shadows)
        from bastion.scale.shadows import compute_signals_ray as compute
    else:
        compute = compute_signals
    if cache is None:
        return compute(models, x, y, member, augment=augment, batch_size=batch_size)
    from bastion.training.shadow import fingerprint
    key = hashlib.sha256(f"{fingerprint(x, y)}|{len(models)}|{augment}|{tag}".encode()).hexdigest()[:16]
    path = cache / f"signals-{key}.safetensors"
    if path.exists():
        try:
            sig = SignalMatrix.load(path)
            ok = (sig.m == len(models) and tuple(sig.phi.shape[:1]) == (len(x),)
                  and torch.equal(sig.member, member.bool()))
        except Exception as e:  # truncated file: safetensors raises its own error type
            from bastion.training.shadow import warn
            warn(f"cached membership signals {path} are corrupt or truncated "
                 f"({type(e).__name__}); recomputing them")
            ok = False
        if ok:
            return sig
    sig = compute(models, x, y, member, augment=augment, batch_size=batch_size)
    sig.save(path)
    return sig


def _architecture_known(target: Classifier, build_fn: Callable[[], Any] | None) -> bool:
    """Whether shadow models can be built like `target` (see ShadowConfig.like)."""
    return build_fn is not None or "arch" in target.meta or bool(target.meta.get("entry_point"))


def _mean_loss(target: Classifier, data: Dataset, batch_size: int) -> float:
    """The target's mean cross-entropy over a data set (its average training loss when
    `data` is its training set)."""
    import torch.nn.functional as F

    tot = 0.0
    for i in range(0, len(data), batch_size):
        logits = target.logits(data.x[i:i + batch_size], batch_size).cpu()
        tot += float(F.cross_entropy(logits, data.y[i:i + batch_size], reduction="sum"))
    return tot / max(len(data), 1)


def audit_membership(target: Classifier, members: Dataset, nonmembers: Dataset, cfg: MIAConfig = MIAConfig(),
                     cache_dir: str | Path | None = None, training_loss: float | None = None,
                     progress: bool | None = None,
                     log: Callable[[str], None] | None = None,
                     build_fn: Callable[[], torch.nn.Module] | None = None,
                     train_fn: Callable[..., Any] | None = None) -> MembershipReport:
    """Run the configured attacks against `target` (trained on `members`, not on
    `nonmembers`). All inputs are validated before any shadow model is trained.

    Args:
        target: the audited classifier.
        members, nonmembers: ground truth; candidates are `cfg.eval_size` of each.
        cfg: attacks, shadow count, threat model, see `MIAConfig`.
        cache_dir: shadow models + signals are cached here (resumable); None = no cache.
        training_loss: the target's average training loss (Yeom's threshold); None = from
            the checkpoint's training history, else calibrated on shadow models.
        progress: progress bars (None = on a terminal only).
        log: callback for one-line status messages.
        build_fn: returns a fresh model of the target's architecture (an nn.Module taking
            normalised inputs, like `target.module`) for shadow models; default: the
            target's zoo architecture or entry point, or `target.shadow_build_fn` if set.
        train_fn: `train_fn(model, x, y) -> model`, the user's own training of one shadow
            (default: `target.shadow_train_fn` if set, else Bastion's Adam/SGD recipe).
    """
    from bastion.training.shadow import ShadowConfig, train_shadows

    mode = cfg.resolve()
    say = log or (lambda s: None)
    build_fn = build_fn if build_fn is not None else getattr(target, "shadow_build_fn", None)
    train_fn = train_fn if train_fn is not None else getattr(target, "shadow_train_fn", None)
    if tuple(members.input_shape) != target.spec.shape or tuple(nonmembers.input_shape) != target.spec.shape:
        raise ConfigError(f"data shape {members.input_shape} does not match the target's {target.spec.shape}")
    k = min(cfg.eval_size, len(members), len(nonmembers))
    g = torch.Generator().manual_seed(cfg.seed)
    mi, m_rest = _draw(len(members), k, g)
    ni, n_rest = _draw(len(nonmembers), k, g)
    cand_x = torch.cat([members.x[mi], nonmembers.x[ni]])
    cand_y = torch.cat([members.y[mi], nonmembers.y[ni]])
    truth = torch.cat([torch.ones(k, dtype=torch.bool), torch.zeros(k, dtype=torch.bool)])
    if mode == "pool":
        pool_x = torch.cat([cand_x, members.x[m_rest], nonmembers.x[n_rest]])
        pool_y = torch.cat([cand_y, members.y[m_rest], nonmembers.y[n_rest]])
    else:
        pool_x = torch.cat([members.x[m_rest], nonmembers.x[n_rest]])
        pool_y = torch.cat([members.y[m_rest], nonmembers.y[n_rest]])
    if cfg.pool_size is not None and len(pool_x) > cfg.pool_size:
        if mode == "pool":
            if cfg.pool_size < 2 * k:
                raise ConfigError(f"pool_size {cfg.pool_size} is smaller than the {2 * k} candidates it must "
                                  "contain in 'pool' mode; raise it or lower eval_size")
            extra = 2 * k + torch.randperm(len(pool_x) - 2 * k, generator=g)[:cfg.pool_size - 2 * k]
            keep = torch.cat([torch.arange(2 * k), extra])
        else:
            keep = torch.randperm(len(pool_x), generator=g)[:cfg.pool_size]
        pool_x, pool_y = pool_x[keep], pool_y[keep]
    if mode == "disjoint":
        dup = shared_examples(cand_x, pool_x)
        if dup:
            raise ConfigError(f"{dup} candidate example(s) also occur in the attacker's data although the "
                              "threat model ('disjoint') forbids overlap (duplicates in the data set?)")
    n_shadows = cfg.shadows if any(ATTACKS[a].min_shadows for a in cfg.attacks) else 0
    if training_loss is None:
        hist = target.meta.get("history") or []
        if hist and "loss" in hist[-1]:
            training_loss = float(hist[-1]["loss"])
    yeom_source = "target's average training loss (checkpoint history)"
    if "yeom" in cfg.attacks and training_loss is None and n_shadows == 0:
        if _architecture_known(target, build_fn) and cfg.shadows > 0:
            n_shadows = max(cfg.shadows, 2)
        else:  # no architecture to build shadows from: the target's own loss on its training set
            training_loss = _mean_loss(target, members, cfg.score_batch_size)
            yeom_source = "target's mean loss on its training set (members)"
    if n_shadows and len(pool_x) < 4:
        raise ConfigError(f"the attacker's pool has only {len(pool_x)} examples; lower eval_size")
    overrides = {k2: v for k2, v in (("epochs", cfg.shadow_epochs), ("batch_size", cfg.shadow_batch_size),
                                     ("lr", cfg.shadow_lr)) if v is not None}
    scfg = None
    if n_shadows:  # the shadow recipe (and a target of unknown architecture) is checked before any work
        if build_fn is not None:
            overrides["build_fn"] = build_fn
        if train_fn is not None:
            overrides["train_fn"] = train_fn
        scfg = ShadowConfig.like(target, seed=cfg.seed, method=cfg.method, **overrides)
        scfg.validate()
    threat = {"attacker_data": mode, "candidates": {"members": k, "nonmembers": k},
              "pool_size": len(pool_x) if n_shadows else 0, "shadows": n_shadows,
              "pool_contains_candidates": mode == "pool", "augment": cfg.augment,
              "yeom_threshold_source": None}
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    target_sig = compute_signals([target], cand_x, cand_y, truth[:, None], augment=cfg.augment,
                                 batch_size=cfg.score_batch_size)
    timings["target_signals_s"] = time.perf_counter() - t0

    shadow_cand: SignalMatrix | None = None
    shadow_pool: SignalMatrix | None = None
    if scfg is not None:
        cache = Path(cache_dir) / mode if cache_dir is not None else None
        say(f"shadow models: {n_shadows} x {scfg.describe()} on {len(pool_x)} pool examples ({mode}); "
            f"{scfg.epochs} epochs each" + (f"; cache {cache}" if cache else ""))
        t0 = time.perf_counter()
        sh = train_shadows(pool_x, pool_y, n_shadows, scfg, cache_dir=cache, num_classes=target.num_classes,
                           device=target.device, progress=progress)
        timings["shadow_training_s"] = time.perf_counter() - t0
        threat["shadow_training"] = {"trained": sh.trained, "loaded_from_cache": sh.loaded, "method": sh.method,
                                     "method_requested": scfg.method,
                                     "threads": torch.get_num_threads(), "recipe": scfg.recipe()}
        say(f"shadow models ready: {sh.trained} trained, {sh.loaded} loaded ({sh.method})")
        t0 = time.perf_counter()
        engine = "ray" if cfg.method == "ray" else "local"
        shadow_pool = _signals_cached(sh.models, pool_x, pool_y, sh.member, cfg.augment, cache, "pool",
                                      cfg.score_batch_size, engine)
        if mode == "pool":
            shadow_cand = shadow_pool.samples(slice(0, 2 * k))
        else:
            shadow_cand = _signals_cached(sh.models, cand_x, cand_y, torch.zeros(2 * k, len(sh.models), dtype=torch.bool),
                                          cfg.augment, cache, "candidates", cfg.score_batch_size, engine)
        timings["shadow_scoring_s"] = time.perf_counter() - t0

    results: dict[str, dict[str, Any]] = {}
    scores: dict[str, torch.Tensor] = {}
    lcfg = LiRAConfig(variance=cfg.lira_variance)
    for a in cfg.attacks:
        t0 = time.perf_counter()
        extra: dict[str, Any] = {}
        if a == "lira":
            s = lira_online(target_sig, shadow_cand, lcfg)  # type: ignore[arg-type]
        elif a == "lira-offline":
            s = lira_offline(target_sig, shadow_cand, lcfg)  # type: ignore[arg-type]
        elif a == "rmia":
            s = rmia(target_sig, shadow_cand, RMIAConfig(offline_a=cfg.rmia_a, seed=cfg.seed))  # type: ignore[arg-type]
        elif a == "shokri":
            s = shokri(target_sig, shadow_pool, ShokriConfig(seed=cfg.seed))  # type: ignore[arg-type]
        elif a == "yeom":
            s = loss_scores(target_sig)
            if training_loss is not None:
                tau, src = training_loss, yeom_source
            else:
                tau, src = calibrate_threshold(shadow_pool, "train-loss"), "shadow models' mean IN loss"  # type: ignore[arg-type]
            threat["yeom_threshold_source"] = src
            dec = threshold_attack(target_sig, tau)
            extra["threshold"] = tau
            extra["decisions"] = mm.decision_metrics(dec, truth)
            extra["experiment"] = membership_experiment(dec[truth].float(), dec[~truth].float(),
                                                        seed=cfg.seed).to_dict()
        else:
            s = gap_attack(target_sig)
            extra["decisions"] = mm.decision_metrics(s > 0.5, truth)
        scores[a] = s
        res = mm.summary(s, truth)
        res.update(extra)
        res["time_s"] = time.perf_counter() - t0
        res["slices"] = {"correct": _maybe(s, truth, target_sig.correct[:, 0]),
                         "incorrect": _maybe(s, truth, ~target_sig.correct[:, 0])}
        results[a] = res
    return MembershipReport(results, scores, truth, cand_y, target_sig.correct[:, 0], threat, timings)


def _maybe(s: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor) -> dict[str, float] | None:
    sub = truth[mask]
    if not bool(sub.any()) or bool(sub.all()):
        return None
    return mm.summary(s[mask], sub)


def config_dict(cfg: MIAConfig) -> dict[str, Any]:
    d = asdict(cfg)
    d["attacks"] = list(cfg.attacks)
    return d
