"""Presenting privacy figures: the labelled accountant table and the DP statement of a
trained model, in the form of TF Privacy's `compute_dp_sgd_privacy_statement` (data set
size, sampling, noise, steps and epochs, adjacency, delta, epsilon under Poisson sampling
and which accountant gave it, and that the guarantee covers every intermediate model)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bastion.privacy.accountants import (
    ADJACENCY,
    GUARANTEE,
    GUARANTEES,
    KINDS,
    LABELS,
    REFERENCE_FORMULAS,
    PrivacyLedger,
    check_delta,
)

TABLE_COLUMNS = ["accountant", "kind", "epsilon", "delta", "note"]
NOISE_SECURE = "secure"
NOISE_SEEDED = "seeded (reproducible, NOT private)"


def _num(v: Any, digits: int = 4) -> str:
    return "-" if v is None else f"{float(v):.{digits}f}"


def figure_rows(summary: Mapping[str, Any]) -> list[list[str]]:
    """Rows [accountant, kind, epsilon, delta, note] of a ledger summary, guarantees
    first; a reference formula outside its validity conditions shows '-' and the reason."""
    accs = summary.get("accountants") or {}
    head = (summary.get("headline") or {}).get("accountant")
    rows = []
    for name in GUARANTEES + REFERENCE_FORMULAS:
        f = accs.get(name)
        if f is None:
            continue
        kind = f.get("kind", KINDS.get(name, "?"))
        label = f"{name} *" if name == head else name
        rows.append([label, kind, _num(f.get("epsilon")), f"{float(f['delta']):.3g}",
                     f.get("note", "")])
    return rows


def headline_line(summary: Mapping[str, Any]) -> str:
    """'epsilon = 1.83 at delta = 1e-05 (tightest guarantee: pld, PLD (...))'."""
    h = summary.get("headline") or {}
    if h.get("epsilon") is None:
        return "epsilon: no guarantee available"
    return (f"epsilon = {h['epsilon']:.4f} at delta = {float(h['delta']):g} (tightest guarantee: "
            f"{h['accountant']}, {LABELS.get(h['accountant'], h['accountant'])}; * in the table)")


def ledger_from_record(rec: Mapping[str, Any]) -> PrivacyLedger | None:
    """The ledger of a checkpoint's privacy record (None when its schedule is unknown)."""
    sched = rec.get("schedule")
    if not sched and rec.get("sample_rate") and rec.get("steps"):
        lo, hi = rec.get("sigma_range") or [rec.get("sigma"), rec.get("sigma")]
        if lo != hi or rec.get("sigma") is None:
            return None
        sched = [[rec["sample_rate"], rec["sigma"], rec["steps"]]]
    if not sched:
        return None
    ledger = PrivacyLedger()
    for q, s, n in sched:
        ledger.step(float(q), float(s), int(n))
    return ledger


def record_summary(rec: Mapping[str, Any], delta: float | None = None) -> dict[str, Any] | None:
    """The labelled summary of a privacy record: the one it stores when `delta` is its own
    and it has one, else recomputed from its schedule (older checkpoints stored bare
    numbers without labels)."""
    own = rec.get("delta")
    if (delta is None or delta == own) and isinstance(rec.get("accountants"), dict):
        return {"delta": own, "headline": rec.get("headline"), "accountants": rec["accountants"]}
    ledger = ledger_from_record(rec)
    if ledger is None or not ledger.steps:
        return None
    return ledger.summary(check_delta(float(delta if delta is not None else own or 1e-5)))


def _epochs(rec: Mapping[str, Any]) -> float | None:
    q, steps = rec.get("sample_rate"), rec.get("steps")
    return None if not q or steps is None else float(q) * int(steps)


def dp_statement(rec: Mapping[str, Any], delta: float | None = None) -> list[str]:
    """The DP statement of a checkpoint's privacy record, one line per list item."""
    n = rec.get("dataset_size")
    q = rec.get("sample_rate")
    if n is None and q and rec.get("batch_size"):
        n = round(rec["batch_size"] / q)
    lo, hi = rec.get("sigma_range") or [rec.get("sigma"), rec.get("sigma")]
    noise = (f"noise multiplier {rec.get('sigma')}" if lo == hi or lo is None
             else f"noise multiplier from {hi:g} down to {lo:g}")
    epochs = _epochs(rec)
    lines = [
        f"DP-SGD ({rec.get('variant', 'baseline')}) over {n if n is not None else 'an unknown number of'} "
        f"examples, expected batch size {rec.get('batch_size')} (sampling rate q = "
        f"{_num(q, 6) if q is not None else '?'}), {noise}, clipping bound {rec.get('clip')}, "
        f"{rec.get('steps')} steps"
        + (f" ({epochs:.2f} epochs)." if epochs is not None else "."),
        "This guarantee covers the release of every intermediate model and checkpoint, "
        "not only the final model.",
    ]
    summ = record_summary(rec, delta)
    if summ is None:
        lines.append("Epsilon: the recorded schedule is incomplete; no guarantee can be stated.")
        return lines
    d = float(summ["delta"])
    lines.append(f"Example-level DP with {rec.get('adjacency', ADJACENCY)} adjacency at "
                 f"delta = {d:g}:")
    h = summ.get("headline") or {}
    accs = summ.get("accountants") or {}
    others = ", ".join(f"{k} {accs[k]['epsilon']:.3f}" for k in GUARANTEES
                       if k in accs and accs[k].get("epsilon") is not None and k != h.get("accountant"))
    if h.get("epsilon") is None:
        lines.append("    Epsilon assuming Poisson sampling: no guarantee available.")
    else:
        lines.append(f"    Epsilon assuming Poisson sampling: {h['epsilon']:.3f} (tightest "
                     f"guarantee: {h['accountant']}, {LABELS.get(h['accountant'], '')}"
                     + (f"; also {others}" if others else "") + ").")
    if rec.get("poisson") is False:
        lines.append("    Caution: training used shuffled fixed-size batches, not Poisson "
                     "sampling; the figure above assumes Poisson sampling.")
    if rec.get("variant") in ("l2-max", "dyn-s", "dyn-s-sigma"):
        lines.append("    Caution: this variant sets its sensitivity from the batch itself; the "
                     "figure is the dissertation's analysis, not a worst-case DP proof.")
    noise_mode = rec.get("noise")
    if noise_mode:
        lines.append(f"    Noise: {noise_mode}.")
    refs = [k for k in REFERENCE_FORMULAS if k in accs and accs[k].get("kind") != GUARANTEE]
    if refs:
        lines.append(f"    Reference formulas ({', '.join(refs)}) are not guarantees.")
    return lines
