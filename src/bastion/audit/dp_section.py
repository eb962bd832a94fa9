"""The `dp` audit section: the privacy record of a DP-SGD checkpoint.

    - kind: dp
      accountants: true      # also recompute epsilon under every accountant from the
                             # recorded schedule (q, sigma, steps) at `delta`
      delta: null            # default: the delta recorded in the checkpoint

Reports the DP statement (data set size, sampling rate, noise, steps, adjacency, delta and
the headline epsilon: the tightest guarantee), the recorded parameters, whether the noise
was secure or seeded, and epsilon under every accountant, each labelled a guarantee or a
reference formula; a model trained without DP is reported as such (epsilon = infinity),
which is itself an audit finding.
"""

from __future__ import annotations

from typing import Any

from bastion.audit.scorecard import FAIL, PASS, WARN, at_most, not_measured, thresholds_of
from bastion.audit.sections import (
    AuditContext,
    ReportTable,
    ScoreRow,
    SectionOutput,
    register_section,
)
from bastion.core import ConfigError

_KEYS = ("mechanism", "variant", "sigma", "clip", "delta", "decay", "per_layer", "batch_size",
         "sample_rate", "steps", "planned_steps", "stop_reason", "target_epsilon", "budget_accountant",
         "sigma_range")


def _validate(cfg: dict[str, Any]) -> None:
    """Checked by the runner for every section before any work starts."""
    from bastion.privacy.accountants import check_delta

    unknown = set(cfg) - {"kind", "name", "accountants", "delta"}
    if unknown:
        raise ConfigError(f"dp section: unknown option(s) {sorted(unknown)}; valid: accountants, delta")
    if cfg.get("delta") is not None:
        d = cfg["delta"]
        if isinstance(d, bool) or not isinstance(d, (int, float)):
            raise ConfigError(f"dp section: delta must be a number in (0, 1), got {d!r}")
        check_delta(float(d))
    if not isinstance(cfg.get("accountants", False), bool):
        raise ConfigError(f"dp section: accountants must be true or false, got {cfg['accountants']!r}")


@register_section("dp", validate=_validate)
def dp_section(ctx: AuditContext, cfg: dict[str, Any]) -> SectionOutput:
    from bastion.privacy.accountants import check_delta
    from bastion.privacy.statement import TABLE_COLUMNS, dp_statement, figure_rows, record_summary

    _validate(cfg)
    name = cfg.get("name") or "dp"
    rec = ctx.meta.get("privacy")
    th = thresholds_of(ctx)
    if not rec:
        out = SectionOutput(name, "dp", summary={"private": False, "epsilon": None,
                                                 "note": "the checkpoint was trained without "
                                                         "differential privacy (no privacy record)"})
        out.scorecard.append(not_measured("dp", "epsilon", "no DP guarantee claimed: the checkpoint was "
                                          "trained without differential privacy", section=name,
                                          higher_is_better=False, unit="eps", threshold=th.dp_epsilon))
        _explain(out)
        return out
    summary: dict[str, Any] = {"private": True, **{k: rec.get(k) for k in _KEYS if k in rec}}
    summary["noise"] = rec.get("noise", "unknown (recorded before noise labelling)")
    recorded = record_summary(rec)
    summary["epsilon"] = ({k: v.get("epsilon") for k, v in recorded["accountants"].items()}
                          if recorded else dict(rec.get("epsilon") or {}))
    summary["headline"] = recorded["headline"] if recorded else None
    summary["accountants"] = recorded["accountants"] if recorded else None
    summary["statement"] = dp_statement(rec)
    params = ReportTable("DP-SGD parameters", ["parameter", "value"],
                         [[k, rec.get(k)] for k in _KEYS if k in rec] + [["noise", summary["noise"]]])
    tables = [ReportTable("DP statement", ["statement"], [[line] for line in summary["statement"]]),
              params]
    if cfg.get("accountants", False):
        delta = check_delta(float(cfg.get("delta") or rec.get("delta") or 1e-5))
        lo, hi = rec.get("sigma_range") or [rec.get("sigma"), rec.get("sigma")]
        if not rec.get("schedule") and lo != hi:
            raise ConfigError("dp section: the checkpoint has a dynamic sigma without its "
                              "schedule; use the recorded epsilons")
        again = record_summary({**rec, "accountants": None}, delta)
        if again is None:
            raise ConfigError("dp section: the checkpoint's privacy record has no schedule "
                              "(sample_rate, sigma, steps) to recompute epsilon from")
        summary["epsilon_recomputed"] = {"delta": delta, "headline": again["headline"],
                                         **{k: v["epsilon"] for k, v in again["accountants"].items()}}
        tables.append(ReportTable(f"epsilon per accountant (recomputed at delta={delta:g}; "
                                  "* = headline, the tightest guarantee)",
                                  TABLE_COLUMNS, figure_rows(again)))
    elif recorded is not None:
        tables.append(ReportTable("epsilon per accountant (recorded; * = headline, the tightest "
                                  "guarantee)", TABLE_COLUMNS, figure_rows(recorded)))
    out = SectionOutput(name, "dp", summary=summary, tables=tables)
    _score(out, th, rec, summary, name)
    _explain(out)
    return out


