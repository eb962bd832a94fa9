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

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from bastion.audit.sections import (
    AuditContext,
    ReportFigure,
    ReportTable,
    SectionOutput,
    fig_to_png,
    register_section,
)
from bastion.core import ConfigError

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

    try:
        spec = MembershipSpec.model_validate(cfg)
    except ValidationError as e:
        lines = [f"  {'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()]
        raise ConfigError("invalid membership section:\n" + "\n".join(lines)) from None
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
    from bastion.metrics import membership as mm

    spec, mia = _mia_config(cfg, ctx.seed, ctx.batch_size)
    mode = mia.resolve()
    key = (f"membership/{','.join(spec.attacks)}/{spec.shadows}/{mode}/{spec.eval_size}/{spec.augment}/"
           f"{spec.variance}/{spec.shadow_epochs}/{spec.pool_size}/{spec.method}/seed={ctx.seed}")

    def work() -> dict[str, Any]:
        rep = audit_membership(ctx.model, ctx.train, ctx.test, mia, cache_dir=ctx.out_dir / "shadows")
        ctx.save_tensors(key, {**{f"score:{a}": s for a, s in rep.scores.items()}, "labels": rep.labels})
        return rep.to_dict()

    res = ctx.step(key, work)
    out = SectionOutput(name=spec.name or "membership", kind="membership")
    cols = ["attack", "auc", "advantage", "balanced_accuracy", "tpr@0.1%fpr", "tpr@1%fpr", "time_s"]
    rows = [[a, *[r.get(c) for c in cols[1:]]] for a, r in res["results"].items()]
    out.tables.append(ReportTable("Membership inference (low-FPR)", cols, rows))
    out.summary = {"threat_model": res["threat_model"],
                   **{f"{a}_tpr@1%fpr": r["tpr@1%fpr"] for a, r in res["results"].items()},
                   **{f"{a}_auc": r["auc"] for a, r in res["results"].items()}}
    t = ctx.load_tensors(key)
    if t is not None:
        labels = t["labels"].bool()
        curves = {a: (t[f"score:{a}"], labels) for a in res["results"] if f"score:{a}" in t}
        if curves and bool(labels.any()) and not bool(labels.all()):
            out.figures.append(ReportFigure("Membership inference ROC (log-log)", fig_to_png(mm.plot_roc(curves)),
                                            "Curves far above the dashed diagonal at low FPR mean confidently "
                                            "identified training members."))
    return out


__all__ = ["run_membership_section"]
