"""The audit's scorecard: one row per threat's headline metric, judged pass / warn / fail
against the config's `thresholds`, and an overall verdict (the worst measured row).

Rules (defaults in `bastion.audit.config.Thresholds`, documented in docs/audit.md):

- higher is better (robust accuracy): pass at or above the threshold, warn within the warn
  band below it, fail further below.
- a rate that should sit at chance (membership TPR at 1% FPR, AUC): fail when the 95%
  interval's lower bound exceeds the threshold (the attack provably beats it), warn when
  only the estimate does, pass otherwise.
- lower is better with two levels (reconstruction SSIM, epsilon): fail at or above the
  fail level, warn at or above the warn level, pass below.

A threat without a measurement (no section, no DP claim, too little data) is "not
measured" and does not enter the overall verdict; with nothing measured the overall
verdict is "not measured" too.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from bastion.audit.config import Thresholds
from bastion.audit.sections import VERDICTS, ScoreRow, SectionOutput
from bastion.core import ConfigError

PASS, WARN, FAIL, NOT_MEASURED = VERDICTS
SEVERITY = {PASS: 0, WARN: 1, FAIL: 2}
FAIL_ON = ("never", "warn", "fail")
# Threats every audit reports on; one without a section is "not measured".
STANDARD_THREATS = ("evasion", "membership", "leakage", "dp")
_MISSING = {
    "evasion": ("robust accuracy", "not audited: add a `kind: evasion` section to measure adversarial robustness"),
    "membership": ("TPR at 1% FPR", "not audited: add a `kind: membership` section to measure "
                                    "membership inference"),
    "leakage": ("reconstruction SSIM", "not audited: add a `kind: leakage` section to measure gradient "
                                       "leakage (relevant when gradients are shared, e.g. federated learning)"),
    "dp": ("epsilon", "no DP guarantee claimed: the model was trained without differential privacy"),
}


def thresholds_of(ctx: Any) -> Thresholds:
    """The context's thresholds, or the defaults."""
    th = getattr(ctx, "thresholds", None)
    return th if isinstance(th, Thresholds) else Thresholds()


def at_least(value: float, threshold: float, warn_band: float) -> str:
    """Higher is better: pass >= threshold, warn >= threshold - warn_band, else fail."""
    if value >= threshold:
        return PASS
    return WARN if value >= threshold - warn_band else FAIL


def above_chance(estimate: float, ci: tuple[float, float] | None, threshold: float) -> str:
    """A rate that should be near chance: fail when the interval's lower bound exceeds
    `threshold`, warn when only the estimate does, else pass."""
    if ci is not None and ci[0] > threshold:
        return FAIL
    return WARN if estimate > threshold else PASS


def at_most(value: float, fail_at: float, warn_at: float, inclusive: bool = True) -> str:
    """Lower is better: fail at (or, with inclusive=False, above) `fail_at`, warn likewise
    at `warn_at`, else pass."""
    def reached(level: float) -> bool:
        return value >= level if inclusive else value > level
    if reached(fail_at):
        return FAIL
    return WARN if reached(warn_at) else PASS


def not_measured(threat: str, metric: str, meaning: str, section: str = "", note: str = "",
                 higher_is_better: bool = True, unit: str = "",
                 threshold: float | None = None) -> ScoreRow:
    return ScoreRow(threat=threat, metric=metric, value=None, verdict=NOT_MEASURED, meaning=meaning,
                    threshold=threshold, higher_is_better=higher_is_better, unit=unit, section=section,
                    note=note)


def worst(verdicts: list[str]) -> str:
    """The overall verdict: the worst measured verdict; "not measured" when none is."""
    measured = [v for v in verdicts if v in SEVERITY]
    return max(measured, key=SEVERITY.__getitem__) if measured else NOT_MEASURED


def collect(outputs: list[SectionOutput]) -> list[ScoreRow]:
    """Every section's rows in run order, then a "not measured" row for each standard
    threat no section covered."""
    rows = [r for o in outputs for r in o.scorecard]
    covered = {r.threat for r in rows} | {o.kind for o in outputs}
    for threat in STANDARD_THREATS:
        if threat not in covered:
            metric, meaning = _MISSING[threat]
            rows.append(not_measured(threat, metric, meaning,
                                     higher_is_better=threat == "evasion",
                                     unit="eps" if threat == "dp" else ""))
    return rows


def row_dict(row: ScoreRow) -> dict[str, Any]:
    d = asdict(row)
    d["ci"] = None if row.ci is None else [float(row.ci[0]), float(row.ci[1])]
    return d


def scorecard_block(outputs: list[SectionOutput]) -> dict[str, Any]:
    """{"scorecard": [...], "verdict": ...}: the first keys of results.json."""
    rows = collect(outputs)
    return {"scorecard": [row_dict(r) for r in rows], "verdict": worst([r.verdict for r in rows])}


def failing(rows: list[dict[str, Any]] | list[ScoreRow], level: str) -> list[dict[str, Any]]:
    """Rows whose verdict is at or worse than `level` ('warn' or 'fail'; 'never': none)."""
    if level not in FAIL_ON:
        raise ConfigError(f"--fail-on must be one of {', '.join(FAIL_ON)}, got {level!r}")
    if level == "never":
        return []
    dicts = [r if isinstance(r, dict) else row_dict(r) for r in rows]
    return [r for r in dicts if SEVERITY.get(r["verdict"], -1) >= SEVERITY[level]]


def format_value(row: dict[str, Any]) -> str:
    """The row's value for a terminal table, with its interval."""
    v = row.get("value")
    if v is None:
        return "-"
    text = f"{v:.3g}" if row.get("unit") else f"{v:.3f}"
    ci = row.get("ci")
    if ci:
        text += f" [{ci[0]:.3f}, {ci[1]:.3f}]"
    return text


def format_threshold(row: dict[str, Any]) -> str:
    t = row.get("threshold")
    if t is None:
        return "-"
    return (">= " if row.get("higher_is_better", True) else "<= ") + f"{t:g}"


__all__ = ["FAIL_ON", "above_chance", "at_least", "at_most", "collect", "failing", "not_measured",
           "scorecard_block", "thresholds_of", "worst"]
