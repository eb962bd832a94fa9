"""The `backdoor` audit section: scan the audited model for a backdoor.

    - kind: backdoor
      methods: [neural-cleanse, activation-clustering, spectral]   # and/or strip
      n_clean: 300        # clean test inputs for Neural Cleanse / STRIP
      epochs: 20          # Neural Cleanse epochs (of 10 mini-batches)
      eps: 0.1            # spectral signatures: assumed poisoned share of a class
      rounds: 1           # spectral signatures: removal steps (1 = one-shot, as the paper)
      n_train: null       # training inputs analysed by clustering / spectral (null = all)

Each method is one resumable step. The report shows a per-class table per method, the
reversed Neural Cleanse triggers as figures and one scorecard row: the largest anomaly
index of a reversed trigger smaller than the median (Wang et al. 2019), failing above 2
(a class needs an abnormally small trigger: a likely backdoor target) and warning above
1.5. Without Neural Cleanse the row reports whether clustering or spectral signatures
single out a class.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from bastion.audit.scorecard import FAIL, PASS, WARN, at_most, not_measured
from bastion.audit.sections import (
    AuditContext,
    ReportFigure,
    ReportTable,
    ScoreRow,
    SectionOutput,
    register_section,
)
from bastion.core import ConfigError
from bastion.defenses.backdoor.scan import METHODS, ScanSettings, run_scan
from bastion.params import validated

FAIL_AT, WARN_AT = 2.0, 1.5
COLUMNS = {"neural-cleanse": ["class", "l1", "trigger_success", "anomaly", "flagged"],
           "activation-clustering": ["class", "n", "relative_size", "silhouette", "failure_ratio", "flagged"],
           "spectral": ["class", "n", "removed", "score_ratio", "anomaly"],
           "strip": ["class", "n", "mean_entropy", "flag_rate"]}


class BackdoorSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: str = "backdoor"
    name: str | None = None
    methods: list[str] = Field(default_factory=lambda: ["neural-cleanse", "activation-clustering", "spectral"])
    n_clean: int = Field(300, ge=2, le=1_000_000, strict=True)
    epochs: int = Field(20, ge=1, le=100_000, strict=True)
    eps: float = Field(0.1, ge=0, le=1)
    rounds: int = Field(1, ge=1, le=10_000, strict=True)
    frr: float = Field(0.01, ge=0, le=1)
    n_train: int | None = Field(None, ge=2, le=10**8, strict=True)


def _parse(cfg: dict[str, Any]) -> BackdoorSpec:
    spec = validated(BackdoorSpec, cfg, "backdoor section")
    bad = [m for m in spec.methods if m not in METHODS]
    if bad or not spec.methods:
        raise ConfigError(f"invalid backdoor section: methods must be a non-empty list of {', '.join(METHODS)}; "
                          f"got {spec.methods}")
    return spec


def _scan_step(ctx: AuditContext, s: ScanSettings) -> dict[str, Any]:
    res = run_scan(ctx.model, ctx.train, ctx.test, s)
    return {"summary": res["summary"], "per_class": res["per_class"],
            "pngs": {str(k): base64.b64encode(v).decode() for k, v in res["pngs"].items()}}


@register_section("backdoor", validate=lambda cfg: _parse(cfg) and None)
def run_backdoor_section(ctx: AuditContext, cfg: dict[str, Any]) -> SectionOutput:
    spec = _parse(cfg)
    name = spec.name or "backdoor"
    out = SectionOutput(name=name, kind="backdoor")
    results: dict[str, Any] = {}
    for method in spec.methods:
        s = ScanSettings(method=method, n_clean=spec.n_clean, epochs=spec.epochs, eps=spec.eps, rounds=spec.rounds, frr=spec.frr,
                         n_train=spec.n_train, seed=ctx.seed)
        s.validate()
        key = f"backdoor/{name}/{method}/{json.dumps(s.__dict__, sort_keys=True)}"
        res = ctx.step(key, lambda s=s: _scan_step(ctx, s))
        results[method] = res
        summary = {k: v for k, v in res["summary"].items() if k != "flagged_index"}
        out.summary[method] = {**summary, "per_class": res["per_class"]}
        cols = COLUMNS[method]
        sus = res["summary"].get("suspected_target")
        out.tables.append(ReportTable(f"{method}: per-class figures", cols,
                                      [[p.get(c) for c in cols] for p in res["per_class"]],
                                      f"Suspected target: {sus if sus is not None else 'none'}."))
        for k, b64 in res.get("pngs", {}).items():
            out.figures.append(ReportFigure(f"Reversed trigger, class {k}", base64.b64decode(b64),
                                            "Neural Cleanse's smallest mask x pattern that sends clean inputs to "
                                            "this class."))
    out.threat_model = ("An attacker who controlled part of the training data (or the training itself) and "
                        "planted a backdoor: inputs carrying a trigger are sent to a target class while clean "
                        "accuracy is unchanged.")
    out.advice = ("A flagged class has an abnormally small trigger. Repair: fine-tune on clean data stamped with "
                  "the reversed trigger (Neural Cleanse unlearning), prune the neurons it excites, or fine-prune "
                  "(bastion.defenses.backdoor). If the training data is at hand, remove the examples activation "
                  "clustering or spectral signatures flag and retrain.")
    out.scorecard.append(_row(results, name))
    return out


def _row(results: dict[str, Any], name: str) -> ScoreRow:
    metric = "Neural Cleanse anomaly index (max, small triggers)"
    if "neural-cleanse" in results:
        s = results["neural-cleanse"]["summary"]
        l1, anom = s["l1"], s["anomaly"]
        med = sorted(l1)[len(l1) // 2] if len(l1) % 2 else sum(sorted(l1)[len(l1) // 2 - 1: len(l1) // 2 + 1]) / 2
        small = [a for v, a in zip(l1, anom) if v < med]
        value = max(small) if small else 0.0
        verdict = at_most(value, FAIL_AT, WARN_AT, inclusive=False)
        sus = s.get("suspected_target")
        meaning = {PASS: "No class needs an abnormally small trigger: no sign of a backdoor.",
                   WARN: "One class needs a smaller trigger than the rest, below the flagging threshold: inspect "
                         "its reversed trigger.",
                   FAIL: f"Class {sus} needs an abnormally small trigger: the model is likely backdoored with "
                         f"target {sus}."}[verdict]
        return ScoreRow(threat="backdoor", metric=metric, value=float(value), verdict=verdict, meaning=meaning,
                        threshold=FAIL_AT, higher_is_better=False, unit="MAD", section=name)
    for method in ("activation-clustering", "spectral"):
        if method in results:
            sus = results[method]["summary"].get("suspected_target")
            verdict = WARN if sus is not None else PASS
            return ScoreRow(threat="backdoor", metric=f"{method}: class singled out", value=None if sus is None
                            else float(sus), verdict=verdict,
                            meaning=(f"{method} singles out class {sus}: inspect its flagged examples."
                                     if sus is not None else f"{method} singles out no class."),
                            section=name, unit="class")
    return not_measured("backdoor", metric, "STRIP screens inputs at run time; it does not judge the model.",
                        section=name)
