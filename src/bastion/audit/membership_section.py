"""The `membership` audit section: membership-inference attacks against the audited model.

    - kind: membership
      attacks: [lira, lira-offline, rmia, yeom, gap]
      shadows: 16                 # shadow / reference models (cached under the run folder)
      attacker_data: auto         # pool | disjoint | auto (see bastion.attacks.privacy.membership.runner)
      eval_size: 500              # members and non-members each among the candidates
      augment: none               # none | flip | shift | flip+shift
      variance: auto              # LiRA: auto | per-example | global
      shadow_epochs: null         # default: the target's recorded epochs
      method: auto                # shadow training path: auto | auto-timed | loop | vmap | process
      pool_size: null             # cap on the attacker's pool (random subset)

Members are the audit's train split (the model must have been trained on it) and
non-members its test split. Shadow models are cached in `<run>/shadows/` (resumable) and
the whole result is one resumable step. Output: the low-FPR table (AUC, advantage,
balanced accuracy, TPR at 0.1% and 1% FPR per attack) and a log-log ROC figure.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from bastion.audit import plots
from bastion.audit.scorecard import FAIL, PASS, WARN, above_chance, not_measured, thresholds_of
from bastion.audit.sections import (
    AuditContext,
    ReportFigure,
    ReportTable,
    ScoreRow,
    SectionOutput,
    fig_to_png,
    register_section,
)
from bastion.params import validated

SHADOW_METHODS = ("auto", "auto-timed", "loop", "vmap", "process")
MAX_SHADOWS = 1024


class MembershipSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: str = "membership"
    name: str | None = None
    attacks: list[str] = Field(default_factory=lambda: ["lira", "lira-offline", "rmia", "yeom", "gap"])
    shadows: int = Field(16, ge=0, le=MAX_SHADOWS, strict=True)
    attacker_data: str = "auto"
    eval_size: int = Field(500, ge=1, le=1_000_000, strict=True)
    augment: str = "none"
    variance: str = "auto"
    shadow_epochs: int | None = Field(None, ge=1, le=10_000, strict=True)
    method: str = "auto"
    pool_size: int | None = Field(None, ge=4, le=10_000_000, strict=True)

    @field_validator("variance")
    @classmethod
    def _variance(cls, v: str) -> str:
        from bastion.attacks.privacy.membership.lira import VARIANCES

        if v not in VARIANCES:
            raise ValueError(f"variance must be one of {', '.join(VARIANCES)}, got {v!r}")
        return v

    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        if v not in SHADOW_METHODS:
            raise ValueError(f"method must be one of {', '.join(SHADOW_METHODS)}, got {v!r}")
        return v


def _mia_config(cfg: dict[str, Any], seed: int = 0, batch_size: int = 1024) -> tuple[MembershipSpec, Any]:
    from bastion.attacks.privacy.membership import MIAConfig

    spec = validated(MembershipSpec, cfg, "membership section")
    mia = MIAConfig(attacks=tuple(spec.attacks), shadows=spec.shadows, attacker_data=spec.attacker_data,
                    eval_size=spec.eval_size, augment=spec.augment, lira_variance=spec.variance,
                    shadow_epochs=spec.shadow_epochs, method=spec.method, pool_size=spec.pool_size,
                    seed=seed, score_batch_size=batch_size)
    return spec, mia


def validate_membership(cfg: dict[str, Any]) -> None:
    """Check names and shadow counts before any section of the audit runs."""
    _mia_config(cfg)[1].resolve()


@register_section("membership", validate=validate_membership)
def run_membership_section(ctx: AuditContext, cfg: dict[str, Any]) -> SectionOutput:
    from bastion.attacks.privacy.membership import audit_membership

    spec, mia = _mia_config(cfg, ctx.seed, ctx.batch_size)
    mode = mia.resolve()
    key = (f"membership/{','.join(spec.attacks)}/{spec.shadows}/{mode}/{spec.eval_size}/{spec.augment}/"
           f"{spec.variance}/{spec.shadow_epochs}/{spec.pool_size}/{spec.method}/seed={ctx.seed}")

    def work() -> dict[str, Any]:
        rep = audit_membership(ctx.model, ctx.train, ctx.test, mia, cache_dir=ctx.out_dir / "shadows")
        ctx.save_tensors(key, {**{f"score:{a}": s for a, s in rep.scores.items()}, "labels": rep.labels})
        return rep.to_dict()

    res = ctx.step(key, work)
    name = spec.name or "membership"
    th = thresholds_of(ctx)
    out = SectionOutput(name=name, kind="membership")
    results = res["results"]
    shadows = int(res["threat_model"].get("shadows") or 0)
    k = int(res["threat_model"]["candidates"]["nonmembers"])
    if k < spec.eval_size:
        out.notes.append(
            f"eval_size {spec.eval_size} was capped to {k} members and {k} non-members: the non-members "
            f"come from the audit's {len(ctx.test)} selected test examples (data.n) and the members from "
            f"the {len(ctx.train)} training examples; raise data.n for tighter figures.")
    few_shadows = {a for a in results if a in LIRA and shadows < th.lira_min_shadows}
    for a in sorted(few_shadows):
        out.notes.append(f"{a}: not estimable with {shadows} shadow model(s) (needs >= {th.lira_min_shadows}); "
                         "its Gaussian fits are unreliable, so its figures are left out. Raise shadows.")
    cols = ["attack", "auc", "advantage", "balanced_accuracy", "tpr@0.1%fpr", "tpr@1%fpr", "time_s"]
    unsupported = not_estimable(results, shadows, k, th.lira_min_shadows)
    rows = [[a] + [unsupported[a].get(c, r.get(c)) for c in cols[1:]] for a, r in results.items()]
    out.tables.append(ReportTable(
        "Membership inference (low-FPR)", cols, rows,
        f"{k} members and {k} non-members; TPR at an FPR needs at least 1/FPR non-members to be "
        "estimable; chance is TPR = FPR and AUC = 0.5."))
    tpr_ok = k >= MIN_NONMEMBERS["tpr@1%fpr"]
    out.summary = {"threat_model": res["threat_model"],
                   **{f"{a}_tpr@1%fpr": r["tpr@1%fpr"] if tpr_ok and a not in few_shadows else None
                      for a, r in results.items()},
                   **{f"{a}_auc": None if a in few_shadows else r["auc"] for a, r in results.items()},
                   "not_estimable": {a: [c for c, v in zip(cols, row, strict=True)
                                         if isinstance(v, str) and v.startswith("not estimable")]
                                     for a, row in zip(results, rows, strict=True)}}
    usable = {a: r for a, r in results.items() if a not in few_shadows}
    _score(out, th, usable, k, name, spec.attacks)
    t = ctx.load_tensors(key)
    if t is not None:
        labels = t["labels"].bool()
        _per_record(ctx, out, t, labels, usable, k, mia.seed, name)
        curves = {a: (t[f"score:{a}"], labels) for a in results if f"score:{a}" in t}
        if curves and bool(labels.any()) and not bool(labels.all()):
            out.figures.append(ReportFigure("Membership inference ROC (log-log)", fig_to_png(plots.roc_figure(curves)),
                                            "Curves far above the dashed diagonal at low FPR mean confidently "
                                            "identified training members."))
    return out


LIRA = ("lira", "lira-offline")
MIN_NONMEMBERS = {"tpr@0.1%fpr": 1000, "tpr@1%fpr": 100}
EXPOSED = 10


def not_estimable_text(needs: str) -> str:
    return f"not estimable (needs >= {needs})"


FIGURES = ("auc", "advantage", "balanced_accuracy", "tpr@0.1%fpr", "tpr@1%fpr")


def not_estimable(results: dict[str, dict[str, Any]], shadows: int, nonmembers: int,
                  min_shadows: int = 16) -> dict[str, dict[str, str]]:
    """Per attack, the figures a run cannot support, each with the reason: every figure of
    LiRA with fewer shadow models than its Gaussian fits need, and TPR at an FPR below
    1 / (non-members scored)."""
    out: dict[str, dict[str, str]] = {}
    for a in results:
        bad: dict[str, str] = {}
        if a in LIRA and shadows < min_shadows:
            bad = {c: not_estimable_text(f"{min_shadows} shadow models") for c in FIGURES}
        for c, need in MIN_NONMEMBERS.items():
            if nonmembers < need:
                bad.setdefault(c, not_estimable_text(f"{need:,} non-members"))
        out[a] = bad
    return out


def _score(out: SectionOutput, th: Any, usable: dict[str, dict[str, Any]], k: int, name: str,
           attacks: list[str]) -> None:
    from bastion.metrics.stats import auc_interval, wilson_interval

    out.threat_model = (
        "An attacker who can query the model's outputs on a record and holds data from the same "
        "distribution (to train shadow or reference models) decides whether that record was in "
        "the training set.")
    out.advice = (
        "A TPR well above the FPR at low FPR means some training records are confidently "
        "identifiable (Carlini et al. 2022). Train with DP-SGD (`bastion train --dp --sigma ...`), "
        "which bounds every attack's advantage, or reduce overfitting (weight decay, early stopping "
        "with --patience, augmentation, more data); re-audit the most exposed records listed below.")
    metric = "TPR at 1% FPR (best attack)"
    if not usable:
        out.scorecard.append(not_measured("membership", metric, "no attack gave an estimable figure",
                                          section=name, higher_is_better=False,
                                          threshold=th.membership_tpr_at_1fpr))
        return
    if k < MIN_NONMEMBERS["tpr@1%fpr"]:
        out.scorecard.append(not_measured(
            "membership", metric, "TPR at 1% FPR cannot be estimated from this few non-members",
            section=name, note=not_estimable_text(f"{MIN_NONMEMBERS['tpr@1%fpr']:,} non-members") + f", got {k}",
            higher_is_better=False, threshold=th.membership_tpr_at_1fpr))
    else:
        best = max(usable, key=lambda a: usable[a]["tpr@1%fpr"])
        tpr = float(usable[best]["tpr@1%fpr"])
        ci = wilson_interval(round(tpr * k), k)
        verdict = above_chance(tpr, ci, th.membership_tpr_at_1fpr)
        meaning = {
            PASS: f"Membership cannot be inferred much better than chance: at 1% false positives the best "
                  f"attack ({best}) finds {tpr:.1%} of members (chance: 1%).",
            WARN: f"Possible membership leakage: {best} finds {tpr:.1%} of members at 1% false positives "
                  "(chance: 1%), but the interval still allows a near-chance rate.",
            FAIL: f"Training records are identifiable: {best} finds {tpr:.1%} of members at 1% false "
                  f"positives, clearly above chance (1%).",
        }[verdict]
        out.scorecard.append(ScoreRow(threat="membership", metric=f"TPR at 1% FPR (best attack: {best})",
                                      value=tpr, verdict=verdict, meaning=meaning, ci=ci,
                                      threshold=th.membership_tpr_at_1fpr, higher_is_better=False,
                                      section=name))
    best = max(usable, key=lambda a: usable[a]["auc"])
    auc = float(usable[best]["auc"])
    ci = auc_interval(auc, k, k)
    verdict = above_chance(auc, ci, th.membership_auc)
    word = "chance" if ci[0] <= 0.5 <= ci[1] else "above chance" if auc > 0.5 else "below chance"
    out.scorecard.append(ScoreRow(
        threat="membership", metric=f"AUC (best attack: {best})", value=auc, verdict=verdict,
        meaning=f"AUC {auc:.3f} is {word} (0.5 = guessing); AUC averages over all error rates, the "
                "TPR at low FPR is the stricter test.",
        ci=ci, threshold=th.membership_auc, higher_is_better=False, section=name))
    if set(attacks) <= {"yeom", "gap"}:
        out.notes.append("Only threshold attacks ran (yeom, gap); shadow-model attacks (rmia, lira with "
                         ">= 16 shadows) are much stronger at low FPR.")


def _per_record(ctx: AuditContext, out: SectionOutput, t: dict[str, Any], labels: Any,
                usable: dict[str, dict[str, Any]], k: int, seed: int, name: str) -> None:
    """Save each candidate's score (with its index in its split) and list the training
    records the strongest attack finds most exposed."""
    import torch

    from bastion.attacks.privacy.membership.runner import _draw

    g = torch.Generator().manual_seed(seed)
    mi, _ = _draw(len(ctx.train), k, g)
    ni, _ = _draw(len(ctx.test), k, g)
    index = torch.cat([mi, ni])
    scores = {a: t[f"score:{a}"].float() for a in usable if f"score:{a}" in t}
    ctx.save_tensors(f"membership-per-example/{name}",
                     {"index": index, "member": labels.to(torch.uint8), **{f"score:{a}": s for a, s in scores.items()}})
    out.summary["per_example_tensors"] = f"membership-per-example/{name}"
    if not scores:
        return
    best = max(scores, key=lambda a: usable[a]["auc"])
    s = scores[best]
    members = torch.nonzero(labels).flatten()
    order = members[torch.argsort(s[members], descending=True)][:EXPOSED]
    rows = [[int(index[i]), int(ctx.train.y[int(index[i])]), float(s[i])] for i in order]
    out.tables.append(ReportTable(f"Most exposed training records ({best})", ["train index", "label", "score"],
                                  rows, "Members the attack scores highest: the records most at risk."))
    out.notes.append(f"Most exposed training records by {best} (train index): "
                     + ", ".join(str(r[0]) for r in rows) + ".")


__all__ = ["run_membership_section"]
