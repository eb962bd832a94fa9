"""The `dp` audit section: the privacy record of a DP-SGD checkpoint.

    - kind: dp
      accountants: true      # also recompute epsilon under every accountant from the
                             # recorded schedule (q, sigma, steps) at `delta`
      delta: null            # default: the delta recorded in the checkpoint

Reports the recorded mechanism, variant, noise multiplier, clipping bound, sampling rate,
steps and the epsilon spent under every accountant; a model trained without DP is reported
as such (epsilon = infinity), which is itself an audit finding.
"""

from __future__ import annotations

from typing import Any

from bastion.audit.sections import AuditContext, ReportTable, SectionOutput, register_section
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
    from bastion.privacy.accountants import LABELS, PrivacyLedger, check_delta

    _validate(cfg)
    name = cfg.get("name") or "dp"
    rec = ctx.meta.get("privacy")
    if not rec:
        return SectionOutput(name, "dp", summary={"private": False, "epsilon": None,
                                                  "note": "the checkpoint was trained without "
                                                          "differential privacy (no privacy record)"})
    summary: dict[str, Any] = {"private": True, **{k: rec.get(k) for k in _KEYS if k in rec}}
    eps = dict(rec.get("epsilon") or {})
    summary["epsilon"] = eps
    params = ReportTable("DP-SGD parameters", ["parameter", "value"],
                         [[k, rec.get(k)] for k in _KEYS if k in rec])
    rows = [[k, LABELS.get(k, k), v] for k, v in eps.items()]
    tables = [params]
    if cfg.get("accountants", False):
        delta = check_delta(float(cfg.get("delta") or rec.get("delta") or 1e-5))
        sched = rec.get("schedule")
        if sched is None and rec.get("sample_rate") and rec.get("steps"):
            lo, hi = (rec.get("sigma_range") or [rec["sigma"], rec["sigma"]])
            if lo != hi:
                raise ConfigError("dp section: the checkpoint has a dynamic sigma without its "
                                  "schedule; use the recorded epsilons")
            sched = [[rec["sample_rate"], rec["sigma"], rec["steps"]]]
        ledger = PrivacyLedger()
        for q, s, n in sched or []:
            ledger.step(q, s, int(n))
        again = ledger.epsilons(delta)
        summary["epsilon_recomputed"] = {"delta": delta, **again}
        rows = [[k, LABELS[k], eps.get(k), again[k]] for k in again]
        tables.append(ReportTable(f"epsilon per accountant (recomputed at delta={delta:g})",
                                  ["accountant", "name", "recorded", "recomputed"], rows))
    else:
        tables.append(ReportTable("epsilon per accountant (recorded)",
                                  ["accountant", "name", "epsilon"], rows))
    return SectionOutput(name, "dp", summary=summary, tables=tables)