def _explain(out: SectionOutput) -> None:
    out.threat_model = (
        "Any attacker, with any side knowledge and unlimited computation, who sees the trained "
        "model (and every intermediate checkpoint) and tries to learn whether one example was in "
        "the training data: DP bounds what such an attacker can gain.")
    out.advice = (
        "Epsilon is the privacy loss the training guarantees at the stated delta: smaller is "
        "stronger (Ponomareva et al. 2023: <= 1 strong, <= 10 reasonable, above weak). To lower "
        "it, train with more noise (--sigma), fewer steps, a smaller sampling rate or more data "
        "(`bastion train --dp --sigma ... --target-eps ...`).")


def _score(out: SectionOutput, th: Any, rec: dict[str, Any], summary: dict[str, Any], name: str) -> None:
    """The tightest guarantee's epsilon (recomputed at the section's delta when asked) against
    the thresholds: fail above `dp_epsilon`, warn above `dp_epsilon_warn`."""
    again = summary.get("epsilon_recomputed")
    head = {"epsilon": again.get("headline", {}).get("epsilon"),
            "accountant": again.get("headline", {}).get("accountant"),
            "delta": again["delta"]} if again else {**(summary.get("headline") or {}), "delta": rec.get("delta")}
    eps, delta = head.get("epsilon"), head.get("delta")
    metric = f"epsilon at delta {delta:g}" if isinstance(delta, (int, float)) else "epsilon"
    if eps is None:
        out.scorecard.append(not_measured("dp", metric, "DP is claimed but no guarantee can be stated from "
                                          "the recorded schedule", section=name, higher_is_better=False,
                                          unit="eps", threshold=th.dp_epsilon))
        out.notes.append("The checkpoint claims DP but its privacy record has no complete schedule.")
        return
    eps = float(eps)
    verdict = at_most(eps, th.dp_epsilon, th.dp_epsilon_warn, inclusive=False)
    acc = head.get("accountant") or "?"
    meaning = {
        PASS: f"Strong guarantee: epsilon {eps:.3g} ({acc}) bounds any membership attacker's advantage tightly.",
        WARN: f"Moderate guarantee: epsilon {eps:.3g} ({acc}) is above {th.dp_epsilon_warn:g}; it limits "
              "but does not rule out membership inference.",
        FAIL: f"Weak guarantee: epsilon {eps:.3g} ({acc}) exceeds {th.dp_epsilon:g}; treat the model as "
              "not meaningfully private.",
    }[verdict]
    out.scorecard.append(ScoreRow(threat="dp", metric=metric, value=eps, verdict=verdict, meaning=meaning,
                                  threshold=th.dp_epsilon, higher_is_better=False, unit="eps", section=name,
                                  note=f"tightest guarantee: {acc}"))
    if rec.get("poisson") is False:
        out.notes.append("Training used shuffled fixed-size batches; epsilon assumes Poisson sampling.")
    if rec.get("variant") in ("l2-max", "dyn-s", "dyn-s-sigma"):
        out.notes.append(f"Variant {rec.get('variant')} sets its sensitivity from the batch: the epsilon is "
                         "not a worst-case DP proof.")
    if str(rec.get("noise", "")).startswith("seeded"):
        out.notes.append("The noise was seeded (reproducible): the guarantee does not hold against "
                         "anyone who knows the seed.")
